import { describe, it, type ExpectStatic } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import type { SimHarness } from '../helpers/sim-harness.js';
import {
  GUARD_MS,
  OPEN,
  leftToTheSweep,
  redispatchedAnswerLost,
  withheldAndTakenUp,
  withheldHarness,
  withheldOnly,
} from '../helpers/withheld-dispatch.js';

/**
 * A stop that preempts a command whose write was withheld (its dispatch could not be made
 * durable, so the write was never sent; src/core/lane.ts, `withheld`) does not wait the
 * redispatch guard for that write: nothing of it can reach the controller after the stop. The
 * real pipeline and journal against sluice-sim; the simulator's write log says what reached
 * the controller, the stop's history when it was dispatched and confirmed.
 */

/** Milliseconds from the stop's dispatch to its confirmation, by its history. */
/**
 * Ground truth when stop `s` went before the withheld open `a`: the open never reached the
 * controller, the stop did, once; nothing could land after the stop, so it was confirmed at its
 * readback, not past the guard; the open, taken up after it, was never written, and ends
 * superseded by the stop (SPEC §2).
 */
async function stopWentFirst(h: SimHarness, a: CommandRecord, expect: ExpectStatic): Promise<void> {
  const valve = h.device('v1');
  const s = await h.settled('s', 3 * GUARD_MS);
  expect(s.state).toBe('confirmed');
  expect(valve.writesWithSeq(a.seq!)).toBe(0);
  expect(valve.writeLog.map((w) => w.seq)).toEqual([s.seq]);
  expect(dispatchToConfirmed(h, 's')).toBeLessThan(GUARD_MS / 2);
  const after = await h.settled('a', 3 * GUARD_MS);
  expect(after).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', attempts: 1 });
  expect(valve.writesWithSeq(a.seq!)).toBe(0);
}

function dispatchToConfirmed(h: SimHarness, key: string): number {
  const history = h.journal.history({ scope: 'plant', key });
  const dispatched = history.find((e) => e.from === 'accepted' && e.to === 'dispatched');
  const confirmed = history.find((e) => e.to === 'confirmed');
  if (dispatched === undefined || confirmed === undefined) {
    throw new Error(`${key}: no dispatch or no confirmation in its history`);
  }
  return confirmed.at - dispatched.at;
}

