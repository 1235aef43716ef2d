import { afterEach, describe, expect, it } from 'vitest';
import { commitFaults } from '../helpers/commit-faults.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A command taken up by readback in the life that received it reads until its deadline when
 * that is the longest of its take-up's bounds (src/core/take-up.ts): the time left is measured
 * on the monotonic clock (ExecutionHost.deadlineNow), a fraction of a millisecond. The window's
 * end then said it as it came: READBACK_TIMEOUT "not confirmed within 18655.654296875 ms". Every
 * duration an operator reads is whole milliseconds; the window is now one.
 *
 * sluice-sim, the real pipeline and SQLite journal. One double: the stop's claim lost with its
 * batch at its COMMIT (test/helpers/commit-faults.ts), a fault no simulator or filesystem can
 * time, so that the open it preempted is taken up again by readback while its valve travels on.
 * Ground truth: the journaled detail, the simulator's write log and its valve still travelling.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('a take-up by readback whose window is the time to the deadline', () => {
  it('ends READBACK_TIMEOUT saying the window in whole milliseconds', async () => {
    // A stroke far longer than the open's deadline: the open is never confirmed.
    h = await SimHarness.start({ travelMs: 60_000 });
    const sim = h;
    const valve = sim.device('v1');
    const faults = commitFaults(sim.journal);
    // Its deadline 6 s away: at its take-up, longer than the confirm timeout (2 s), the grace
    // (1 s) and the reach past the guard.
    sim.submit('a', { device: 'v1', action: 'open', ttlMs: 6_000 });
    await sim.until(() => valve.snapshot().state === 'OPENING', 5_000, 'v1 opening');
    faults.failNext();
    sim.submit('s1', { device: 'v1', action: 'stop' });
    const a = await sim.settled('a', 15_000);
    expect(faults.failed).toBe(1);
    expect(a, sim.notes('a').join('\n')).toMatchObject({
      state: 'failed',
      code: 'READBACK_TIMEOUT',
      attempts: 1,
    });
    expect(sim.notes('a').some((n) => n.includes('taken up again'))).toBe(true);
    const m = /^not confirmed within (\S+) ms: travelling \(OPENING\)/.exec(a.detail ?? '');
    expect(m, a.detail ?? '').not.toBeNull();
    // Before: "not confirmed within 5906.84130859375 ms".
    expect(m![1]).toMatch(/^\d+$/);
    // The time to the deadline from the take-up, not one of the shorter bounds.
    expect(Number(m![1])).toBeGreaterThan(2_000);
    expect(Number(m![1])).toBeLessThanOrEqual(6_000);
    // Ground truth: the open written once, the valve still on its way.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq]);
    expect(valve.snapshot().state).toBe('OPENING');
  }, 30_000);
});
