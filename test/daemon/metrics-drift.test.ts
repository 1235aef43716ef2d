import { afterEach, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { Metrics } from '../../src/daemon/metrics.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * sluice_controller_drift_ppm on a real pipeline against sluice-sim, the idle-device monitor
 * measuring the controller clock every few hundred ms: a drift is shown once measurements span
 * long enough, and after a step of the clock (a restart, a manual set), which starts a new line
 * of measurements, it is unknown (NaN) until the new line is long enough — not the drift of
 * the clock before the step.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

async function drift(metrics: Metrics): Promise<number | undefined> {
  const text = await metrics.registry.metrics();
  const m = /^sluice_controller_drift_ppm\{device="v1"\} (\S+)$/m.exec(text);
  return m === null ? undefined : Number(m[1]);
}

describe('controller drift in /metrics', () => {
  it('a clock that steps: the drift of before is not shown as its drift', async () => {
    h = await SimHarness.start({ skewMaxAgeMs: 250, monitorMs: 100 });
    const metrics = new Metrics(h.pipeline, systemClock);
    h.plant.plc('mb').setFault({ kind: 'clock', offsetMs: 0, driftPpm: 500 });
    await h.until(() => (h!.pipeline.device('v1')?.driftPpm ?? null) !== null, 15_000, 'a drift');
    // Over the first 5 s the line is as good as the measurements' round trips; on a loaded
    // machine it settles as the run of measurements grows (one a second, up to 32).
    await h.until(
      () => Math.abs((h!.pipeline.device('v1')?.driftPpm ?? 0) - 500) < 200,
      30_000,
      'the drift measured near the controller’s 500 ppm',
    );
    const before = await drift(metrics);
    expect(before).toBeGreaterThan(300);
    expect(before).toBeLessThan(700);
    // The controller's clock is set 10 s ahead: a step, and a new line of measurements.
    h.plant.plc('mb').setFault({ kind: 'clock', offsetMs: 10_000, driftPpm: 0 });
    await h.until(
      () => (h!.pipeline.device('v1')?.skew?.offsetMs ?? 0) > 9_000,
      5_000,
      'the step measured',
    );
    expect(h.pipeline.device('v1')?.driftPpm).toBeNull();
    expect(await drift(metrics)).toBeNaN();
  }, 60_000);
});
