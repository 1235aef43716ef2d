import fs, { rmSync, statSync, writeFileSync } from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { dirname } from 'node:path';
import { generate } from 'selfsigned';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { WriteNotSentError } from '../../src/core/driver.js';
import type { Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { startSecurePlant, trustedDriver, until, type Cleanups } from './opcua-trust.js';

/**
 * The gateway looks at its OPC UA trust folders before every request (docs/configuration.md,
 * OPC UA certificates), and lists them again only when one of them, or a file in them, changed:
 * listed at every look, the four folders cost every read and write of every session four
 * directory reads, some twenty per command. A certificate an operator removes is still seen by
 * the next request. Real parts: sluice-sim's OPC UA PLC with SignAndEncrypt, the real driver and
 * store; the simulator's write counter says what reached the server. The listings are counted
 * by wrapping the process's own `fs.readdirSync`, which every call still reaches: the gateway's
 * reads of its own folders are nothing the simulator can see.
 */

let plant: Plant;
let simPki: string;
const cleanups: Cleanups = [];
const realReaddir = fs.readdirSync;
/** The folders listed (readdirSync) since the test began. */
const listed: string[] = [];

beforeAll(async () => {
  fs.readdirSync = ((path: fs.PathLike, ...rest: unknown[]) => {
    listed.push(String(path));
    return (realReaddir as (...a: unknown[]) => unknown)(path, ...rest);
  }) as typeof fs.readdirSync;
  syncBuiltinESMExports();
  const sim = tempDir('sluice-sim-pki-');
  cleanups.push(sim.cleanup);
  simPki = sim.dir;
  plant = await startSecurePlant(simPki);
}, 30_000);

afterAll(async () => {
  fs.readdirSync = realReaddir;
  syncBuiltinESMExports();
  for (const c of cleanups.reverse()) await c();
  await plant.stop();
});

/**
 * The driver with a session up, once its looks stand on the folders' times: the reads that
 * list no trust folder. The certificate was put in trusted/certs/ a moment ago, within the
 * file system's time granularity: the folders are listed at every look until that change is
 * older than it (TRUST_TIMES_GRANULARITY_MS, 2 s).
 */
async function settledDriver(): Promise<
  Awaited<ReturnType<typeof trustedDriver>> & { listings: () => number }
> {
  const trusted = await trustedDriver(plant, simPki, cleanups);
  // {pki}/client: trusted/certs/plc-ua.pem is the operator's certificate.
  const client = dirname(dirname(dirname(trusted.trustedFile)));
  const listings = (): number => listed.filter((p) => p.startsWith(client)).length;
  await until(
    'a read that lists no trust folder',
    async () => {
      const before = listings();
      await trusted.driver.read();
      return listings() === before;
    },
    20_000,
  );
  return { ...trusted, listings };
}

it('reads on a session whose trust folders stay as they were list no folder; a certificate removed is seen by the next write, not sent', async () => {
  const { driver, trustedFile, listings } = await settledDriver();
  const before = listings();
  for (let i = 0; i < 20; i++) await driver.read();
  expect(listings()).toBe(before);

  // Revoked: removed from trusted/certs/, seen by the next write's own look, which is not sent.
  const device = plant.device('ua-valve');
  const written = device.counters.writesReceived;
  rmSync(trustedFile);
  const error = await driver.write({ action: 'stop', position: null, seq: 4000 + written }).then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(WriteNotSentError);
  expect(String(error)).toMatch(/no longer trusted/);
  expect(device.counters.writesReceived).toBe(written);
  expect(listings()).toBeGreaterThan(before);
}, 60_000);

it('a trusted certificate written over in place with another is seen by the next write, not sent', async () => {
  const { driver, trustedFile, listings } = await settledDriver();
  const before = listings();
  const other = await generate([{ name: 'commonName', value: 'another-plc' }], {
    keyType: 'ec',
    curve: 'P-256',
  });
  // The same file, the same inode: the folder's own times do not change, the file's do.
  const inode = statSync(trustedFile).ino;
  writeFileSync(trustedFile, other.cert);
  expect(statSync(trustedFile).ino).toBe(inode);
  const device = plant.device('ua-valve');
  const written = device.counters.writesReceived;
  const error = await driver.write({ action: 'stop', position: null, seq: 5000 + written }).then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(WriteNotSentError);
  expect(String(error)).toMatch(/no longer trusted/);
  expect(device.counters.writesReceived).toBe(written);
  expect(listings()).toBeGreaterThan(before);
}, 60_000);
