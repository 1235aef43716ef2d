import { describe, it } from 'vitest';
import { withheldNote } from '../../src/core/redispatch.js';
import { failFdatasync } from '../helpers/failing-fdatasync.js';
import {
  GUARD_MS,
  leftToTheSweep,
  withheldHarness,
  withheldOnly,
} from '../helpers/withheld-dispatch.js';

/**
 * A stop whose write was withheld (its dispatch could not be made durable, so the write was
 * never sent; src/core/lane.ts, `withheld`) is decided again on a fresh read and written once
 * the journal is back, within its deadline — in the life that withheld it, and after a restart
 * whose history says so, and by the graceful stop (SIGTERM), which gives a stop left to the
 * sweep a worker within its bound; and once more when its re-dispatch is withheld too (a write
 * whose take-up said it was withheld counts for none of those that may have left:
 * src/core/redispatch.ts, writesMaybeSent). Taken up by readback, as a write of unknown
 * outcome, it waited for a write that never was: with the valve set travelling by another
 * master, nothing could prove it not applied, the stop was never written, and the valve
 * travelled on to the end of its stroke while the operator believed a stop pending (SPEC §2: a
 * stop is dispatched at once).
 * The real pipeline and SQLite journal against sluice-sim; ground truth: the simulator's write
 * log and state, and the journal.
 *
 * The one double is the failing fdatasync of withheld-dispatch.ts (a disk's EIO, which no real
 * part here produces on demand): it makes the stop's dispatch barrier fail once (and, in one
 * case, its re-dispatch's too).
 */

/** Another master's open: the valve travels (a stroke of 10 s), no command of ours holding it. */
const OTHER_MASTER_OPEN = { code: 1, setpoint: 0, seq: 60_001 } as const;

// One at a time: the fdatasync double is the process's.
describe('a stop whose write was withheld, the valve travelling by another master', () => {
  it('in the life that withheld it: decided again and written once the journal is back; the valve stops', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished, { travelMs: 10_000 });
    const valve = h.device('v1');
    valve.receiveWrite(OTHER_MASTER_OPEN);
    await h.travelledTo('v1', 5);
    const s = await withheldOnly(h, onTestFinished, { key: 's', action: 'stop' }, 'answered');
    const settled = await h.settled('s', 3 * GUARD_MS);
    expect({ state: settled.state, code: settled.code, attempts: settled.attempts }).toEqual({
      state: 'confirmed',
      code: 'OK',
      attempts: 2,
    });
    // Ground truth: the other master's open, then the stop, once; the valve rests mid-stroke.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([OTHER_MASTER_OPEN.seq, s.seq]);
    expect(valve.snapshot().state).toBe('STOPPED');
    expect(valve.snapshot().position).toBeLessThan(60);
    expect(h.notes('s')).toContain(
      `dispatched: ${withheldNote(s.seq!, true, 'decided again', 'stop')}`,
    );
  });

  it('left to the sweep when the graceful stop comes: written within the shutdown bound; the valve stops', async ({
    expect,
    onTestFinished,
  }) => {
    // A sweep far apart: the stop, left open by its worker, waits for it.
    const h = await withheldHarness(onTestFinished, { travelMs: 10_000, sweepMs: 600_000 });
    const valve = h.device('v1');
    valve.receiveWrite(OTHER_MASTER_OPEN);
    await h.travelledTo('v1', 5);
    const s = await withheldOnly(h, onTestFinished, { key: 's', action: 'stop' }, 'answered');
    await leftToTheSweep(h, 's');
    // The journal back: a barrier waits for its recovery from the failed flush (a second later).
    await h.journal.durable();
    expect(h.get('s')?.state).toBe('dispatched');
    await h.pipeline.stop(10_000);
    expect(h.get('s')).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(valve.writeLog.map((w) => w.seq)).toEqual([OTHER_MASTER_OPEN.seq, s.seq]);
    expect(valve.snapshot().state).toBe('STOPPED');
  });

  it('withheld again at its re-dispatch: decided again once more and written; the valve stops', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished, { travelMs: 10_000 });
    const valve = h.device('v1');
    valve.receiveWrite(OTHER_MASTER_OPEN);
    await h.travelledTo('v1', 5);
    const s = await withheldOnly(h, onTestFinished, { key: 's', action: 'stop' }, 'answered');
    // Its take-up's fresh read held, so that the flush that fails next is its re-dispatch's.
    valve.setFault({ kind: 'stall', on: 'read', count: 1 });
    await h.until(
      () =>
        h.notes('s').includes(`dispatched: ${withheldNote(s.seq!, true, 'decided again', 'stop')}`),
      5_000,
      'the take-up of the withheld stop',
    );
    await h.until(
      () => !valve.faults().some((f) => f.kind === 'stall' && (f.remaining ?? 1) > 0),
      5_000,
      'the fresh read held',
    );
    await h.journal.durable();
    const again = failFdatasync(1);
    onTestFinished(() => {
      again.restore();
    });
    valve.clearFault('stall');
    await h.until(() => again.failures === 1, 5_000, 'the failed flush of the re-dispatch');
    // Neither write left the gateway: the next take-up decides it again (a third dispatch),
    // where it counted the first as one that may have left and settled the stop by readback,
    // never written while the valve travelled on.
    const settled = await h.settled('s', 3 * GUARD_MS);
    expect({ state: settled.state, code: settled.code, attempts: settled.attempts }).toEqual({
      state: 'confirmed',
      code: 'OK',
      attempts: 3,
    });
    // Ground truth: the other master's open, then the stop, once; the valve rests mid-stroke.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([OTHER_MASTER_OPEN.seq, s.seq]);
    expect(valve.snapshot().state).toBe('STOPPED');
    expect(valve.snapshot().position).toBeLessThan(60);
  });

  it('after a restart, its take-up having said so: the next life decides it again and writes it', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await withheldHarness(onTestFinished, { travelMs: 10_000 });
    const valve = h.device('v1');
    valve.receiveWrite(OTHER_MASTER_OPEN);
    await h.travelledTo('v1', 5);
    // The valve drops its reads from the failed flush on: the take-up gets no readback, and the
    // process dies once its history says the write was never sent.
    const s = await withheldOnly(h, onTestFinished, { key: 's', action: 'stop' }, 'dropped');
    await h.until(
      () => h.notes('s').some((n) => n.includes('never sent by this process')),
      5_000,
      'the take-up of the withheld stop',
    );
    await h.journal.durable();
    await h.crash();
    expect(valve.writesWithSeq(s.seq!)).toBe(0);
    valve.clearFault('drop');
    await h.restart();
    const settled = await h.settled('s', 3 * GUARD_MS);
    expect({ state: settled.state, code: settled.code }).toEqual({
      state: 'confirmed',
      code: 'OK',
    });
    expect(valve.writeLog.map((w) => w.seq)).toEqual([OTHER_MASTER_OPEN.seq, s.seq]);
    expect(valve.snapshot().state).toBe('STOPPED');
    expect(valve.snapshot().position).toBeLessThan(100);
  });
});
