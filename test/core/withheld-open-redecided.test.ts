import { describe, it } from 'vitest';
import { withheldNote } from '../../src/core/redispatch.js';
import { GUARD_MS, OPEN, withheldHarness, withheldOnly } from '../helpers/withheld-dispatch.js';

/**
 * An open whose write was withheld (its dispatch could not be made durable, so the write was
 * never sent; src/core/lane.ts, `withheld`) is decided again on a fresh read and written once
 * the journal is back, as a write withdrawn unsent is (src/core/execution.ts, writeWithheld).
 * Taken up by readback, as a write of unknown outcome, it waited for a write that never was: a
 * readback proves a write not applied only while the device rests as it was, so with the valve
 * moved meanwhile by another master the open ended READBACK_TIMEOUT "whether the write was
 * applied is unknown", though this process knew it had sent nothing, and the valve was never
 * opened. The real pipeline and SQLite journal against sluice-sim; ground truth: the
 * simulator's write log and state, and the journal.
 *
 * The one double is the failing fdatasync of withheld-dispatch.ts (a disk's EIO, which no real
 * part here produces on demand): it makes the open's dispatch barrier fail once.
 */

/** Another master's commands: an open, then a stop a little way into the stroke. */
const OTHER_MASTER = {
  open: { code: 1, setpoint: 0, seq: 60_001 },
  stop: { code: 3, setpoint: 0, seq: 60_002 },
} as const;

// One at a time: the fdatasync double is the process's.
describe('an open whose write was withheld, the valve moved by another master before its take-up', () => {
  it('is decided again on a fresh read and written once: confirmed OPEN, not "unknown"', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished, { travelMs: 2_000 });
    const valve = h.device('v1');
    // Decided at CLOSED, its write withheld; its take-up's reads dropped until the other
    // master has moved the valve.
    const a = await withheldOnly(h, onTestFinished, OPEN, 'dropped');
    valve.receiveWrite(OTHER_MASTER.open);
    await h.travelledTo('v1', 5);
    valve.receiveWrite(OTHER_MASTER.stop);
    await h.until(() => valve.snapshot().state === 'STOPPED', 5_000, 'the valve stopped');
    valve.clearFault('drop');
    const settled = await h.settled('a', 3 * GUARD_MS);
    expect(
      { state: settled.state, code: settled.code, attempts: settled.attempts },
      h.notes('a').join('\n'),
    ).toEqual({ state: 'confirmed', code: 'OK', attempts: 2 });
    // Ground truth: the other master's two writes, then the open, once; the valve open.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([
      OTHER_MASTER.open.seq,
      OTHER_MASTER.stop.seq,
      a.seq,
    ]);
    expect(valve.snapshot().state).toBe('OPEN');
    const notes = h.notes('a');
    expect(notes).toContain(`dispatched: ${withheldNote(a.seq!, true, 'decided again')}`);
    expect(notes.join('\n')).not.toContain('unknown');
  });
});
