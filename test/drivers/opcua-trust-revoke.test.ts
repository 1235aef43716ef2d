import { readdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { WriteNotSentError } from '../../src/core/driver.js';
import type { Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  endedUnknownNotResent,
  failFileWatchers,
  writeInController,
  sessionCounter,
  startSecurePlant,
  trustedDriver,
  untrusted,
  writeLands,
  type Cleanups,
  until,
} from './opcua-trust.js';

/**
 * An operator revokes a PLC's certificate by removing it from trusted/certs/. The gateway must
 * stop talking to that server at once — a compromised or replaced PLC would otherwise keep
 * receiving valve writes on the session opened while it was trusted — not at the next
 * connection. Real parts: sluice-sim's OPC UA PLC with SignAndEncrypt, the real driver and
 * store. What the server saw is read from the server itself (its session counts, by a client
 * of its own over security None) and from the simulator's write counter, never from the
 * driver's word.
 *
 * The revocation must be seen where node-opcua-pki's folder watchers cannot run (the machine's
 * inotify instances used up): `fs.watch` fails in this process as the kernel makes it fail
 * (ENOSPC) — a fault neither the simulator nor the store can be asked for.
 */

let restoreWatch: () => void = () => undefined;
let plant: Plant;
let simPki: string;
let counter: Awaited<ReturnType<typeof sessionCounter>>;
const serverSessions = (): ReturnType<typeof counter.sessions> => counter.sessions();
const cleanups: Cleanups = [];

beforeAll(async () => {
  restoreWatch = failFileWatchers();
  const sim = tempDir('sluice-sim-pki-');
  cleanups.push(sim.cleanup);
  simPki = sim.dir;
  plant = await startSecurePlant(simPki);
  counter = await sessionCounter(plant);
}, 30_000);

afterAll(async () => {
  await counter.close();
  for (const c of cleanups.reverse()) await c();
  await plant.stop();
  restoreWatch();
});

it('a certificate removed from trusted/ closes the session at once: nothing more reaches the server, and a reconnection is refused', async () => {
  const before = await serverSessions();
  const { driver, pkiDir, trustedFile } = await trustedDriver(plant, simPki, cleanups);
  expect(await writeLands(plant, driver)).toBe(true);
  // The driver's session and the observer's.
  expect((await serverSessions()).current).toBe(before.current + 1);
  const opened = (await serverSessions()).cumulated;

  // The operator revokes it. No request of the driver's is asked for: the gateway must cut an
  // idle session too. The event: the server itself sees the session closed.
  rmSync(trustedFile);
  await until('the server to see the session closed', async () => {
    return (await serverSessions()).current === before.current;
  });
  const health = driver.health();
  expect(health.connected).toBe(false);
  expect(health.lastError).toContain(`'${trustedFile}' removed from trusted/certs/`);
  expect(health.lastError).toMatch(
    /SHA-1 [0-9a-f]{40}\) is no longer trusted: .* the session with it was closed/,
  );

  // Writes do not reach the PLC (its own counter); a reconnection, asked for by reads and
  // writes at the backoff's pace, is refused, and puts the certificate in rejected/ again.
  expect(await writeLands(plant, driver)).toBe(false);
  const refusal = await untrusted(driver, driver.health().errorCount);
  expect(refusal).toMatch(/is not trusted: it was put in/);
  expect(await writeLands(plant, driver)).toBe(false);
  expect(readdirSync(join(pkiDir, 'client', 'rejected'))).toHaveLength(1);
  // No session was opened on the server after the revocation.
  const after = await serverSessions();
  expect(after.current).toBe(before.current);
  expect(after.cumulated).toBe(opened);
}, 60_000);

it('a write in flight when the session is cut ends with its outcome unknown, never "not sent", and is not sent again', async () => {
  const before = await serverSessions();
  const { driver, trustedFile } = await trustedDriver(plant, simPki, cleanups, {
    requestTimeoutMs: 10_000,
  });
  // The trigger is in the controller while the driver waits for its answer.
  const inFlight = await writeInController(plant, driver, cleanups);
  rmSync(trustedFile);
  await until('the server to see the session closed', async () => {
    return (await serverSessions()).current === before.current;
  });
  await endedUnknownNotResent(plant, driver, inFlight);
}, 60_000);

it('a write asked for right after the removal, before any look at the folder, does not reach the server', async () => {
  const before = await serverSessions();
  const { driver, trustedFile } = await trustedDriver(plant, simPki, cleanups);
  expect(await writeLands(plant, driver)).toBe(true);
  rmSync(trustedFile);
  // At once, in the same turn: the write's own look at trusted/certs/ finds the change, the
  // certificate is checked again, and the session is closed before anything is sent.
  const device = plant.device('ua-valve');
  const written = device.counters.writesReceived;
  const error = await driver.write({ action: 'stop', position: null, seq: 3000 + written }).then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(WriteNotSentError);
  expect(String(error)).toMatch(/no longer trusted/);
  await until('the server to see the session closed', async () => {
    return (await serverSessions()).current === before.current;
  });
  expect(device.counters.writesReceived).toBe(written);
}, 60_000);
