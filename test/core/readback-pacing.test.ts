import { describe, expect, it } from 'vitest';
import { ReadbackPacer } from '../../src/core/readback-pacing.js';
import type { SkewEstimate } from '../../src/core/skew.js';

/**
 * When readbacks are placed (src/core/readback-pacing.ts). Monotonic and controller times are
 * chosen so that the controller's clock runs 1,000,000 ms ahead of the gateway's monotonic
 * clock, known within ± 0.2 ms: an image stamped C was produced at gateway time C − 1,000,000.
 */
const skew: SkewEstimate = {
  offsetMs: 0,
  monoOffsetMs: 1_000_000,
  uncertaintyMs: 0.2,
  measuredAt: 0,
  measuredMono: 0,
  epoch: 1,
  // One reading's stamp interval: ± (0.2 + the half millisecond of its rounding).
  stamp: { monoOffsetMs: 1_000_000, uncertaintyMs: 0.7 },
};
const timing = { scanMs: 10, pollIntervalMs: 100 };
/** An image the controller produced at gateway monotonic time `mono`. */
const imageAt = (mono: number): { sourceTime: number } => ({ sourceTime: mono + 1_000_000 });
// The image's own rounding (± 0.5 ms) and the stamp interval's half-width.
const margin = 0.5 + skew.stamp.uncertaintyMs;

