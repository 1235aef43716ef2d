import { afterEach, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * SPEC §2 across a crash: a stop and the command it preempts, left by a life that died, are
 * taken up by the next one. On the real parts (the pipeline with the real drivers against
 * sluice-sim, a real journal, a SIGKILL-like crash and a restart on the same journal file): the
 * stop still goes first, the command it interrupts ends `failed` `INTERRUPTED` and is never
 * written again, a command it found not yet written is never written. Ground truth: the
 * simulator's write log and live state. The stop's cases within one life are in stop.test.ts.
 *
 * A restarted daemon proves an earlier life's in-doubt write not applied no sooner than the
 * confirm timeout from its journal lock (docs/device-profiles.md), so each stop here is
 * confirmed that long after the restart: the profiles' confirm timeouts are kept just above
 * the travel (and above request timeout + guard + request timeout + poll), not what these cases
 * are about.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('stop preempts travel, across a crash', () => {
  it('after a crash between the stop and its outcome, recovery still says INTERRUPTED', async () => {
    h = await SimHarness.start({ travelMs: 1_000, timing: { confirmTimeoutMs: 1_500 } });
    const valve = h.device('v1');
    h.submit('a', { device: 'v1', action: 'open' });
    await h.travelledTo('v1', 30);
    h.submit('s', { device: 'v1', action: 'stop' });
    await h.until(() => valve.counters.writesReceived === 2, 5_000, 'the stop');
    await h.crash();
    await h.restart();
    const [a, s] = [await h.settled('a'), await h.settled('s')];
    expect(s).toMatchObject({ state: 'confirmed' });
    expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
    expect(valve.writesWithSeq(a.seq!)).toBe(1);
    expect(valve.snapshot().state).toBe('STOPPED');
  });

  it('a stop dispatched before the preempted write was taken, then a crash: both judged by readback', async () => {
    h = await SimHarness.start({ travelMs: 1_000, timing: { confirmTimeoutMs: 1_500 } });
    const valve = h.device('v1');
    // The controller is busy: the open arrives but is not taken until the stop, dispatched
    // meanwhile from CLOSED (for the state the open leads to), has arrived behind it, and the
    // daemon has crashed. The hold is cleared then, not after a fixed time (600 ms), which a
    // loaded machine could spend before the stop was written, the open taken first.
    valve.setFault({ kind: 'hold' });
    h.submit('a', { device: 'v1', action: 'open' });
    await h.until(() => valve.counters.writesReceived === 1, 5_000, 'the open');
    h.submit('s', { device: 'v1', action: 'stop' });
    await h.until(() => valve.pendingWrites === 2, 10_000, 'the stop behind the open');
    await h.crash();
    valve.clearFault('hold');
    await h.restart();
    const [a, s] = [await h.settled('a'), await h.settled('s')];
    expect(s).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
    // Taken in arrival order, by one scan: the open, then the stop.
    const log = valve.writeLog;
    expect(log.map((w) => w.seq)).toEqual([a.seq, s.seq]);
    expect(log[1]!.settledAt).toBe(log[0]!.settledAt);
    expect(['STOPPED', 'CLOSED']).toContain(valve.snapshot().state);
  });

  // The second case: the stop's acceptedAt lies before the open's, the wall clock stepped back
  // 1.5 s (NTP, an operator) in between. Recovery and the confirmation go by the journal's
  // order, not by acceptedAt: the stop still goes first, stops the travel, interrupts the open.
  for (const stepBackMs of [0, 1_500]) {
    it(`a stop accepted before a crash and not yet dispatched still goes first after the restart${stepBackMs === 0 ? '' : ', also after the gateway clock stepped back between the open and the stop'}`, async () => {
      let offsetMs = 0;
      const clock = { ...systemClock, now: () => Date.now() + offsetMs };
      h = await SimHarness.start({ travelMs: 2_000, clock, timing: { confirmTimeoutMs: 2_500 } });
      const valve = h.device('v1');
      const opened = h.submit('a', { device: 'v1', action: 'open' }).record;
      await h.travelledTo('v1', 30);
      offsetMs = -stepBackMs;
      // The stop is journaled (an intake would have acknowledged it) and the process dies
      // before the stop's worker wrote anything: the journal holds the open dispatched, the
      // stop accepted.
      const stopped = h.submit('s', { device: 'v1', action: 'stop' }).record;
      if (stepBackMs > 0) expect(stopped.acceptedAt).toBeLessThan(opened.acceptedAt);
      // On disk before the crash, as an intake or the admin endpoint answers only then
      // (a crash loses the batch still open).
      await h.journal.durable();
      await h.crash();
      expect(valve.counters.writesReceived).toBe(1);
      await h.restart();
      const [a, s] = [await h.settled('a'), await h.settled('s')];
      expect(s).toMatchObject({ state: 'confirmed' });
      expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
      // Ground truth: the stop was written while the valve travelled, and the open only once.
      expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, s.seq]);
      expect(valve.snapshot().state).toBe('STOPPED');
      expect(valve.snapshot().position).toBeLessThan(90);
    });
  }

  // A second stop behind a first whose outcome is unknown (stop.test.ts), across a crash: the
  // first stop's write was answered 0x04 (not applied), the second
  // stop was accepted, and the process died before it ran. Recovery took the first stop up
  // first, reading back until its deadline (30 s) while the valve opened to the end, and the
  // second came after it, a no-op in OPEN. Now the second goes first.
  it('a second stop accepted behind a first whose outcome is unknown, then a crash: the second goes first after the restart', async () => {
    h = await SimHarness.start({ travelMs: 6_000, timing: { confirmTimeoutMs: 2_000 } });
    const valve = h.device('v1');
    const plc = h.plant.plc('mb');
    const a = h.submit('a', { device: 'v1', action: 'open' }).record;
    await h.travelledTo('v1', 20);
    plc.setFault({ kind: 'exception', code: 4, on: 'write', count: 1 });
    h.submit('s1', { device: 'v1', action: 'stop' });
    await h.until(
      () => plc.faults().length === 0 && valve.snapshot().position >= 25,
      5_000,
      'the first stop refused, the valve still opening',
    );
    h.submit('s2', { device: 'v1', action: 'stop' });
    // On disk before the crash, as an intake or the admin endpoint answers only then
    // (a crash loses the batch still open).
    await h.journal.durable();
    await h.crash();
    expect(valve.writeLog).toHaveLength(1);
    await h.restart();
    const restartedMono = performance.now();
    const at = valve.snapshot().position;
    await h.until(() => valve.writeLog.length === 2, 5_000, 'the second stop written');
    expect(performance.now() - restartedMono).toBeLessThan(1_000);
    const [s2, s1, opened] = [await h.settled('s2'), await h.settled('s1'), await h.settled('a')];
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq ?? opened.seq, s2.seq]);
    expect(valve.snapshot().state).toBe('STOPPED');
    expect(valve.snapshot().position).toBeLessThan(at + 10);
    expect(s2).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(s2.observed).toMatchObject({ state: 'STOPPED', seq: s2.seq });
    expect(s1).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
    expect(s1.detail).toMatch(/^stopped by s2 at/);
    expect(valve.writesWithSeq(s1.seq!)).toBe(0);
    expect(opened).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
    expect(opened.detail).toMatch(/^stopped by s2 at/);
  });

  it('a command a stop found not yet written is never written after a crash before its rejection', async () => {
    h = await SimHarness.start({ requestTimeoutMs: 1_000, timing: { redispatchGuardMs: 1_200 } });
    const valve = h.device('v1');
    // Reads take 300 ms: the open is still reading its device when the stop comes, and the
    // process dies before the open's worker comes back to journal it superseded.
    h.plant.plc('mb').setFault({ kind: 'latency', ms: 300, on: 'read' });
    h.submit('a', { device: 'v1', action: 'open' });
    h.submit('s', { device: 'v1', action: 'stop' });
    // On disk before the crash, as an intake or the admin endpoint answers only then
    // (a crash loses the batch still open).
    await h.journal.durable();
    await h.crash();
    h.plant.plc('mb').clearFault('latency');
    await h.restart();
    const [a, s] = [await h.settled('a'), await h.settled('s')];
    expect(a).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
    expect(a.detail).toMatch(/superseded by the stop s/);
    expect(s).toMatchObject({ state: 'confirmed' });
    expect(valve.counters.writesReceived).toBe(0);
  });
});
