import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { DeviceUnreachableError } from '../../src/core/driver.js';
import { silentLogger } from '../../src/core/logger.js';
import { ModbusDeviceDriver, ModbusEndpoint } from '../../src/drivers/modbus.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { profile } from '../helpers/fixtures.js';
import { SimHarness } from '../helpers/sim-harness.js';
import { TcpLink } from '../helpers/tcp-link.js';

/**
 * Link faults of a Modbus PLC seen by one endpoint, against sluice-sim over real sockets. The
 * endpoint reaches the PLC through a TcpLink, which counts the TCP connections it accepted:
 * the ground truth for how often the endpoint connected (the simulator counts requests, not
 * connections).
 */

let plant: Plant;
let link: TcpLink;

beforeAll(async () => {
  plant = await startModbusPlant({ v0: { profile: 'valve', base: 0, initialPosition: 30 } });
  const e = plant.plc('mb').endpoint;
  if (e.protocol !== 'modbus') throw new Error('expected a Modbus PLC');
  link = await TcpLink.open({ host: e.host, port: e.port });
});

afterAll(async () => {
  await link.close();
  await plant.stop();
});

function endpointAndDriver(options: {
  requestTimeoutMs?: number;
  backoffInitialMs?: number;
  backoffMaxMs?: number;
  /** Straight to the PLC, not through the link (which turns a reset into an orderly close). */
  direct?: boolean;
  /** The endpoint's clock (default the system's). */
  clock?: Clock;
}): { endpoint: ModbusEndpoint; driver: ModbusDeviceDriver } {
  const e = plant.plc('mb').endpoint;
  if (e.protocol !== 'modbus') throw new Error('expected a Modbus PLC');
  const { direct, clock, ...timing } = options;
  const endpoint = new ModbusEndpoint({
    name: 'mb',
    host: e.host,
    port: direct === true ? e.port : link.port,
    unitId: e.unitId,
    clock: clock ?? systemClock,
    logger: silentLogger,
    ...timing,
  });
  const driver = new ModbusDeviceDriver({
    id: 'v0',
    profile: profile('valve'),
    endpoint,
    base: 0,
    clock: systemClock,
  });
  return { endpoint, driver };
}

