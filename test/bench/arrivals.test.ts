import { performance } from 'node:perf_hooks';
import { describe, expect, it } from 'vitest';
import { ArrivalPauses, preciseSleep } from '../../bench/stats.js';

/**
 * The pauses before the commands of the bench's one-at-a-time series (bench/stats.ts): one in
 * each n-th of the scan, so that the series' share of the plant is half a scan on average in
 * every run, and waited to a fraction of a millisecond rather than to a timer's whole one.
 */

describe('arrival pauses', () => {
  it('take one pause in each n-th of the scan, in a shuffled order', () => {
    const scanMs = 10;
    const n = 300;
    const arrivals = new ArrivalPauses(scanMs, n);
    const pauses = Array.from({ length: n }, () => arrivals.nextMs());
    const slices = pauses.map((p) => Math.floor((p / scanMs) * n)).sort((a, b) => a - b);
    expect(slices).toEqual(Array.from({ length: n }, (_, i) => i));
    // Their mean is half a scan within one slice, whatever the draws.
    const mean = pauses.reduce((s, p) => s + p, 0) / n;
    expect(Math.abs(mean - scanMs / 2)).toBeLessThan(scanMs / n);
    // Not in order: the series does not sweep the scan from one end to the other.
    const inOrder = pauses.every((p, i) => i === 0 || p >= (pauses[i - 1] ?? 0));
    expect(inOrder).toBe(false);
  });

  it('a series longer than its count takes the slices again', () => {
    const arrivals = new ArrivalPauses(10, 4, () => 0.5);
    const first = Array.from({ length: 4 }, () => arrivals.nextMs());
    const again = Array.from({ length: 4 }, () => arrivals.nextMs());
    expect(again).toEqual(first);
    expect([...first].sort((a, b) => a - b)).toEqual([1.25, 3.75, 6.25, 8.75]);
  });

  it('a precise sleep never ends before its time, fractions of a millisecond included', async () => {
    for (const ms of [0.3, 1.6, 2.4, 5.7]) {
      const start = performance.now();
      await preciseSleep(ms);
      expect(performance.now() - start).toBeGreaterThanOrEqual(ms);
    }
  });
});
