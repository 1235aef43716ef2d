import { afterEach, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { Metrics } from '../../src/daemon/metrics.js';
import { SimHarness } from '../helpers/sim-harness.js';
import { until } from '../helpers/mosquitto.js';

/**
 * sluice_command_settle_seconds and sluice_command_confirm_seconds are durations (SPEC §6: on
 * the monotonic clock). They were the difference of the journal's wall-clock timestamps: a
 * gateway clock stepped back an hour while a valve travelled made a command's settle time
 * -3600 s (the histogram's _sum went down, the command counted in the lowest bucket), a step
 * forward two hours put it past every bucket. The pipeline and the metrics run on a clock
 * whose wall time the test steps; the plant is sluice-sim, its write log the ground truth
 * that the step came while the command was in flight.
 */

let h: SimHarness | undefined;

afterEach(async () => {
  await h?.close();
  h = undefined;
});

interface Histogram {
  readonly sum: number;
  readonly count: number;
  /** Cumulative count per upper bound. */
  readonly buckets: ReadonlyMap<string, number>;
}

async function histogram(metrics: Metrics, name: string, device: string): Promise<Histogram> {
  const text = await metrics.registry.metrics();
  const buckets = new Map<string, number>();
  let sum = Number.NaN;
  let count = Number.NaN;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name) || !line.includes(`device="${device}"`)) continue;
    const value = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (line.startsWith(`${name}_sum`)) sum = value;
    else if (line.startsWith(`${name}_count`)) count = value;
    else {
      const le = /le="([^"]+)"/.exec(line)?.[1];
      if (le !== undefined) buckets.set(le, value);
    }
  }
  return { sum, count, buckets };
}

it('times a command on the monotonic clock while the gateway clock steps back and forward', async () => {
  let offsetMs = 0;
  const clock: Clock = { ...systemClock, now: () => Date.now() + offsetMs };
  h = await SimHarness.start({ travelMs: 600, clock });
  const metrics = new Metrics(h.pipeline, clock);
  const valve = h.device('v1');

  const steps = [-3_600_000, 7_200_000];
  for (const [i, step] of steps.entries()) {
    const key = `step-${String(i)}`;
    const action = i === 0 ? 'open' : 'close';
    const started = performance.now();
    h.submit(key, { device: 'v1', action });
    // The write reached the controller: the command is in flight when the clock steps.
    await until(
      () => (valve.counters.writesReceived === i + 1 ? true : undefined),
      5_000,
      `the ${action} written`,
    );
    offsetMs += step;
    const record = await h.settled(key);
    const tookS = (performance.now() - started) / 1000;
    expect(record.state).toBe('confirmed');
    // The journal's own timestamps show the step (wall time, as SPEC §6 keeps it for reports).
    expect(Math.abs(record.settledAt! - record.acceptedAt - step)).toBeLessThan(10_000);

    for (const name of ['sluice_command_settle_seconds', 'sluice_command_confirm_seconds']) {
      const seen = await histogram(metrics, name, 'v1');
      expect(seen.count, name).toBe(i + 1);
      // The travel and the readbacks, never below zero, never the hour.
      expect(seen.sum, name).toBeGreaterThan(0.3 * (i + 1));
      expect(seen.sum, name).toBeLessThan(tookS * (i + 1) + 1);
      expect(seen.buckets.get('0.05'), name).toBe(0);
      expect(seen.buckets.get('60'), name).toBe(i + 1);
    }
  }
  // Ground truth: each command was written once.
  expect(valve.writeLog).toHaveLength(steps.length);
}, 30_000);