describe('ReadbackPacer', () => {
  it('times the first readback for the scan that can take the write', () => {
    const pacer = new ReadbackPacer(timing, 1003);
    // Image of the fresh read produced at 1000; the write went out at 1002, acked at 1003: the
    // scan at 1010 (± the margin) is the first that can take it.
    expect(pacer.first(1003, 1002, imageAt(1000), skew)).toBeCloseTo(1010 - 1003);
    // Sent after several scans: the next scan on the same cadence.
    const later = new ReadbackPacer(timing, 1035);
    expect(later.first(1035, 1034.5, imageAt(1000), skew)).toBeCloseTo(1040 - 1035);
  });

  it("reads back to back while the scan's window is open, a few times at most", () => {
    const pacer = new ReadbackPacer(timing, 1003);
    pacer.first(1003, 1002, imageAt(1000), skew);
    // The scan at 1010 comes within 1010 ± margin. A readback back before it (the timer fired
    // early, or the scan is in the later half of its window) is followed at once, ...
    expect(pacer.next(1009.4, imageAt(1000), skew)).toBe(0);
    expect(pacer.next(1009.7, imageAt(1000), skew)).toBe(0);
    // ... until the taking scan's image shows: the next scan is due one scan after it.
    expect(pacer.next(1010.1, imageAt(1009.8), skew)).toBeCloseTo(1019.8 - 1010.1);
    // A round trip so short that the reads would be many: four in a window, then the pace of a
    // late scan.
    expect(pacer.next(1019.3, imageAt(1009.8), skew)).toBe(0);
    expect(pacer.next(1019.4, imageAt(1009.8), skew)).toBe(0);
    expect(pacer.next(1019.5, imageAt(1009.8), skew)).toBe(0);
    expect(pacer.next(1019.6, imageAt(1009.8), skew)).toBe(0);
    expect(pacer.next(1019.7, imageAt(1009.8), skew)).toBe(1);
    // After the window's end the scan is late, however few reads were made in it.
    const late = new ReadbackPacer(timing, 1003);
    late.first(1003, 1002, imageAt(1000), skew);
    expect(late.next(1010 + margin + 0.01, imageAt(1000), skew)).toBe(1);
  });

  it('reads at once after a write whose scan may have passed already', () => {
    const pacer = new ReadbackPacer(timing, 1011.5);
    // The write went out at 1009.9, the scan at 1010 may have taken it: read now.
    expect(pacer.first(1011.5, 1009.9, imageAt(1000), skew)).toBe(0);
  });

  it('reads at once without an image time or a skew estimate', () => {
    expect(new ReadbackPacer(timing, 0).first(5, 4, null, skew)).toBe(0);
    expect(new ReadbackPacer(timing, 0).first(5, 4, { sourceTime: null }, skew)).toBe(0);
    expect(new ReadbackPacer(timing, 0).first(5, 4, imageAt(0), null)).toBe(0);
  });

  it('places each next readback one scan after the image it just saw', () => {
    const pacer = new ReadbackPacer(timing, 1000);
    pacer.first(1000, 999, imageAt(990), skew);
    // The readback at 1011.5 shows the image of 1010: the next image comes at 1020.
    expect(pacer.next(1011.5, imageAt(1010), skew)).toBeCloseTo(1020 - 1011.5);
    // A readback that arrives late, after the next image was due, is followed at once.
    expect(pacer.next(1032, imageAt(1020), skew)).toBe(0);
  });

  it('looks again soon when a scan comes late (the same image twice)', () => {
    const pacer = new ReadbackPacer(timing, 1000);
    pacer.first(1000, 999, imageAt(990), skew);
    // The image of 1000, read at 1011: its successor's window (1010 ± margin) is open.
    expect(pacer.next(1011, imageAt(1000), skew)).toBe(0);
    // Read at 1012.5, after the window, and still the image of 1000: the scan is late. Look again
    // after a twentieth of a scan (a millisecond at least), then twice as long each time, up to a
    // scan.
    expect(pacer.next(1012.5, imageAt(1000), skew)).toBe(1);
    expect(pacer.next(1013.6, imageAt(1000), skew)).toBe(2);
    expect(pacer.next(1015.7, imageAt(1000), skew)).toBe(4);
    expect(pacer.next(1019.8, imageAt(1000), skew)).toBe(8);
    expect(pacer.next(1027.9, imageAt(1000), skew)).toBe(10);
    expect(pacer.next(1038, imageAt(1000), skew)).toBe(10);
    // The late scan came: its successor is predicted from it, and a later repeat starts over.
    expect(pacer.next(1040, imageAt(1039), skew)).toBeCloseTo(1049 - 1040);
    expect(pacer.next(1050.5, imageAt(1039), skew)).toBe(1);
  });

  it('looks again after a twentieth of a slower scan', () => {
    const slow = { scanMs: 100, pollIntervalMs: 1_000 };
    const pacer = new ReadbackPacer(slow, 1000);
    pacer.first(1000, 999, imageAt(990), skew);
    expect(pacer.next(1091.5, imageAt(990), skew)).toBe(5);
    expect(pacer.next(1096.6, imageAt(990), skew)).toBe(10);
  });

  it('reads a controller whose image stopped changing a few times, not every millisecond', () => {
    // A frozen image through the quick pace (eight scans): the pauses double from a millisecond
    // to a scan, then the plain pace's doubling takes over.
    const pacer = new ReadbackPacer(timing, 1000);
    pacer.first(1000, 999, imageAt(995), skew);
    let now = 1006;
    let reads = 0;
    while (now < 1080) {
      now += pacer.next(now, imageAt(995), skew) + 0.1;
      reads += 1;
    }
    expect(reads).toBeLessThanOrEqual(12);
  });

  it('treats the image the command was checked against as seen', () => {
    const pacer = new ReadbackPacer(timing, 1000);
    pacer.first(1000, 999, imageAt(995), skew);
    // The first readback shows the fresh read's image again: the taking scan has not come.
    expect(pacer.next(1006.3, imageAt(995), skew)).toBe(1);
  });

  it('reads one scan apart without an image time, then doubles up to the poll interval', () => {
    const pacer = new ReadbackPacer(timing, 0);
    expect(pacer.next(10, { sourceTime: null }, skew)).toBe(10);
    expect(pacer.next(20, imageAt(15), null)).toBe(10);
    expect(pacer.next(40, null, skew)).toBe(10);
    // Eight scans on: 20, 40, 80, then the poll interval.
    expect(pacer.next(80, imageAt(75), skew)).toBe(20);
    expect(pacer.next(100, imageAt(95), skew)).toBe(40);
    expect(pacer.next(140, imageAt(135), skew)).toBe(80);
    expect(pacer.next(220, imageAt(215), skew)).toBe(100);
    expect(pacer.next(320, imageAt(315), skew)).toBe(100);
  });

  it('falls back to the plain pace when image time and skew disagree (a clock that stepped)', () => {
    // The image looks two hours ahead of the estimate: no wait beyond a scan.
    expect(new ReadbackPacer(timing, 1000).first(1000, 999, imageAt(7_200_000), skew)).toBe(
      timing.scanMs,
    );
    const pacer = new ReadbackPacer(timing, 1000);
    expect(pacer.next(1001, imageAt(7_200_000), skew)).toBe(timing.scanMs);
    expect(pacer.next(1012, imageAt(1_000 + 7_200_000), skew)).toBe(timing.scanMs);
  });

  it('counts the taking scan from the latest phase the estimate allows', () => {
    // Image at 1000 ± the margin: the scan "at 1010" may come as late as 1011.2. A write sent at
    // 1010.5 may still be taken by it: read at once, not a whole scan later.
    const pacer = new ReadbackPacer(timing, 1011);
    expect(pacer.first(1011, 1010.5, imageAt(1000), skew)).toBe(0);
  });

  it('waits for the next scan when a readback came before it (the same image again)', () => {
    // Sent at 1000.5 after the image of 1000: the scan at 1000 may have come later than
    // stamped and taken it, so the first readback comes at once.
    const pacer = new ReadbackPacer(timing, 1001);
    expect(pacer.first(1001, 1000.5, imageAt(1000), skew)).toBe(0);
    // Back after that scan's window (1000 ± 1.2) with the image of 1000 again: the scan at 1000
    // did not take it; the next is at 1010.
    expect(pacer.next(1001.5, imageAt(1000), skew)).toBeCloseTo(1010 - 1001.5);
  });

  it('does not place readbacks by a skew known no better than half a scan', () => {
    // Measured over a slow round trip (a busy connection): the image's time says nothing of
    // the scan's phase, so the readbacks keep the plain pace.
    const wide: SkewEstimate = {
      ...skew,
      uncertaintyMs: 40,
      stamp: { monoOffsetMs: 1_000_000, uncertaintyMs: 40.5 },
    };
    expect(new ReadbackPacer(timing, 1000).first(1000, 999, imageAt(990), wide)).toBe(0);
    const pacer = new ReadbackPacer(timing, 1000);
    expect(pacer.next(1001, imageAt(1000), wide)).toBe(timing.scanMs);
  });

  it('narrows the window when several clock readings narrowed the stamps', () => {
    // Readings that place the controller's stamps within ± 0.1 ms: the window is the image's
    // own rounding and that, ± 0.6 ms instead of ± 1.2.
    const narrow: SkewEstimate = {
      ...skew,
      stamp: { monoOffsetMs: 1_000_000, uncertaintyMs: 0.1 },
    };
    const pacer = new ReadbackPacer(timing, 1003);
    expect(pacer.first(1003, 1002, imageAt(1000), narrow)).toBeCloseTo(1010 - 1003);
    // At 1010.8 the wide window (± 1.2) would still be open; this one has closed: a late scan.
    expect(pacer.next(1010.8, imageAt(1000), narrow)).toBe(1);
    // The stamp's offset, not the judgement's midpoint, places them: here 0.3 ms apart.
    const shifted: SkewEstimate = {
      ...skew,
      stamp: { monoOffsetMs: 1_000_000 - 0.3, uncertaintyMs: 0.1 },
    };
    expect(new ReadbackPacer(timing, 1003).first(1003, 1002, imageAt(1000), shifted)).toBeCloseTo(
      1010 + 0.3 - 1003,
    );
  });
});
