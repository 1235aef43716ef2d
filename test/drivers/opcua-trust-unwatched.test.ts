import fs, { copyFileSync, existsSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { Plant } from '../../simulators/plant.js';
import {
  linkedDriver,
  readWithin,
  secureDriver,
  startSecurePlant,
  untrusted,
  writeLands,
} from './opcua-trust.js';

/**
 * An operator trusts a PLC's certificate by moving it from the PKI's rejected/ folder to
 * trusted/certs/. node-opcua-pki learned of the move only from file-system watchers; on a
 * gateway whose inotify instances are used up (measured with
 * `sysctl fs.inotify.max_user_instances=0`: every attempt refused until sluiced restarted) the
 * move was never seen. That limit is the machine's, shared by every process and test, so this
 * test produces the same fault in its own process only: `fs.watch` fails as the kernel makes it
 * fail (ENOSPC, "System limit for number of file watchers reached") — a fault neither the
 * simulator nor the store can be asked for. The PLC, its certificate and the store are real.
 */

const realWatch = fs.watch;
let plant: Plant;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  fs.watch = (): never => {
    throw Object.assign(new Error('ENOSPC: System limit for number of file watchers reached'), {
      code: 'ENOSPC',
      errno: -28,
      syscall: 'watch',
    });
  };
  plant = await startSecurePlant();
}, 30_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await plant.stop();
  fs.watch = realWatch;
});

it('a certificate an operator moves to trusted/ is trusted where no file watcher can run', async () => {
  const e = plant.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  const { driver, pkiDir } = await secureDriver(e.endpointUrl, e.namespaceUri, cleanups);

  // Refused, and put in rejected/.
  const rejected = join(pkiDir, 'client', 'rejected');
  const end = Date.now() + 15_000;
  while (!/is not trusted: it was put in/.test(driver.health().lastError ?? '')) {
    if (Date.now() > end) throw new Error(`no refusal: ${driver.health().lastError}`);
    await driver.read().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
  }
  const certs = existsSync(rejected) ? readdirSync(rejected) : [];
  expect(certs.length).toBeGreaterThan(0);

  // The operator trusts it: the next attempt, at the backoff's pace, connects.
  const trusted = join(pkiDir, 'client', 'trusted', 'certs');
  for (const cert of certs) renameSync(join(rejected, cert), join(trusted, cert));
  expect(await readWithin(driver, 20_000)).toBe('CLOSED');
}, 45_000);

it('a certificate an operator copies to trusted/ (its refused copy left in rejected/) is trusted where no file watcher can run', async () => {
  const { driver, pkiDir } = await linkedDriver(plant, cleanups);
  await untrusted(driver);
  const rejected = join(pkiDir, 'client', 'rejected');
  const trusted = join(pkiDir, 'client', 'trusted', 'certs');
  const [cert] = readdirSync(rejected);
  copyFileSync(join(rejected, cert!), join(trusted, 'plc-ua.pem'));
  expect(await readWithin(driver, 20_000)).not.toBeNull();
  expect(await writeLands(plant, driver)).toBe(true);
  expect(readdirSync(trusted)).toEqual(['plc-ua.pem']);
  expect(readdirSync(rejected)).toEqual([]);
}, 45_000);

it('a certificate an operator removes from trusted/ is refused at the next connection where no file watcher can run', async () => {
  const { driver, link, pkiDir } = await linkedDriver(plant, cleanups);
  await untrusted(driver);
  const rejected = join(pkiDir, 'client', 'rejected');
  const trusted = join(pkiDir, 'client', 'trusted', 'certs');
  const [cert] = readdirSync(rejected);
  renameSync(join(rejected, cert!), join(trusted, cert!));
  expect(await readWithin(driver, 20_000)).not.toBeNull();
  // The operator revokes it; the connection drops and is made again.
  rmSync(join(trusted, cert!));
  const from = link.accepted;
  const errors = driver.health().errorCount;
  link.down();
  link.up();
  await untrusted(driver, errors);
  expect(link.accepted).toBeGreaterThan(from);
  expect(await writeLands(plant, driver)).toBe(false);
  expect(readdirSync(rejected)).toHaveLength(1);
}, 45_000);
