import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { DeviceUnreachableError } from '../../src/core/driver.js';
import { silentLogger } from '../../src/core/logger.js';
import { withTimeout } from '../../src/drivers/common.js';
import { ModbusEndpoint } from '../../src/drivers/modbus.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';

/**
 * A request's timeout is when its answer counts as lost: a write's outcome becomes unknown then,
 * and the core counts the redispatch guard (the time the write may still land) from it. So it
 * never ends before its time by the monotonic clock the guard is judged on (performance.now(),
 * systemClock.elapsed()). A bare Node timer fires up to a millisecond early about 1 in 150 times
 * (libuv's loop time is cached in whole ms). Bounded: a few hundred timeouts of 1–3 ms.
 */
const WAITS = 300;

let plant: Plant;

beforeAll(async () => {
  plant = await startModbusPlant({ v0: { profile: 'valve', base: 0, initialPosition: 30 } });
});

afterAll(async () => {
  await plant.stop();
});

describe('request timeouts end no sooner than asked, by the monotonic clock', () => {
  it('withTimeout (the OPC UA requests, the Modbus connect): a request never answered', async () => {
    const short: string[] = [];
    for (let i = 0; i < WAITS; i++) {
      const ms = 1 + (i % 3);
      const from = performance.now();
      const error = await withTimeout(new Promise<never>(() => undefined), ms, 'timed out').catch(
        (e: unknown) => e,
      );
      const took = performance.now() - from;
      expect(error).toBeInstanceOf(DeviceUnreachableError);
      if (took < ms) short.push(`${ms} ms after ${took.toFixed(3)}`);
    }
    expect(short).toEqual([]);
  });

  it("a Modbus request whose reply the PLC drops (sluice-sim): modbus-serial's own timeout", async () => {
    const e = plant.plc('mb').endpoint;
    if (e.protocol !== 'modbus') throw new Error('expected a Modbus PLC');
    const endpoint = new ModbusEndpoint({
      name: 'mb',
      host: e.host,
      port: e.port,
      unitId: e.unitId,
      requestTimeoutMs: 2,
      // A connection whose request went unanswered is replaced, after the backoff.
      backoffInitialMs: 1,
      backoffMaxMs: 1,
      clock: systemClock,
      logger: silentLogger,
    });
    plant.device('v0').setFault({ kind: 'drop', on: 'read', count: 100_000 });
    const short: string[] = [];
    const messages = new Set<string>();
    let timedOut = 0;
    try {
      for (let tries = 0; timedOut < WAITS && tries < 20 * WAITS; tries++) {
        // The moment the request was handed to the socket (just before it): `sent`.
        const sent: { at: number | null } = { at: null };
        const error = await endpoint
          .read('holding', 0, 8, undefined, () => {
            sent.at = performance.now();
          })
          .catch((err: unknown) => err);
        const at = performance.now();
        const sentAt = sent.at;
        if (sentAt === null) {
          // Not sent (the backoff before the next connection): try again.
          await new Promise((r) => setTimeout(r, 1));
          continue;
        }
        timedOut += 1;
        expect(error).toBeInstanceOf(DeviceUnreachableError);
        messages.add((error as Error).message);
        if (at - sentAt < 2) short.push(`after ${(at - sentAt).toFixed(3)} ms`);
      }
    } finally {
      plant.device('v0').clearFault('drop');
      await endpoint.close();
    }
    expect(timedOut).toBe(WAITS);
    expect(short).toEqual([]);
    // The library's timeout, which the endpoint holds until its time, names the failure as before.
    expect([...messages].some((m) => m.includes('Timed out'))).toBe(true);
  });
});