/** Reads until one succeeds (bounded); the position it read. */
async function readEventually(driver: ModbusDeviceDriver, withinMs: number): Promise<number> {
  const end = Date.now() + withinMs;
  for (;;) {
    try {
      const position = (await driver.read()).position;
      if (position !== null) return position;
    } catch (error) {
      if (Date.now() > end) throw error;
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('a PLC that takes the connection and drops it before answering', () => {
  // As a PLC past its number of Modbus connections does (or a gateway whose serial side is
  // gone): the TCP connect succeeds, and the connection closes before any answer.
  it('is reconnected to no faster than the backoff, not once per request', async () => {
    const { endpoint, driver } = endpointAndDriver({ backoffInitialMs: 100, backoffMaxMs: 400 });
    try {
      expect(await readEventually(driver, 2_000)).toBe(30);
      const before = link.accepted;
      plant.plc('mb').setFault({ kind: 'reset', when: 'before', on: 'both' });
      // The device is read every 20 ms, as a readback loop does (1.5 s: 75 reads).
      let reads = 0;
      const end = Date.now() + 1_500;
      while (Date.now() < end) {
        reads++;
        await expect(driver.read()).rejects.toThrow(DeviceUnreachableError);
        await new Promise((r) => setTimeout(r, 20));
      }
      const connections = link.accepted - before;
      // Backoff from 100 ms doubling to 400 ms, each delay in the upper half of its step:
      // attempts at most 50, 100, 200, 200… ms apart after the first: at most 9 in 1.5 s.
      expect(reads).toBeGreaterThan(40);
      expect(connections).toBeGreaterThanOrEqual(2);
      expect(connections).toBeLessThanOrEqual(9);
      plant.plc('mb').clearFault('reset');
      // Within the longest step (400 ms) and a read, the endpoint is back.
      expect(await readEventually(driver, 1_000)).toBe(30);
    } finally {
      plant.plc('mb').clearFault('reset');
      await endpoint.close();
    }
  });
});

describe('the reconnect backoff and the wall clock', () => {
  it('a gateway clock stepped back an hour after a failed attempt does not hold the next one', async () => {
    // The backoff is a duration (SPEC §6): on the wall clock, the step made it an hour long.
    const stepped = { ...systemClock, offset: 0, now: () => Date.now() + stepped.offset };
    const { endpoint, driver } = endpointAndDriver({
      backoffInitialMs: 100,
      backoffMaxMs: 400,
      clock: stepped,
    });
    try {
      expect(await readEventually(driver, 2_000)).toBe(30);
      const before = link.accepted;
      plant.plc('mb').setFault({ kind: 'reset', when: 'before', on: 'both' });
      // Until an attempt has failed on a new connection: the backoff holds the next one.
      const end = Date.now() + 2_000;
      while (link.accepted - before < 2 && Date.now() < end) {
        await driver.read().catch(() => undefined);
        await new Promise((r) => setTimeout(r, 10));
      }
      expect(link.accepted - before).toBeGreaterThanOrEqual(2);
      stepped.offset = -3_600_000;
      plant.plc('mb').clearFault('reset');
      // Within the longest step (400 ms) and a read, the endpoint is back.
      expect(await readEventually(driver, 1_000)).toBe(30);
    } finally {
      plant.plc('mb').clearFault('reset');
      await endpoint.close();
    }
  });
});

describe("a device's last error", () => {
  it('names a lost connection once, as the request was told', async () => {
    const { endpoint, driver } = endpointAndDriver({});
    try {
      expect(await readEventually(driver, 2_000)).toBe(30);
      plant.device('v0').setFault({ kind: 'reset', when: 'before', on: 'read', count: 1 });
      const error = await driver.read().then(
        () => null,
        (e: unknown) => e,
      );
      expect(plant.device('v0').faults()).toEqual([]);
      expect(error).toBeInstanceOf(DeviceUnreachableError);
      const message = (error as Error).message;
      expect(message).toMatch(/^mb: read 0\+\d+: connection closed$/);
      // What GET /v1/devices and sluicectl devices show.
      expect(endpoint.health.snapshot().lastError).toBe(message);
    } finally {
      await endpoint.close();
    }
  });
});

describe('a PLC that resets the connection under a request (power cycle)', () => {
  it('fails the request at once as a lost connection, not after the request timeout', async () => {
    const { endpoint, driver } = endpointAndDriver({ requestTimeoutMs: 3_000, direct: true });
    try {
      expect(await readEventually(driver, 2_000)).toBe(30);
      // The answer is held 2 s: the read is in flight when the power goes (the PLC's TCP stack
      // resets its connections, as the simulator's power cycle does).
      plant.plc('mb').setFault({ kind: 'latency', ms: 2_000, on: 'read' });
      const cycles = plant.plc('mb').powerCycles;
      const started = Date.now();
      const failed = driver.read().then(
        () => null,
        (e: unknown) => e,
      );
      await new Promise((r) => setTimeout(r, 50));
      plant.plc('mb').powerCycle({ offMs: 100 });
      const error = await failed;
      const tookMs = Date.now() - started;
      plant.plc('mb').clearFault('latency');
      expect(plant.plc('mb').powerCycles).toBe(cycles + 1);
      expect(error).toBeInstanceOf(DeviceUnreachableError);
      expect((error as Error).message).toMatch(/^mb: read 0\+\d+: connection lost: .*ECONNRESET/);
      expect(tookMs).toBeLessThan(1_000);
      expect(endpoint.health.snapshot().connected).toBe(false);
      expect(await readEventually(driver, 3_000)).toBe(30);
    } finally {
      plant.plc('mb').clearFault('latency');
      await endpoint.close();
    }
  });
});

describe('an exception answered to a write that says nothing of whether it was applied', () => {
  // The pipeline on a real journal with the real drivers (SimHarness). The simulator applies
  // the write and then answers the exception (`when: 'after'`): what a Modbus TCP/RTU gateway
  // does when its serial target took the write but its answer was lost or late (0x0B), and
  // what 0x05 (acknowledge: accepted, still being processed) says outright. Warm devices (their
  // echo is not the power-up one): a write not applied can then be proven so by readback.
  let h: SimHarness;
  beforeAll(async () => {
    h = await SimHarness.start({ travelMs: 0, warm: true });
  });
  afterAll(async () => {
    await h.close();
  });

  it.each([
    ['0x0B (gateway target failed to respond)', 0x0b, 'v1', 'open'],
    ['0x05 (acknowledge)', 0x05, 'v2', 'open'],
    // v1 again, opened above: closed this time.
    ['0x04 (server device failure)', 0x04, 'v1', 'close'],
    // Said of a write, these do not say it was not performed either: a parity error while the
    // PLC performed it, and a code the protocol does not define (a vendor's). Each used to end
    // DEVICE_FAULT "the controller refused the write" while the valve acted on it.
    ['0x08 (memory parity error)', 0x08, 'v2', 'close'],
    ['0x0C (not defined by the protocol)', 0x0c, 'v1', 'open'],
  ] as const)(
    '%s: confirmed by readback, one write, never DEVICE_FAULT',
    async (_, code, id, action) => {
      const device = h.device(id);
      const writes = device.counters.writesReceived;
      device.setFault({ kind: 'exception', code, on: 'write', when: 'after', count: 1 });
      const key = `exc-after-${code}-${id}`;
      expect(h.submit(key, { device: id, action }).kind).toBe('new');
      const record = await h.settled(key);
      expect(device.faults()).toEqual([]);
      // Ground truth: the controller took the write, once.
      expect(device.counters.writesReceived - writes).toBe(1);
      expect(h.writesWithSeq(id, record.seq ?? -1)).toBe(1);
      expect({ state: record.state, code: record.code }).toEqual({
        state: 'confirmed',
        code: 'OK',
      });
    },
  );

  it('0x0B with nothing applied (the target never got it): one write reaches the controller', async () => {
    const device = h.device('a1');
    device.setFault({ kind: 'exception', code: 0x0b, on: 'write', when: 'before', count: 1 });
    expect(h.submit('exc-before-a1', { device: 'a1', action: 'move', position: 40 }).kind).toBe(
      'new',
    );
    const record = await h.settled('exc-before-a1');
    expect(device.faults()).toEqual([]);
    // Proven not applied by readback, then sent once more (src/core/redispatch.ts).
    expect(record.attempts).toBe(2);
    expect(device.counters.writesReceived).toBe(1);
    expect(h.writesWithSeq('a1', record.seq ?? -1)).toBe(1);
    expect({ state: record.state, code: record.code }).toEqual({ state: 'confirmed', code: 'OK' });
  });
});
