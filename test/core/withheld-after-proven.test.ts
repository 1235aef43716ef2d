import { describe, it } from 'vitest';
import { withheldNote } from '../../src/core/redispatch.js';
import { failFdatasync } from '../helpers/failing-fdatasync.js';
import { linkedHarness, refusedUnsent } from '../helpers/linked-harness.js';

/**
 * An open whose first write was lost and proven not applied, whose write sent once more found
 * no connection, goes round again (execution.ts, goRoundAgain) — and its third dispatch is
 * withheld: its barrier fails, so that write is never sent. Of its writes only the first may
 * have left the gateway, and it can no longer land: taken up once the journal is back, the open
 * goes round again as on the live path, decided on a fresh read and written, the second write
 * that may leave the gateway (I1). It was settled by readback, which counted the withheld write
 * as one that may have left: "it was already dispatched twice, so it is not sent again", failed
 * DEVICE_UNREACHABLE with most of its deadline left, never written.
 *
 * The real pipeline, SQLite journal and Modbus driver against sluice-sim, reached through a TCP
 * link. The first write is lost by the simulator's own fault (a connection reset before the
 * write reaches the PLC). Two doubles, for faults the simulator cannot make: the link refused
 * as the second write is handed to the driver (a drop timed to that instant; the refusal of the
 * write is the real driver's, finding no connection), and the failing fdatasync of
 * failing-fdatasync.ts (a disk's EIO) for the third dispatch's barrier. Ground truth: the
 * simulator's write log and state, and the journal.
 */

// One at a time: the fdatasync double is the process's.
describe('an open proven not applied, its second write refused unsent, its third dispatch withheld', () => {
  it('goes round again at its take-up: written once, confirmed OPEN, not "already dispatched twice"', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, ...linked } = await linkedHarness(onTestFinished);
    const valve = h.device('v1');
    let handed = 0;
    linked.interceptWrites(async (command, signal, write) => {
      if (command.action !== 'open') return write(command, signal);
      handed++;
      if (handed === 1) {
        valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
        return write(command, signal);
      }
      if (handed === 2) await linked.refuseLink();
      return write(command, signal);
    });
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await refusedUnsent(h, 'o', "o's second write refused for want of a connection");
    // Its round waits for the link: what is journaled is on disk, and the next barrier (the
    // third dispatch's) fails.
    await h.journal.durable();
    const disk = failFdatasync(1);
    onTestFinished(() => {
      disk.restore();
    });
    await link.accept();
    await h.until(() => disk.failures === 1, 10_000, 'the third dispatch’s barrier failed');
    const o = await h.settled('o', 20_000);
    const notes = h.notes('o');
    expect(o, notes.join('\n')).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 4 });
    expect(h.get('o')!.seq).toBe(o.seq);
    expect(notes).toContain(`dispatched: ${withheldNote(o.seq!, true, { proven: 1 })}`);
    expect(notes.join('\n')).not.toContain('already dispatched twice');
    // Ground truth: the first write never reached the PLC (reset before it), the second and
    // third never left the gateway; the fourth is the valve's one write.
    expect(handed).toBe(3);
    expect(valve.writeLog.map((w) => w.seq)).toEqual([o.seq]);
    await h.until(() => valve.snapshot().state === 'OPEN', 5_000, 'v1 open');
  }, 60_000);
});
