import { describe, it } from 'vitest';
import { MAX_DISPATCHES } from '../../src/core/journal.js';
import { linkedHarness } from '../helpers/linked-harness.js';

/**
 * The cap on a command's dispatches (MAX_DISPATCHES) meets the one re-dispatch of a write that
 * may have left the gateway (redispatch.ts): a command whose writes found no connection until
 * its last allowed dispatch, and whose last write then went out and was lost. The real
 * pipeline, SQLite journal and Modbus driver against sluice-sim, reached through a TCP link that
 * the test refuses as each write is handed to the driver (the simulator cannot time a link drop
 * to that instant; the refusal itself is the real driver's, finding no connection); the lost
 * write is the simulator's own fault (a connection reset before the write reaches the PLC).
 * Ground truth: the simulator's write counters, and the journal.
 */

describe('a command at its last dispatch whose write is lost and proven not applied', () => {
  it('ends failed DEVICE_UNREACHABLE at once, nothing applied, not left open until its deadline', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, ...linked } = await linkedHarness(onTestFinished);
    const valve = h.device('v1');
    // Every write of the open but its last allowed one finds the link refused (reopened 100 ms
    // later); the last goes out, and the connection is reset before it reaches the PLC.
    let handed = 0;
    linked.interceptWrites(async (command, signal, write) => {
      if (command.action !== 'open') return write(command, signal);
      handed++;
      if (handed === MAX_DISPATCHES) {
        valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
        return write(command, signal);
      }
      await linked.refuseLink();
      try {
        await write(command, signal);
      } finally {
        setTimeout(() => {
          void link.accept();
        }, 100);
      }
    });
    const ttlMs = 20_000;
    h.submit('o', { device: 'v1', action: 'open', ttlMs });
    const o = await h.settled('o', ttlMs + 5_000);
    const notes = h.notes('o');
    expect(handed).toBe(MAX_DISPATCHES);
    // Its last write was proven not applied (its number never echoed past the guard), and the
    // command may not be dispatched again: it ends so, with most of its deadline left. Before the
    // fix the rule allowed the re-dispatch the journal refused at the cap (JournalConflictError):
    // the command was left open, taken up again and again, until its deadline.
    expect(o, notes.join('\n')).toMatchObject({
      state: 'failed',
      code: 'DEVICE_UNREACHABLE',
      attempts: MAX_DISPATCHES,
    });
    expect(o.detail).toMatch(
      new RegExp(
        `^the write never reached the controller: .*dispatched ${MAX_DISPATCHES} times.*nothing was applied$`,
      ),
    );
    expect(o.settledAt!).toBeLessThan(o.deadline - 10_000);
    // Ground truth: nothing of it reached the valve.
    expect(valve.writesOfSeq(o.seq!)).toHaveLength(0);
    expect(valve.counters.writesReceived).toBe(0);
  }, 60_000);
});
