import { performance } from 'node:perf_hooks';
import { afterEach, describe, expect, it } from 'vitest';
import type { SkewEstimate } from '../../src/core/skew.js';
import { SIM_TIMING, SimHarness } from '../helpers/sim-harness.js';

/**
 * A controller skew measured over a slow round trip is good to only ± half of it: correct,
 * but too coarse to place readbacks on the controller's scans (readback-pacing.ts). The
 * idle-device monitor measures such an estimate again once the connection answers quickly.
 * On the real simulator, whose clock is set 3 s ahead: the refined estimate still holds the
 * true offset (ground truth: the simulator's own clock setting).
 */

const OFFSET_MS = 3_000;
let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('controller skew between commands', () => {
  it('an estimate taken over a slow link is measured again by the monitor once it is quick', async () => {
    h = await SimHarness.start({ monitorMs: 50 });
    const plc = h.plant.plc('mb');
    plc.setClock({ offsetMs: OFFSET_MS, driftPpm: 0 });
    // Every read answered 40 ms late: the estimate measured for the command is ± ~20 ms.
    plc.setFault({ kind: 'latency', ms: 40, when: 'after', on: 'read' });
    h.submit('k1', { device: 'v1', action: 'open' });
    expect(await h.settled('k1')).toMatchObject({ state: 'confirmed' });
    const coarse = h.pipeline.device('v1')?.skew;
    expect(coarse?.uncertaintyMs).toBeGreaterThan(10);
    expect(Math.abs((coarse?.offsetMs ?? 0) - OFFSET_MS)).toBeLessThanOrEqual(
      (coarse?.uncertaintyMs ?? 0) + 1,
    );

    plc.clearFault('latency');
    const fine = (): boolean =>
      (h!.pipeline.device('v1')?.skew?.uncertaintyMs ?? Infinity) <= SIM_TIMING.scanMs / 20;
    // Without the re-measurement the coarse estimate would stand until it is 60 s old.
    await h.until(fine, 5_000, 'a fine skew estimate');
    const refined = h.pipeline.device('v1')?.skew;
    expect(Math.abs((refined?.offsetMs ?? 0) - OFFSET_MS)).toBeLessThanOrEqual(
      (refined?.uncertaintyMs ?? 0) + 1,
    );
  });

  it("places the simulator's scans within the window its stamps allow, narrowed by several readings", async () => {
    // The estimate is measured again every ~30 ms (the monitor, an estimate that old unusable),
    // each time from up to four clock readings. Ground truth: the moment each scan of the
    // simulator ran (the same process, the same monotonic clock as the pipeline), bracketed by
    // wrapping its scan, and the stamp it gave the image.
    h = await SimHarness.start({ monitorMs: 10, skewMaxAgeMs: 30 });
    const plc = h.plant.plc('mb');
    plc.setClock({ offsetMs: OFFSET_MS, driftPpm: 0 });
    const device = h.device('v1');
    const scans: { before: number; after: number; stamp: number; skew: SkewEstimate }[] = [];
    const scan = plc.scan.bind(plc);
    plc.scan = () => {
      const skew = h?.pipeline.device('v1')?.skew ?? null;
      const before = performance.now();
      scan();
      const after = performance.now();
      if (skew !== null) scans.push({ before, after, stamp: device.published.scanTime, skew });
    };
    // On loopback the readings round at different phases: some estimates are narrower than
    // one reading alone could place the stamps (± its half round trip and the rounding). That
    // needs readings taken within a millisecond of each other, which a loaded machine gives
    // less often: the test waits for one such estimate (bounded) rather than for a fixed time.
    const narrowed = (): SkewEstimate[] =>
      [...new Set(scans.map((s) => s.skew))].filter(
        (e) => e.stamp.uncertaintyMs < e.uncertaintyMs + 0.5 - 0.05,
      );
    try {
      await h.until(
        () => scans.length >= 100 && narrowed().length > 0,
        20_000,
        '100 scans with a skew estimate, one of them narrowed by several readings',
      );
    } finally {
      plc.scan = scan;
    }
    const estimates = new Set(scans.map((s) => s.skew));
    expect(estimates.size, 'the estimate was measured again and again').toBeGreaterThan(5);
    for (const { before, after, stamp, skew } of scans) {
      // The pacer's window (readback-pacing.ts): the stamp's own rounding, and the interval.
      const at = stamp - skew.stamp.monoOffsetMs;
      const margin = 0.5 + skew.stamp.uncertaintyMs;
      expect(at + margin, `scan at ${before}..${after}`).toBeGreaterThanOrEqual(before);
      expect(at - margin, `scan at ${before}..${after}`).toBeLessThanOrEqual(after);
    }
    expect(narrowed().length).toBeGreaterThan(0);
  });
});
