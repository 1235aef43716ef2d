import fs, { copyFileSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { WriteNotSentError } from '../../src/core/driver.js';
import type { Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  readWithin,
  sessionCounter,
  startSecurePlant,
  trustedDriver,
  writeLands,
  type Cleanups,
  until,
} from './opcua-trust.js';

/**
 * The check of a server certificate reads the PKI folders and verifies the chain; on a gateway
 * whose disk stops answering (a failing SD card, a hung network mount) it does not finish. A
 * request waiting for it must not wait for ever: the check is bounded, and a server whose
 * certificate could not be checked gets nothing (fail closed) — its session closed, its devices
 * not connected with the reason — until a check completes again.
 *
 * A disk that stops answering is not something the simulator or the store can be asked for:
 * `fs.promises.readdir` of the gateway's PKI folder is held in this process (the store reads its
 * folders with it when they changed) until the test lets it go. The PLC, its certificate, the
 * store and the driver are real; what the server saw is read from the server itself.
 */

const realReaddir = fs.promises.readdir;
let plant: Plant;
let simPki: string;
let counter: Awaited<ReturnType<typeof sessionCounter>>;
const serverSessions = (): ReturnType<typeof counter.sessions> => counter.sessions();
const cleanups: Cleanups = [];
/** Folders whose listing hangs, and the listings held meanwhile. */
let hangUnder: string | null = null;
const held: (() => void)[] = [];

beforeAll(async () => {
  fs.promises.readdir = ((...args: Parameters<typeof realReaddir>) => {
    if (hangUnder !== null && String(args[0]).startsWith(hangUnder)) {
      return new Promise((resolve, reject) => {
        held.push(() => {
          realReaddir(...args).then(resolve, reject);
        });
      });
    }
    return realReaddir(...args);
  }) as typeof realReaddir;
  const sim = tempDir('sluice-sim-pki-');
  cleanups.push(sim.cleanup);
  simPki = sim.dir;
  plant = await startSecurePlant(simPki);
  counter = await sessionCounter(plant);
}, 30_000);

afterAll(async () => {
  hangUnder = null;
  for (const release of held.splice(0)) release();
  await counter.close();
  for (const c of cleanups.reverse()) await c();
  await plant.stop();
  fs.promises.readdir = realReaddir;
});

it('a certificate check that hangs is bounded: the write is not sent, the session closed with the reason, and a check that completes again reconnects', async () => {
  const before = await serverSessions();
  const { driver, pkiDir, trustedFile } = await trustedDriver(plant, simPki, cleanups);
  expect(await writeLands(plant, driver)).toBe(true);
  const device = plant.device('ua-valve');
  const written = device.counters.writesReceived;

  // The disk stops answering; an operator adds a certificate to trusted/certs/, so the next
  // request has the PLC's certificate checked again, which reads the folders.
  hangUnder = pkiDir;
  copyFileSync(trustedFile, `${trustedFile}.copy.pem`);
  const error = await driver.write({ action: 'stop', position: null, seq: 4000 + written }).then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(WriteNotSentError);
  expect(String(error)).toMatch(/could not be checked: the check did not finish within \d+ ms/);
  expect(held.length).toBeGreaterThan(0);
  await until('the server to see the session closed', async () => {
    return (await serverSessions()).current === before.current;
  });
  expect(device.counters.writesReceived).toBe(written);
  const health = driver.health();
  expect(health.connected).toBe(false);
  expect(health.lastError).toMatch(/could not be checked: the check did not finish within/);

  // While the disk hangs, a connection attempt is refused for the same reason, nothing sent.
  const errors = driver.health().errorCount;
  await until('a refused connection attempt', async () => {
    await driver.read().catch(() => undefined);
    const h = driver.health();
    return h.errorCount > errors && /did not finish within/.test(h.lastError ?? '');
  });
  expect(device.counters.writesReceived).toBe(written);
  expect((await serverSessions()).current).toBe(before.current);

  // The disk answers again: the held listings complete, and the next attempt connects.
  hangUnder = null;
  for (const release of held.splice(0)) release();
  expect(await readWithin(driver, 30_000)).not.toBeNull();
  expect(await writeLands(plant, driver)).toBe(true);
}, 90_000);
