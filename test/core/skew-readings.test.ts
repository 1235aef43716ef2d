import { describe, expect, it } from 'vitest';
import { DeviceReads } from '../../src/core/device-reads.js';
import type { ClockSample, DeviceHealth } from '../../src/core/driver.js';
import type { ExecutionHost, Lane } from '../../src/core/lane.js';
import { silentLogger } from '../../src/core/logger.js';
import { noReadFailures } from '../../src/core/read-failures.js';
import { estimateSkewFrom, type ClockReading } from '../../src/core/skew.js';

/**
 * How one skew measurement reads the controller's clock (src/core/device-reads.ts
 * `measureSkew`): up to four reads in a row while each round trip is within a millisecond.
 * A double of the driver on a clock of the test's: which read of a measurement fails, how long
 * each takes and when the connection changes must be chosen read by read, which neither the
 * simulator's link faults (they act on the next read of any kind) nor a loaded machine's round
 * trips allow. The arithmetic of the readings is tested in skew-stamp.test.ts, the whole on the
 * simulator in skew-refine.test.ts and the driver contract.
 */

interface Read {
  /** The round trip, ms. */
  readonly rtt: number;
  /** Fails instead of answering. */
  readonly fail?: boolean;
  /** The connection is a new one from this read on (a reconnect during it). */
  readonly reconnect?: boolean;
  /** How far the controller's clock is off this read (ms): another controller, or a step. */
  readonly shiftMs?: number;
}

const OFFSET_MS = 1_000_000;

function bed(reads: readonly Read[]) {
  let mono = 100;
  let epoch = 1;
  let calls = 0;
  const taken: ClockReading[] = [];
  const driver = {
    readClock: async (): Promise<ClockSample> => {
      const read = reads[calls];
      calls += 1;
      if (read === undefined) throw new Error('more clock reads than the test planned');
      const requestedMono = mono;
      mono += read.rtt;
      await Promise.resolve();
      if (read.reconnect === true) epoch += 1;
      if (read.fail === true) throw new Error('connection reset (test)');
      // The controller read its clock in the middle of the round trip, in whole milliseconds.
      const controllerTime = Math.round(
        requestedMono + read.rtt / 2 + OFFSET_MS + (read.shiftMs ?? 0),
      );
      const sample = { controllerTime, requestedAt: requestedMono, receivedAt: mono };
      taken.push({ sample, bracket: { requestedMono, receivedMono: mono } });
      return sample;
    },
    health: (): DeviceHealth => ({ connectionEpoch: epoch }) as DeviceHealth,
  };
  const lane = {
    binding: { id: 'v1', driver, profile: { timing: { scanMs: 10 } } },
    signal: new AbortController().signal,
    skew: null,
    skewSamples: [],
    clockReads: noReadFailures(),
    clockOff: null,
  } as unknown as Lane;
  const host = {
    clock: { now: () => mono, elapsed: () => mono },
    clockPolicy: { maxControllerSkewMs: () => null },
    skewMaxAgeMs: 60_000,
  } as unknown as ExecutionHost;
  const deviceReads = new DeviceReads(host);
  return {
    lane,
    measure: () => deviceReads.measureSkew(lane, silentLogger),
    calls: () => calls,
    taken,
  };
}

describe('one skew measurement', () => {
  it('reads the clock four times while the round trips are quick, once over a slow link', async () => {
    const quick = bed([{ rtt: 0.2 }, { rtt: 0.3 }, { rtt: 0.1 }, { rtt: 0.25 }, { rtt: 0.2 }]);
    const skew = await quick.measure();
    expect(quick.calls()).toBe(4);
    expect(skew).toEqual(estimateSkewFrom(quick.taken, 1));

    const slow = bed([{ rtt: 2.5 }, { rtt: 0.2 }]);
    const one = await slow.measure();
    expect(slow.calls()).toBe(1);
    expect(one).toEqual(estimateSkewFrom(slow.taken, 1));
  });

  it('a read that fails keeps the readings before it and is counted as a failed clock read', async () => {
    const b = bed([{ rtt: 0.2 }, { rtt: 0.2, fail: true }, { rtt: 0.2 }]);
    const skew = await b.measure();
    expect(b.calls()).toBe(2);
    expect(b.taken).toHaveLength(1);
    expect(skew).toEqual(estimateSkewFrom(b.taken, 1));
    expect(b.lane.skew).toBe(skew);
    expect(b.lane.clockReads.total).toBe(1);
  });

  it('a first read that fails leaves no estimate', async () => {
    const b = bed([{ rtt: 0.2, fail: true }]);
    expect(await b.measure()).toBeNull();
    expect(b.lane.skew).toBeNull();
    expect(b.lane.clockReads.total).toBe(1);
  });

  it('a reconnect during a read drops the readings before it: they may be of another controller', async () => {
    // The first reading is of a controller whose clock was 0.4 ms off the one after the
    // reconnect: kept, it would pull the stamps' interval with it.
    const b = bed([
      { rtt: 0.2, shiftMs: 0.4 },
      { rtt: 0.2, reconnect: true },
      { rtt: 0.3 },
      { rtt: 0.1 },
      { rtt: 0.2 },
    ]);
    const skew = await b.measure();
    expect(b.calls()).toBe(5);
    expect(skew).toEqual(estimateSkewFrom(b.taken.slice(1), 2));
    expect(skew?.epoch).toBe(2);
  });
});