// One at a time: the fdatasync double is the process's.
describe('a stop that preempts a command whose write was withheld', () => {
  it('in the life that withheld it, while its take-up reads: the stop is confirmed without the guard', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished);
    // Its reads dropped: the take-up waits for a fresh read to decide the open again, unwritten;
    // the stop comes meanwhile and goes first.
    const a = await withheldAndTakenUp(h, onTestFinished, OPEN, 'dropped');
    h.submit('s', { device: 'v1', action: 'stop' });
    h.device('v1').clearFault('drop');
    await stopWentFirst(h, a, expect);
  });

  it('in the life that withheld it, before its take-up (its history says nothing of it yet): the stop is confirmed without the guard', async ({
    expect,
    onTestFinished,
  }) => {
    // A sweep far apart: the open, left open by its worker, waits for it (the daemon's period is
    // a second; the window is the same, only wider).
    const h = await withheldHarness(onTestFinished, { sweepMs: 600_000 });
    const a = await withheldOnly(h, onTestFinished, OPEN, 'answered');
    await leftToTheSweep(h, 'a');
    expect(h.get('a')?.state).toBe('dispatched');
    expect(h.notes('a').filter((n) => n.includes('taken up'))).toEqual([]);
    // Nothing of the open can reach the controller: its write never left the process.
    h.submit('s', { device: 'v1', action: 'stop' });
    await stopWentFirst(h, a, expect);
  });

  it('dispatched a second time by its take-up, that write sent and its answer lost: a stop waits for it, and says so when it lands after the stop', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished);
    const valve = h.device('v1');
    const a = await withheldAndTakenUp(h, onTestFinished, OPEN, 'dropped');
    // The take-up decides the open again on a fresh read and dispatches it a second time; that
    // write is held on the PLC's link, its answer lost.
    await redispatchedAnswerLost(h, GUARD_MS);
    // That write may reach the controller yet: the stop is written, and waits for it.
    h.submit('s', { device: 'v1', action: 'stop' });
    await h.until(() => h.get('s')?.seq != null, 5_000, 'the stop dispatched');
    const stopSeq = h.get('s')!.seq!;
    await h.until(() => valve.snapshot().seqEcho === stopSeq, 5_000, 'the stop taken');
    // The held write reaches the controller now, after the stop: the valve opens.
    valve.clearFault('stall');
    await h.until(() => valve.writesWithSeq(a.seq!) === 1, 5_000, 'the open taken after the stop');
    const s = await h.settled('s', 3 * GUARD_MS);
    // Ground truth: the stop reached the controller first, the open after it (each once); the
    // stop is not confirmed, the valve having opened after it.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([stopSeq, a.seq]);
    expect(s).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH' });
    expect(s.detail).toContain(`the write of a (sequence number ${a.seq})`);
    const after = await h.settled('a', 3 * GUARD_MS);
    expect(after.attempts).toBe(2);
    expect(valve.writesWithSeq(a.seq!)).toBe(1);
  });

  it('after a restart, its take-up having said so: the stop that goes first is confirmed without the guard', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished);
    const valve = h.device('v1');
    // The take-up sees no readback, and a stop is accepted just before the process dies.
    const a = await withheldAndTakenUp(h, onTestFinished, OPEN, 'dropped');
    h.submit('s', { device: 'v1', action: 'stop' });
    // On disk before the crash, as an intake or the admin endpoint answers only then
    // (a crash loses the batch still open).
    await h.journal.durable();
    await h.crash();
    valve.clearFault('drop');
    // The next life finds the open dispatched and the stop accepted: the stop preempts the open
    // at the start, which knows of the open's write only what the history says.
    await h.restart();
    await stopWentFirst(h, a, expect);
  });

  it('a stop pressed again while the first, withheld, waits for its take-up and the valve travels: the second is confirmed without the guard', async ({
    expect,
    onTestFinished,
  }) => {
    // A stroke of 10 s: the open travels all through. A sweep far apart: the first stop, left
    // open by its worker, waits for it (taken up, a stop withheld is written at once:
    // stop-withheld-redecided.test.ts).
    const h = await withheldHarness(onTestFinished, { travelMs: 10_000, sweepMs: 600_000 });
    const valve = h.device('v1');
    h.submit('a', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await h.until(() => valve.snapshot().position >= 5, 5_000, 'the open travelling');
    const a = h.get('a')!;
    // The first stop preempts the open, and its own write is withheld: the valve travels on.
    const s1 = await withheldOnly(h, onTestFinished, { key: 's1', action: 'stop' }, 'answered');
    await leftToTheSweep(h, 's1');
    // Pressed again: the second stop goes first (preemption.ts, stopOvertakes).
    h.submit('s2', { device: 'v1', action: 'stop' });
    const s2 = await h.settled('s2', 3 * GUARD_MS);
    expect(s2.state).toBe('confirmed');
    // Ground truth: the open and the second stop reached the controller, the first stop never.
    expect(valve.writesWithSeq(s1.seq!)).toBe(0);
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, s2.seq]);
    expect(valve.snapshot().state).toBe('STOPPED');
    expect(dispatchToConfirmed(h, 's2')).toBeLessThan(GUARD_MS / 2);
    await h.settled('s1', 3 * GUARD_MS);
    await h.settled('a', 3 * GUARD_MS);
    expect(valve.writesWithSeq(s1.seq!)).toBe(0);
    expect(valve.writesWithSeq(a.seq!)).toBe(1);
  });

  it('accepted while the end of its handling is being made durable: the stop goes first, not behind its take-up', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished);
    const valve = h.device('v1');
    await withheldOnly(h, onTestFinished, OPEN, 'answered');
    // The open's write is withheld, and its handling has returned; its worker waits for the
    // journal to recover (a second) before it moves on, and the stop is accepted meanwhile.
    await h.until(
      () => h.pipeline.devices().find((d) => d.id === 'v1')?.inFlight === null,
      5_000,
      "the open's handling returned",
    );
    expect(h.get('a')?.state).toBe('dispatched');
    h.submit('s', { device: 'v1', action: 'stop' });
    // Ground truth: the stop reaches the controller while the open is still open — not once the
    // open's take-up has read until its deadline (20 s) — and the open never does.
    await h.until(() => h.get('s')?.seq != null, 5_000, 'the stop dispatched');
    const stopSeq = h.get('s')!.seq!;
    await h.until(() => valve.writesWithSeq(stopSeq) === 1, 3_000, 'the stop written');
    expect(h.get('a')?.state).toBe('dispatched');
    const s = await h.settled('s', 3 * GUARD_MS);
    expect(s.state).toBe('confirmed');
    const a = await h.settled('a', 3 * GUARD_MS);
    expect(valve.writesWithSeq(a.seq!)).toBe(0);
    expect(valve.writeLog.map((w) => w.seq)).toEqual([s.seq]);
    expect(a.attempts).toBe(1);
  });
});
