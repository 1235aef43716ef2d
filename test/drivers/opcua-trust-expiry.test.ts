import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { WriteNotSentError, type DeviceDriver } from '../../src/core/driver.js';
import type { Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  endedUnknownNotResent,
  writeInController,
  plcCertificate,
  sessionCounter,
  startSecurePlant,
  trustedDriver,
  writeLands,
  type Cleanups,
  until,
} from './opcua-trust.js';

/**
 * A PLC's certificate that expires while the gateway has a session with it: the gateway must
 * stop talking to that server then, as it would refuse to connect to it, not at its next
 * connection. Real parts: sluice-sim's OPC UA PLC with SignAndEncrypt (one for the file), the
 * real driver and store; the gateway's clock is the driver's own (a wall clock that an operator
 * or NTP may step), set relative to the notAfter of the simulator's own certificate. What the
 * server saw is read from the server itself (its session counts, by a client of its own over
 * security None) and from the simulator's write counter, never from the driver's word.
 */

let plant: Plant;
let simPki: string;
/** The simulator's certificate's notAfter (epoch ms). */
let notAfter: number;
let counter: Awaited<ReturnType<typeof sessionCounter>>;
const serverSessions = (): ReturnType<typeof counter.sessions> => counter.sessions();
const cleanups: Cleanups = [];

beforeAll(async () => {
  const sim = tempDir('sluice-sim-pki-');
  cleanups.push(sim.cleanup);
  simPki = sim.dir;
  plant = await startSecurePlant(simPki);
  const cert = new X509Certificate(readFileSync(plcCertificate(simPki)));
  notAfter = Date.parse(cert.validTo);
  counter = await sessionCounter(plant);
}, 30_000);

afterAll(async () => {
  await counter.close();
  for (const c of cleanups.reverse()) await c();
  await plant.stop();
});

/** The system clock, its wall time put `offset` ms away (a clock an operator or NTP steps). */
function steppedClock(offset: number): Clock & { offset: number } {
  const clock = { ...systemClock, offset, now: () => Date.now() + clock.offset };
  return clock;
}

/**
 * The driver to the PLC on `clock`, SignAndEncrypt, whose PKI trusts the PLC's certificate (an
 * operator's decision), with a session up and a write landed.
 */
async function trustedDriverOn(clock: Clock, requestTimeoutMs?: number): Promise<DeviceDriver> {
  const { driver } = await trustedDriver(plant, simPki, cleanups, {
    clock,
    ...(requestTimeoutMs === undefined ? {} : { requestTimeoutMs }),
  });
  expect(await writeLands(plant, driver)).toBe(true);
  return driver;
}

/** Reads asked for (as the daemon's readbacks do) until the driver says `pattern`. */
async function refusal(driver: DeviceDriver, pattern: RegExp): Promise<string> {
  const errorsBefore = driver.health().errorCount;
  await until(`a refusal matching ${String(pattern)}`, async () => {
    await driver.read().catch(() => undefined);
    return (
      driver.health().errorCount > errorsBefore && pattern.test(driver.health().lastError ?? '')
    );
  });
  return driver.health().lastError ?? '';
}

const iso = (ms: number): string => new Date(ms).toISOString();

it('a certificate that expires during an idle session closes it at its notAfter, and a reconnection is refused', async () => {
  const before = await serverSessions();
  // The gateway's clock reads 6 s before the PLC certificate's notAfter: valid at connection.
  const driver = await trustedDriverOn(steppedClock(notAfter - 6000 - Date.now()));
  expect((await serverSessions()).current).toBe(before.current + 1);
  const opened = (await serverSessions()).cumulated;

  // No request of the driver's is asked for: the gateway must cut an idle session too. The
  // event: the server itself sees the session closed, once the certificate has expired.
  await until('the server to see the session closed', async () => {
    return (await serverSessions()).current === before.current;
  });
  const health = driver.health();
  expect(health.connected).toBe(false);
  expect(health.lastError).toMatch(
    /SHA-1 [0-9a-f]{40}\) expired on .*; the session with it was closed/,
  );
  expect(health.lastError).toContain(`expired on ${iso(notAfter)}`);

  // Writes do not reach the PLC (its own counter); a reconnection is refused with the dates.
  expect(await writeLands(plant, driver)).toBe(false);
  expect(await refusal(driver, /is refused: it expired on/)).toContain(iso(notAfter));
  expect(await writeLands(plant, driver)).toBe(false);
  const after = await serverSessions();
  expect(after.current).toBe(before.current);
  expect(after.cumulated).toBe(opened);
}, 60_000);

it('a clock stepped past notAfter during a session: the next write is not sent, and the session is closed', async () => {
  const before = await serverSessions();
  const clock = steppedClock(0);
  const driver = await trustedDriverOn(clock);
  const opened = (await serverSessions()).cumulated;
  const device = plant.device('ua-valve');
  const written = device.counters.writesReceived;

  // NTP or an operator steps the gateway's clock past the certificate's notAfter; the write asked
  // for in the same turn finds the certificate expired before anything is sent.
  clock.offset = notAfter + 60_000 - Date.now();
  const error = await driver.write({ action: 'stop', position: null, seq: 3000 + written }).then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(WriteNotSentError);
  expect(String(error)).toContain(`expired on ${iso(notAfter)}`);
  await until('the server to see the session closed', async () => {
    return (await serverSessions()).current === before.current;
  });
  expect(device.counters.writesReceived).toBe(written);
  expect(driver.health().connected).toBe(false);

  expect(await refusal(driver, /is refused: it expired on/)).toContain(iso(notAfter));
  expect(device.counters.writesReceived).toBe(written);
  expect((await serverSessions()).cumulated).toBe(opened);
}, 60_000);

it('a write in flight when a stepped clock is noticed ends with its outcome unknown, never "not sent", and is not sent again', async () => {
  const before = await serverSessions();
  const clock = steppedClock(0);
  const driver = await trustedDriverOn(clock, 10_000);
  // The trigger is in the controller while the driver waits for its answer.
  const inFlight = await writeInController(plant, driver, cleanups);
  // The clock steps past notAfter; the next request (a readback, as the daemon asks for them)
  // notices it and the session is cut under the write.
  clock.offset = notAfter + 60_000 - Date.now();
  await expect(driver.read()).rejects.toThrow(/expired on/);
  await until('the server to see the session closed', async () => {
    return (await serverSessions()).current === before.current;
  });
  await endedUnknownNotResent(plant, driver, inFlight);
}, 60_000);
