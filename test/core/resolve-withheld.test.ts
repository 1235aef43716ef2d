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
 * An operator resolves a command whose write this process withheld (its dispatch could not be
 * made durable, so the write was never sent; src/core/lane.ts, `withheld`). Nothing of that write
 * can reach the controller: the resolve says so, and the device's next command does not wait
 * for it (src/core/previous-write.ts), in this life or after a restart. A write of the command
 * that was handed to the driver since (its take-up dispatched it again) may still land, and the
 * next command waits for it as before. The real pipeline and journal against sluice-sim; the
 * simulator's write log says what reached the controller, the journal what was decided when.
 */

function resolve(h: SimHarness, key: string): CommandRecord {
  return h.pipeline.resolve({ scope: 'plant', key }, 'ops@test', 'checked on site');
}

/** Milliseconds from the command's acceptance to its dispatch, by its history. */
function acceptedToDispatched(h: SimHarness, key: string): number {
  const history = h.journal.history({ scope: 'plant', key });
  const accepted = history.find((e) => e.to === 'accepted');
  const dispatched = history.find((e) => e.from === 'accepted' && e.to === 'dispatched');
  if (accepted === undefined || dispatched === undefined) {
    throw new Error(`${key}: no acceptance or no dispatch in its history`);
  }
  return dispatched.at - accepted.at;
}

/**
 * Ground truth after the withheld open `a` was resolved: its resolve says its write was never
 * sent; the next open `b` is decided at once (not after a wait for `a`'s write, which its history
 * would name) and is the only write that ever reached the controller.
 */
async function nextNotHeld(h: SimHarness, a: CommandRecord, expect: ExpectStatic): Promise<void> {
  const valve = h.device('v1');
  h.submit('b', { device: 'v1', action: 'open', ttlMs: 20_000 });
  const b = await h.settled('b', 4 * GUARD_MS);
  expect(b).toMatchObject({ state: 'confirmed', code: 'OK' });
  expect(h.notes('b').filter((n) => n.includes('not decided yet'))).toEqual([]);
  expect(acceptedToDispatched(h, 'b')).toBeLessThan(GUARD_MS / 2);
  expect(valve.writesWithSeq(a.seq!)).toBe(0);
  expect(valve.writeLog.map((w) => w.seq)).toEqual([b.seq]);
  const resolved = h.get('a')!;
  expect(resolved).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
  expect(resolved.detail).toContain(
    `the command's write (sequence number ${a.seq}) was never sent`,
  );
  expect(resolved.detail).not.toContain('may have been applied');
}

// One at a time: the fdatasync double is the process's.
describe('an operator resolves a command whose write this process withheld', () => {
  it('after its take-up: the resolve says the write was never sent, and the next command does not wait for it', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished);
    // Its reads dropped: the take-up waits for a fresh read to decide the open again, unwritten;
    // the operator resolves it meanwhile.
    const a = await withheldAndTakenUp(h, onTestFinished, OPEN, 'dropped');
    resolve(h, 'a');
    h.device('v1').clearFault('drop');
    await nextNotHeld(h, a, expect);
  });

  it('before its take-up, then a restart: the next command of the new life does not wait for it', async ({
    expect,
    onTestFinished,
  }) => {
    // A sweep far apart: the open, left open by its worker, is not taken up before the resolve.
    const h = await withheldHarness(onTestFinished, { sweepMs: 600_000 });
    const a = await withheldOnly(h, onTestFinished, OPEN, 'answered');
    await leftToTheSweep(h, 'a');
    expect(h.notes('a').filter((n) => n.includes('taken up'))).toEqual([]);
    resolve(h, 'a');
    await h.journal.durable();
    // The next life knows of the open's write only what the journal says.
    await h.crash();
    await h.restart();
    await nextNotHeld(h, a, expect);
  });

  it('after its take-up, then a restart: the next command of the new life does not wait for it', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished);
    const a = await withheldAndTakenUp(h, onTestFinished, OPEN, 'dropped');
    resolve(h, 'a');
    await h.journal.durable();
    await h.crash();
    h.device('v1').clearFault('drop');
    await h.restart();
    await nextNotHeld(h, a, expect);
  });

  it('dispatched a second time by its take-up, that write sent and its answer lost: the resolve says it may have been applied, and the next command waits for it', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished);
    const valve = h.device('v1');
    const a = await withheldAndTakenUp(h, onTestFinished, OPEN, 'dropped');
    // The take-up decides the open again on a fresh read and dispatches it a second time; that
    // write is held on the PLC's link, its answer lost.
    await redispatchedAnswerLost(h, GUARD_MS);
    const resolved = resolve(h, 'a');
    expect(resolved.detail).toContain(
      `the outcome of the command's write (sequence number ${a.seq}) is unknown: it may have been applied`,
    );
    // An open at CLOSED would be written: decided on the image without the first open, the
    // controller would take that one after it. It waits for the first open's write.
    h.submit('b', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await h.until(
      () => h.notes('b').some((n) => n.includes('not decided yet')),
      5_000,
      'the second open waiting for the first',
    );
    expect(h.get('b')?.state).toBe('accepted');
    // The held write reaches the controller now: the valve opens, and the second open is then
    // decided on the image that shows it: a no-op.
    valve.clearFault('stall');
    await h.until(() => valve.writesWithSeq(a.seq!) === 1, 5_000, 'the first open taken');
    const b = await h.settled('b', 4 * GUARD_MS);
    expect(b).toMatchObject({ state: 'confirmed', code: 'OK', seq: null });
    // Ground truth: only the first open reached the controller, once.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq]);
  });
});
