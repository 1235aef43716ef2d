import { ClientSecureChannelLayer } from 'node-opcua';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { DeviceUnreachableError, type DeviceDriver } from '../../src/core/driver.js';
import { silentLogger } from '../../src/core/logger.js';
import { buildDrivers, type Drivers } from '../../src/drivers/inventory.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * node-opcua ends every request at its own transaction timeout (ClientSecureChannelLayer's
 * defaultTransactionTimeout, 15 s, or the request header's timeoutHint, never under its
 * minTransactionTimeout, 5 s), whatever the PLC's requestTimeoutMs. A PLC whose requestTimeoutMs
 * is longer (the configuration allows it) had its requests ended by the library first: a write's
 * outcome became unknown at the library's time, and the redispatch guard, which the
 * configuration check bounds against requestTimeoutMs, was counted from a moment the contract
 * does not describe; an answer that would have come within requestTimeoutMs was given up.
 * requestTimeoutMs decides: the library's timeout is set past it.
 *
 * The library's default is lowered here (1 s, its floor 0.1 s) so that a requestTimeoutMs above
 * it (1.5 s) keeps the test to seconds; the product's defaults are not touched. Real parts:
 * sluice-sim's OPC UA PLC over a real socket, its link holding the requests (latency `before`,
 * `stall`), the real driver. Ground truth: the simulator's write log and write counter.
 */

const REQUEST_TIMEOUT_MS = 1500;
const LIBRARY_DEFAULT_MS = 1000;

const saved = {
  default: ClientSecureChannelLayer.defaultTransactionTimeout,
  min: ClientSecureChannelLayer.minTransactionTimeout,
};
let plant: Plant;
let drivers: Drivers;
let driver: DeviceDriver;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  ClientSecureChannelLayer.defaultTransactionTimeout = LIBRARY_DEFAULT_MS;
  ClientSecureChannelLayer.minTransactionTimeout = 100;
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        ua: {
          protocol: 'opcua',
          host: '127.0.0.1',
          port: 0,
          scanMs: 10,
          devices: { 'ua-valve': { profile: 'valve', initialPosition: 0 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  cleanups.push(() => plant.stop());
  const inventory = inventoryFor(plant);
  const plc = inventory.plcs.ua!;
  inventory.plcs.ua = { ...plc, requestTimeoutMs: REQUEST_TIMEOUT_MS };
  const pki = tempDir('sluice-pki-');
  cleanups.push(pki.cleanup);
  drivers = await buildDrivers({
    inventory,
    profiles: PROFILES,
    pkiDir: pki.dir,
    acceptUnknownCertificates: true,
    clock: systemClock,
    logger: silentLogger,
  });
  cleanups.push(() => drivers.close());
  drivers.start();
  driver = drivers.bindings[0]!.driver;
  const end = Date.now() + 20_000;
  for (;;) {
    const ok = await driver.read().then(
      () => true,
      (error: unknown) => {
        if (Date.now() > end) throw error;
        return false;
      },
    );
    if (ok) break;
    await new Promise((r) => setTimeout(r, 50));
  }
}, 30_000);

afterEach(() => {
  const device = plant.device('ua-valve');
  device.clearFault('latency');
  device.clearFault('stall');
});

afterAll(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  ClientSecureChannelLayer.defaultTransactionTimeout = saved.default;
  ClientSecureChannelLayer.minTransactionTimeout = saved.min;
});

it('a write answered after the library default but within requestTimeoutMs is taken', async () => {
  const device = plant.device('ua-valve');
  // Each of the write's two requests (code and setpoint, then the trigger) held 1.2 s on the
  // link: answered past the library's default, within the PLC's request timeout.
  device.setFault({ kind: 'latency', ms: 1200, when: 'before', on: 'write' });
  const from = performance.now();
  await driver.write({ action: 'open', position: null, seq: 31 });
  expect(performance.now() - from).toBeGreaterThanOrEqual(2400);
  // A read held as long is answered too, with the controller's echo once it took the write.
  device.setFault({ kind: 'latency', ms: 1200, when: 'before', on: 'read' });
  for (;;) {
    const r = await driver.read();
    if (r.seq === 31) break;
  }
  expect(device.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[31, 'accepted']]);
}, 15_000);

it("a write held on the link fails at requestTimeoutMs, Sluice's timeout, not the library's", async () => {
  const device = plant.device('ua-valve');
  const received = device.counters.writesReceived;
  device.setFault({ kind: 'stall', on: 'write', count: 1 });
  const from = performance.now();
  const error = await driver
    .write({ action: 'close', position: null, seq: 32 })
    .catch((e: unknown) => e);
  const took = performance.now() - from;
  expect(error).toBeInstanceOf(DeviceUnreachableError);
  expect(String(error)).toMatch(`write timed out after ${REQUEST_TIMEOUT_MS} ms`);
  expect(took).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS);
  expect(took).toBeLessThan(REQUEST_TIMEOUT_MS + 1000);
  // Nothing reached the controller while the driver waited: the code and setpoint were held,
  // the trigger never sent.
  expect(device.counters.writesReceived).toBe(received);
  expect(device.writeLog.map((w) => w.seq)).toEqual([31]);
  // A read held so fails the same way.
  device.setFault({ kind: 'stall', on: 'read', count: 1 });
  const readFrom = performance.now();
  const readError = await driver.read().catch((e: unknown) => e);
  const readTook = performance.now() - readFrom;
  expect(readError).toBeInstanceOf(DeviceUnreachableError);
  expect(String(readError)).toMatch(`read timed out after ${REQUEST_TIMEOUT_MS} ms`);
  expect(readTook).toBeGreaterThanOrEqual(REQUEST_TIMEOUT_MS);
  expect(readTook).toBeLessThan(REQUEST_TIMEOUT_MS + 1000);
}, 15_000);
