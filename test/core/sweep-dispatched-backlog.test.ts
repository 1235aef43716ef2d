import { describe, it } from 'vitest';
import type { Lane } from '../../src/core/lane.js';
import { SWEEP_PAGE_ROWS } from '../../src/core/sweep.js';
import { countRowsRead } from '../helpers/journal-rows.js';
import { SimHarness } from '../helpers/sim-harness.js';
import { insertOpenCommands } from '../helpers/open-backlog.js';

/**
 * A dispatched command no worker holds (its take-up lost: a dispatch or settlement lost with its
 * journal batch) on a device working off a backlog. The periodic sweep reads a bounded page per
 * run, the devices in turn (9bb283b), and read a device's dispatched commands only with its first
 * page: such a command waited until its device's pass came round again, the backlog over 256
 * runs (forty seconds at ten thousand), its write possibly on the wire and an operator seeing it
 * stuck. A pass over the dispatched commands now comes first in each run.
 *
 * The real pipeline and SQLite journal against sluice-sim. The backlog is written into the
 * journal file before a restart (as in sweep-open-backlog.test.ts): closes of the closed v2,
 * which recovery queues and v2's worker takes a no-op at a time (minutes). Two sweeps take v2's pass past its first
 * page; then the command is dispatched in the journal and its write reaches the controller,
 * and nothing holds it. What a sweep reads is counted (rows), not timed.
 */

const BACKLOG = 10_000;

describe('the sweep with a backlog: dispatched commands first', () => {
  it('takes up a dispatched command no worker holds within a run, and reads a bounded part', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await SimHarness.start({ warm: true, sweepMs: 600_000 });
    onTestFinished(() => h.close());
    await h.crash();
    insertOpenCommands(
      h.path,
      Array.from({ length: BACKLOG }, (_, i) => ({
        key: `backlog-${i}`,
        device: 'v2',
        action: 'close' as const,
      })),
    );
    expect(await h.restart()).toBe(BACKLOG);
    // The backlog: closes of a closed valve, no-ops.
    expect(h.device('v2').state).toBe('CLOSED');

    const rows = countRowsRead(h.journal);
    onTestFinished(() => {
      rows.stop();
    });
    const perSweep: number[] = [];
    const sweep = (): void => {
      rows.reset();
      h.pipeline.sweep();
      perSweep.push(rows.read());
    };
    // v2's pass goes past its first page (where its dispatched commands used to be read).
    sweep();
    sweep();

    const record = h.dispatchedNotWritten('unheld', 30_000, 1, 'open', 'v2');
    const seq = record.seq;
    if (seq === null) throw new Error('dispatched without a sequence number');
    // Its write went out and reached the controller (the write log: the ground truth).
    h.device('v2').receiveWrite({ code: 1, setpoint: 0, seq });

    const lanes = Reflect.get(h.pipeline, 'lanes') as ReadonlyMap<string, Lane>;
    const held = (): boolean => {
      const lane = lanes.get('v2');
      if (lane === undefined) return false;
      return (
        lane.unresolved?.key === 'unheld' ||
        lane.inFlight?.key === 'unheld' ||
        lane.queue.some((r) => r.key === 'unheld') ||
        h.get('unheld')?.state !== 'dispatched'
      );
    };
    let sweeps = 0;
    while (!held() && sweeps < Math.ceil(BACKLOG / SWEEP_PAGE_ROWS) + 2) {
      sweep();
      sweeps += 1;
    }
    // Taken up by the next run (before: when v2's pass came round, 38 runs later).
    expect(sweeps).toBe(1);

    // Settled by a readback: the controller shows OPEN and its sequence number; never written
    // again by the take-up (one write with its number in the simulator's log, the one above).
    const settled = await h.settled('unheld', 10_000);
    expect(settled.state).toBe('confirmed');
    expect(settled.observed?.seq).toBe(seq);
    expect(h.writesWithSeq('v2', seq)).toBe(1);

    // A run reads a page and the dispatched ones, never the backlog.
    for (const read of perSweep) expect(read).toBeLessThanOrEqual(SWEEP_PAGE_ROWS + 2);
  });
});
