import { describe, it } from 'vitest';
import { JournalUnavailableError } from '../../src/core/errors.js';
import { lastDispatchFaults, type ReadFaults } from '../helpers/read-faults.js';
import { SimHarness } from '../helpers/sim-harness.js';
import {
  closeWaitsForHeldOpen,
  GUARD_MS,
  heldAcknowledgedOpen,
} from '../helpers/withheld-dispatch.js';

/**
 * A start whose journal cannot read a device's last dispatch (Journal.lastDispatched): what the
 * late-echo watch is taken up from (late-echo.ts) and what the device's last write an earlier
 * life left with its fate open is rebuilt from (previous-write.ts, earlierLastWrite). The start
 * goes on (before: the late-echo step threw, and the whole start failed); and no command is
 * decided without that write (I2): recovery fails closed, every command refused until a run of
 * the sweep has read it (recovery-read-fails.test.ts for recovery's other reads). The real pipeline and SQLite
 * journal against sluice-sim (its `hold`: the controller acknowledges the open an operator then
 * resolved, and takes it only later). The read failure is a double (test/helpers/read-faults.ts):
 * no simulator or filesystem fault can aim at the one statement. Ground truth: the simulator's
 * write log and state, and the journal.
 */

/** v1's open `p`, acknowledged and held by the controller, resolved; then the daemon killed. */
async function heldOpenAcrossRestart(h: SimHarness): Promise<void> {
  await heldAcknowledgedOpen(h, 'p');
  h.pipeline.resolve({ scope: 'plant', key: 'p' }, 'ops@test', 'checked');
  // On disk before the crash, as an intake or the admin endpoint answers only then
  // (a crash loses the batch still open).
  await h.journal.durable();
  await h.crash();
}

async function harness(onTestFinished: (fn: () => Promise<void>) => void): Promise<SimHarness> {
  // Travel 0: the open, once taken, is OPEN at that scan, so the close is a legal write then.
  // The confirm timeout (the bound on the acknowledged open) is far longer than the case takes.
  const h = await SimHarness.start({
    warm: true,
    travelMs: 0,
    timing: { redispatchGuardMs: GUARD_MS, confirmTimeoutMs: 10 * GUARD_MS },
  });
  onTestFinished(() => h.close());
  return h;
}

describe("a start that cannot read a device's last dispatch", () => {
  it("the late-echo step's read alone fails: the start goes on, and the next close waits for the held open", async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    await heldOpenAcrossRestart(h);
    let faults: ReadFaults | undefined;
    // The first read of v1's last dispatch fails (the late-echo step's); the next one is read.
    await h.restart(() => {
      faults = lastDispatchFaults(h.journal, new Set(['v1']), 1);
    });
    expect(faults?.failed).toBe(1);
    await closeWaitsForHeldOpen(h, expect);
  });

  it('every read of it fails for a while: commands are refused until it can be read, then the close waits for the held open', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    const valve = h.device('v1');
    await heldOpenAcrossRestart(h);
    let faults: ReadFaults | undefined;
    // Before: recover() threw "journal unavailable", and the daemon did not start.
    await h.restart(() => {
      faults = lastDispatchFaults(h.journal, new Set(['v1']));
    });
    expect(faults!.failed).toBeGreaterThan(0);
    // Recovery failed closed (pipeline.ts, recoverOpen): a command is refused, nothing claimed,
    // as when the journal cannot be written.
    const close = { device: 'v1', action: 'close', ttlMs: 60_000 } as const;
    expect(() => h.submit('c', close)).toThrow(JournalUnavailableError);
    expect(h.get('c')).toBeUndefined();
    expect(valve.writeLog.map((w) => w.seq)).toEqual([h.get('p')!.seq]);
    // The journal reads again: a run of the sweep makes recovery's reads, and the close is
    // taken; it waits for the held open, and is written once that is taken. Decided without it,
    // the close was confirmed a no-op at CLOSED, and the controller then took the open (I2).
    faults!.armed = false;
    await closeWaitsForHeldOpen(h, expect, (again) =>
      h.until(
        () => {
          try {
            h.submit('c', again);
            return true;
          } catch (error) {
            if (!(error instanceof JournalUnavailableError)) throw error;
            return false;
          }
        },
        5_000,
        'the close taken',
      ),
    );
  });
});
