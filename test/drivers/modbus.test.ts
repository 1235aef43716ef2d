import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { DeviceUnreachableError } from '../../src/core/driver.js';
import { silentLogger } from '../../src/core/logger.js';
import { Backoff } from '../../src/backoff.js';
import { describeError } from '../../src/drivers/common.js';
import { ModbusDeviceDriver, ModbusEndpoint } from '../../src/drivers/modbus.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { profile } from '../helpers/fixtures.js';

let plant: Plant;
let endpoint: ModbusEndpoint;
const drivers: ModbusDeviceDriver[] = [];

beforeAll(async () => {
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: Object.fromEntries(
            Array.from({ length: 6 }, (_, i) => [
              `v${i}`,
              { profile: 'valve' as const, base: i * 20, initialPosition: i * 20 },
            ]),
          ),
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const e = plant.plc('mb').endpoint;
  if (e.protocol !== 'modbus') throw new Error('expected a Modbus PLC');
  endpoint = new ModbusEndpoint({
    name: 'mb',
    host: e.host,
    port: e.port,
    unitId: e.unitId,
    requestTimeoutMs: 200,
    backoffInitialMs: 50,
    backoffMaxMs: 200,
    clock: systemClock,
    logger: silentLogger,
  });
  for (let i = 0; i < 6; i++) {
    drivers.push(
      new ModbusDeviceDriver({
        id: `v${i}`,
        profile: profile('valve'),
        endpoint,
        base: i * 20,
        clock: systemClock,
      }),
    );
  }
});

afterAll(async () => {
  await endpoint.close();
  await plant.stop();
});

