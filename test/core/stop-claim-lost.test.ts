import { afterEach, describe, expect, it } from 'vitest';
import { commitFaults } from '../helpers/commit-faults.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A stop preempts the travel in flight when it is claimed, before its claim's batch commits
 * (src/core/preemption.ts). When that COMMIT fails, the stop was never accepted: its intake is
 * refused (the claim's barrier fails), and the travel it preempted must not be left hanging on
 * it. The batch's loss is a fault no simulator or filesystem can time (an I/O error on exactly
 * that COMMIT, clearing at once): the double of test/helpers/commit-faults.ts. Ground truth: the
 * simulator's write log and live state, and the journal's rows.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/**
 * An open travelling (at 20 %), then a stop `s1` claimed in a batch whose COMMIT fails: the stop
 * has preempted the open, and was never accepted.
 */
async function stopLostWhileOpening() {
  h = await SimHarness.start({ travelMs: 1_500, timing: { confirmTimeoutMs: 5_000 } });
  const valve = h.device('v1');
  const faults = commitFaults(h.journal);
  h.submit('a', { device: 'v1', action: 'open' });
  await h.until(() => valve.snapshot().position >= 20, 10_000, 'v1 at 20 %');
  faults.failNext();
  h.submit('s1', { device: 'v1', action: 'stop' });
  return { sim: h, valve, faults };
}

describe('a stop whose claim is lost with its batch', () => {
  it('a stop pressed again takes its place: the travel is stopped, the preempted open interrupted, nothing left open', async () => {
    const { sim, valve, faults } = await stopLostWhileOpening();
    await sim.until(
      () => faults.failed === 1 && sim.journal.get({ scope: 'plant', key: 's1' }) === undefined,
      5_000,
      'the batch holding the first stop lost',
    );
    expect(valve.snapshot().state).toBe('OPENING');
    sim.submit('s2', { device: 'v1', action: 'stop' });
    const [a, s2] = [await sim.settled('a'), await sim.settled('s2')];
    expect(s2).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(s2.observed?.state).toBe('STOPPED');
    expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
    expect(a.detail).toMatch(/^stopped by s2 at \d+(\.\d)? %/);
    expect(sim.journal.listOpen()).toEqual([]);
    // The open, then the second stop while it travelled; the lost stop was never written.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, s2.seq]);
    expect(valve.snapshot().published.state).toBe('STOPPED');
  }, 30_000);

  it('with no other stop, the preempted open is taken up again and ends by its readbacks', async () => {
    const { sim, valve, faults } = await stopLostWhileOpening();
    const a = await sim.settled('a');
    expect(faults.failed).toBe(1);
    expect(sim.journal.get({ scope: 'plant', key: 's1' })).toBeUndefined();
    expect(a).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 1 });
    expect(sim.journal.listOpen()).toEqual([]);
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq]);
    expect(valve.snapshot().published.state).toBe('OPEN');
  }, 30_000);

  it('a command the lost stop superseded is superseded by the next stop, never written after it', async () => {
    h = await SimHarness.start({ travelMs: 1_500, timing: { confirmTimeoutMs: 5_000 } });
    const sim = h;
    const valve = sim.device('v1');
    const faults = commitFaults(sim.journal);
    sim.submit('a', { device: 'v1', action: 'open' });
    sim.submit('b', { device: 'v1', action: 'close' });
    await sim.until(() => valve.snapshot().position >= 20, 10_000, 'v1 at 20 %');
    // s1 takes b off the queue and journals it SUPERSEDED, in the batch that is lost: b is
    // `accepted` on disk again, and nothing holds it until the sweep (every 100 ms here) —
    // the second stop comes first, within a turn of the event loop of the loss.
    faults.failNext();
    sim.submit('s1', { device: 'v1', action: 'stop' });
    const start = Date.now();
    while (faults.failed === 0 && Date.now() - start < 5_000) {
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(sim.journal.get({ scope: 'plant', key: 's1' })).toBeUndefined();
    expect(sim.journal.get({ scope: 'plant', key: 'b' })?.state).toBe('accepted');
    sim.submit('s2', { device: 'v1', action: 'stop' });
    const [a, b, s2] = [await sim.settled('a'), await sim.settled('b'), await sim.settled('s2')];
    // b was accepted before s2 and never written: superseded by it (SPEC §2), not run after it.
    expect(b).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
    expect(b.detail).toMatch(/^superseded by the stop s2/);
    expect(s2).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, s2.seq]);
    expect(valve.snapshot().published.state).toBe('STOPPED');
    expect(sim.journal.listOpen()).toEqual([]);
  }, 30_000);
});
