import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { estimateSkew, estimateSkewFrom, type ClockReading } from '../../src/core/skew.js';

/**
 * Where a controller's whole-millisecond stamps fall on the gateway's monotonic clock
 * (src/core/skew.ts `stamp`), from readings of its clock taken one after the other. The
 * controller is modelled exactly: its clock runs `offset` ahead of the gateway's monotonic
 * clock, it reads it at some moment inside each reading's bracket, and stamps whole
 * milliseconds by rounding or by truncating, its clock readings and its images alike.
 *
 * A failure prints the seed; replay it with SLUICE_PROPERTY_SEED=<seed>.
 */

type Quantize = (t: number) => number;
const ROUND: Quantize = (t) => Math.round(t);
const TRUNCATE: Quantize = (t) => Math.floor(t);

interface Bed {
  readonly offset: number;
  readonly quantize: Quantize;
  /** Per reading: the round trip, and where in it the controller read its clock (0..1). */
  readonly trips: readonly { readonly rtt: number; readonly at: number }[];
}

function readingsOf(bed: Bed): ClockReading[] {
  let mono = 5_000;
  return bed.trips.map(({ rtt, at }) => {
    const requestedMono = mono;
    const receivedMono = mono + rtt;
    mono = receivedMono + 0.01;
    const controllerTime = bed.quantize(requestedMono + at * rtt + bed.offset);
    return {
      // The wall clock is the monotonic one here: only the monotonic offset is under test.
      sample: { controllerTime, requestedAt: requestedMono, receivedAt: receivedMono },
      bracket: { requestedMono, receivedMono },
    };
  });
}

const bedArb = fc.record({
  offset: fc.double({ min: -1e7, max: 1e7, noNaN: true }),
  quantize: fc.constantFrom(ROUND, TRUNCATE),
  trips: fc.array(
    fc.record({
      rtt: fc.double({ min: 0.01, max: 3, noNaN: true }),
      at: fc.double({ min: 0, max: 1, noNaN: true }),
    }),
    { minLength: 1, maxLength: 6 },
  ),
});

function check<T extends [unknown, ...unknown[]]>(property: fc.IProperty<T>): void {
  const seed = process.env.SLUICE_PROPERTY_SEED;
  const details = fc.check(property, {
    numRuns: 2_000,
    // Unset or `random`: fast-check draws one, printed with a failure.
    ...(seed === undefined || seed === 'random' ? {} : { seed: Number(seed) }),
  });
  if (details.failed) {
    console.error(`property failed — replay with SLUICE_PROPERTY_SEED=${details.seed}`);
  }
  expect(details.failed, fc.defaultReportMessage(details) ?? '').toBe(false);
}

describe('the stamp interval of a skew estimate', () => {
  it('places every image stamp within its window, for rounding and truncating controllers', () => {
    check(
      fc.property(bedArb, fc.double({ min: 0, max: 60_000, noNaN: true }), (bed, imageMono) => {
        const skew = estimateSkewFrom(readingsOf(bed));
        const stamp = bed.quantize(imageMono + bed.offset);
        // The pacer's window (readback-pacing.ts): the stamp's own rounding and the interval.
        const at = stamp - skew.stamp.monoOffsetMs;
        const margin = 0.5 + skew.stamp.uncertaintyMs;
        expect(Math.abs(imageMono - at)).toBeLessThanOrEqual(margin + 1e-6);
        // Never wider than the narrowest reading's own interval.
        const narrowest = Math.min(
          ...readingsOf(bed).map((r) => estimateSkew(r.sample, r.bracket).stamp.uncertaintyMs),
        );
        expect(skew.stamp.uncertaintyMs).toBeLessThanOrEqual(narrowest + 1e-9);
      }),
    );
  });

  it('judges by the reading with the shortest round trip', () => {
    check(
      fc.property(bedArb, (bed) => {
        const readings = readingsOf(bed);
        const skew = estimateSkewFrom(readings);
        const shortest = Math.min(...bed.trips.map((t) => t.rtt));
        expect(skew.uncertaintyMs).toBeCloseTo(shortest / 2, 9);
        // Its midpoint holds the offset within half the round trip and the rounding.
        expect(Math.abs(skew.monoOffsetMs - bed.offset)).toBeLessThanOrEqual(
          skew.uncertaintyMs + 1 + 1e-6,
        );
      }),
    );
  });

  it('one reading gives the window a single reading always had: ± (1 + half its round trip)', () => {
    const [reading] = readingsOf({
      offset: 1234.3,
      quantize: ROUND,
      trips: [{ rtt: 0.4, at: 0.5 }],
    });
    const skew = estimateSkewFrom([reading!]);
    expect(skew).toEqual(estimateSkew(reading!.sample, reading!.bracket));
    expect(0.5 + skew.stamp.uncertaintyMs).toBeCloseTo(1 + 0.2, 9);
  });

  it('four quick readings narrow the window to about half of one', () => {
    // Deterministic: a fixed pseudo-random sequence of offsets and loopback round trips.
    let state = 42;
    const random = (): number => {
      state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
      return state / 2 ** 31;
    };
    let one = 0;
    let four = 0;
    const runs = 1_000;
    for (let i = 0; i < runs; i++) {
      const bed: Bed = {
        offset: random() * 1e6,
        quantize: ROUND,
        trips: [0, 1, 2, 3].map(() => ({ rtt: 0.1 + 0.2 * random(), at: 0.3 + 0.4 * random() })),
      };
      const readings = readingsOf(bed);
      one += estimateSkewFrom(readings.slice(0, 1)).stamp.uncertaintyMs;
      four += estimateSkewFrom(readings).stamp.uncertaintyMs;
    }
    // About 0.6 ms for one reading, 0.25 ms for four (of which the rounding is most).
    expect(one / runs).toBeGreaterThan(0.55);
    expect(four / runs).toBeLessThan(0.32);
  });

  it('falls back to the last reading when the readings allow no common offset', () => {
    // A controller that stamps in tens of milliseconds: the whole-millisecond model fails, and
    // the estimate is the last reading's own.
    const readings = readingsOf({
      offset: 7.5,
      quantize: (t) => Math.floor(t / 10) * 10,
      trips: [
        { rtt: 0.2, at: 0.5 },
        { rtt: 0.1, at: 0.5 },
        ...Array.from({ length: 30 }, () => ({ rtt: 0.2, at: 0.5 })),
      ],
    });
    const last = readings.at(-1)!;
    expect(estimateSkewFrom(readings)).toEqual(estimateSkew(last.sample, last.bracket));
  });

  it('a clock set between two readings: the estimate is the clock as it stands after', () => {
    // Two quick readings, then the controller's clock is set 5 s ahead before the third (the
    // third of a slower round trip: the quickest readings are from before).
    const trips = [
      { rtt: 0.1, at: 0.5 },
      { rtt: 0.1, at: 0.5 },
      { rtt: 0.3, at: 0.5 },
    ];
    const before = readingsOf({ offset: 1_000, quantize: ROUND, trips });
    const after = readingsOf({ offset: 6_000, quantize: ROUND, trips });
    const skew = estimateSkewFrom([before[0]!, before[1]!, after[2]!]);
    expect(Math.abs(skew.monoOffsetMs - 6_000)).toBeLessThan(1);
    expect(Math.abs(skew.stamp.monoOffsetMs - 6_000)).toBeLessThan(1);
  });
});