describe('ModbusEndpoint', () => {
  it('keeps one request in flight per connection; every answer goes to its request', async () => {
    // Each request is held 40 ms by the PLC: n requests take at least n × 40 ms only if they
    // are sent one after the other (modbus-serial #264, #540: concurrent requests get mixed
    // up). How many there are depends on how many reads the endpoint could combine.
    plant.plc('mb').setFault({ kind: 'latency', ms: 40, on: 'read' });
    try {
      const sentBefore = endpoint.requestsSent;
      const started = Date.now();
      const reads = await Promise.all(Array.from({ length: 6 }, (_, k) => drivers[k]!.read()));
      const sent = endpoint.requestsSent - sentBefore;
      expect(sent).toBeGreaterThanOrEqual(1);
      expect(Date.now() - started).toBeGreaterThanOrEqual(sent * 40);
      reads.forEach((r, k) => {
        expect(r.position).toBe(k * 20);
      });
    } finally {
      plant.plc('mb').clearFault('latency');
    }
    const many = await Promise.all(Array.from({ length: 60 }, (_, k) => drivers[k % 6]!.read()));
    many.forEach((r, k) => {
      expect(r.position).toBe((k % 6) * 20);
    });
  });

  it('replaces the connection after a timeout, so a late answer is never taken for another', async () => {
    const device = plant.device('v1');
    device.setFault({ kind: 'latency', ms: 400, on: 'read' });
    await expect(drivers[1]!.read()).rejects.toThrow(DeviceUnreachableError);
    device.clearFault('latency');
    // The late answer arrives on the old socket, which is gone; the next reads are right.
    await new Promise((r) => setTimeout(r, 300));
    const [a, b] = await Promise.all([drivers[2]!.read(), drivers[1]!.read()]);
    expect(a.position).toBe(40);
    expect(b.position).toBe(20);
    expect(endpoint.health.snapshot()).toMatchObject({ connected: true });
    expect(endpoint.health.snapshot().errorCount).toBeGreaterThan(0);
  });

  it('reconnects after the PLC drops the link', async () => {
    plant.device('v3').setFault({ kind: 'reset', when: 'before', on: 'read', count: 1 });
    await expect(drivers[3]!.read()).rejects.toThrow(DeviceUnreachableError);
    let position: number | null = null;
    const end = Date.now() + 3_000;
    while (position === null && Date.now() < end) {
      try {
        position = (await drivers[3]!.read()).position;
      } catch {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    expect(position).toBe(60);
  });

  // modbus-serial rejects with plain objects (not Errors) in some paths: a transaction
  // timeout, a port that is not open, a socket error. Their text must survive into the error.
  it.each([
    ['a dropped reply to a write', { kind: 'drop', on: 'write', count: 1 }, /timed out/i],
    [
      'a connection reset after a write',
      { kind: 'reset', when: 'after', on: 'write', count: 1 },
      /connection closed|ECONNRESET/,
    ],
  ] as const)('names the failure readably: %s', async (_what, fault, says) => {
    const device = plant.device('v4');
    device.setFault(fault);
    const error = await drivers[4]!.write({ action: 'stop', position: null, seq: 4242 }).then(
      () => null,
      (e: unknown) => e,
    );
    device.clearFault(fault.kind);
    expect(error).toBeInstanceOf(DeviceUnreachableError);
    const message = (error as Error).message;
    expect(message).toMatch(/^mb: write 90\+3:? \S/);
    expect(message).toMatch(says);
    expect(message).not.toContain('[object Object]');
    expect(message).not.toMatch(/: (undefined|null)$/);
    expect(endpoint.health.snapshot().lastError).not.toContain('[object Object]');
    // The endpoint recovers: the next read goes through on a new connection.
    let position: number | null = null;
    const end = Date.now() + 3_000;
    while (position === null && Date.now() < end) {
      try {
        position = (await drivers[4]!.read()).position;
      } catch {
        await new Promise((r) => setTimeout(r, 20));
      }
    }
    expect(position).not.toBeNull();
  });

  it('reads the 64-bit controller clock in one request', async () => {
    plant.plc('mb').setClock({ offsetMs: 123_456_789, driftPpm: 0 });
    const sample = await drivers[0]!.readClock!();
    const midpoint = (sample.requestedAt + sample.receivedAt) / 2;
    expect(Math.abs(sample.controllerTime - midpoint - 123_456_789)).toBeLessThan(100);
    plant.plc('mb').setClock({ offsetMs: 0, driftPpm: 0 });
  });
});

describe('describeError', () => {
  it('reads what modbus-serial and others reject with', () => {
    // The shapes modbus-serial uses: constructor functions that are not Errors.
    function TransactionTimedOutError(this: Record<string, unknown>): void {
      this.name = 'TransactionTimedOutError';
      this.message = 'Timed out';
      this.errno = 'ETIMEDOUT';
    }
    function SerialPortError(this: Record<string, unknown>): void {
      this.name = 'SerialPortError';
      this.message = null;
      this.errno = 'ECONNREFUSED';
    }
    const make = (f: (this: Record<string, unknown>) => void): unknown =>
      new (f as unknown as new () => unknown)();
    expect(describeError(make(TransactionTimedOutError))).toBe(
      'Timed out (TransactionTimedOutError, ETIMEDOUT)',
    );
    expect(describeError(make(SerialPortError))).toBe('SerialPortError, ECONNREFUSED');
    const refused = Object.assign(new Error('connect ECONNREFUSED 127.0.0.1:502'), {
      code: 'ECONNREFUSED',
      errno: -111,
    });
    expect(describeError(refused)).toBe('connect ECONNREFUSED 127.0.0.1:502 (-111)');
    expect(describeError(new TypeError('bad'))).toBe('bad (TypeError)');
    expect(describeError(new Error('plain'))).toBe('plain');
    expect(describeError({ status: 'BadTimeout' })).toBe('unknown error {"status":"BadTimeout"}');
    expect(describeError({})).toBe('unknown error (Object without a message)');
    expect(describeError('text')).toBe('text');
    expect(describeError(undefined)).toBe('unknown error (undefined)');
    for (const e of [{}, { message: {} }, Object.create(null), [], 42]) {
      expect(describeError(e)).not.toContain('[object Object]');
    }
  });
});

describe('Backoff', () => {
  it('doubles from min to max within the upper half of each step, and starts over on reset', () => {
    const low = new Backoff({ minMs: 100, maxMs: 1000, random: () => 0 });
    expect([1, 2, 3, 4, 5, 6].map(() => low.next())).toEqual([50, 100, 200, 400, 500, 500]);
    const high = new Backoff({ minMs: 100, maxMs: 1000, random: () => 1 });
    expect([1, 2, 3, 4, 5].map(() => high.next())).toEqual([100, 200, 400, 800, 1000]);
    high.reset();
    expect(high.next()).toBe(100);
    expect(() => new Backoff({ minMs: 0, maxMs: 10 })).toThrow(RangeError);
  });

  it('gates attempts on a clock for the drivers', () => {
    const b = new Backoff({ minMs: 100, maxMs: 1000, random: () => 1 });
    expect(b.remaining(0)).toBe(0);
    b.failed(1_000);
    expect(b.remaining(1_000)).toBe(100);
    b.failed(1_000);
    expect(b.remaining(1_050)).toBe(150);
    b.reset();
    expect(b.remaining(1_050)).toBe(0);
  });
});
