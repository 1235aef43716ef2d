import { describe, it } from 'vitest';
import type { Lane } from '../../src/core/lane.js';
import { SWEEP_PAGE_ROWS } from '../../src/core/sweep.js';
import { countRowsRead } from '../helpers/journal-rows.js';
import { SimHarness } from '../helpers/sim-harness.js';
import { insertOpenCommands } from '../helpers/open-backlog.js';

/**
 * The periodic sweep (once a second in the daemon) takes up the open commands no worker holds.
 * It read every open command of the gateway at each run, on the event loop: after a restart
 * with a backlog of ten thousand (recovery works it off beside the intakes) about 0.1 s a
 * second on this machine, a stall of every command and every intake each time. It now reads a
 * bounded page per run, the devices in turn, and still takes up every open command.
 *
 * The real pipeline and SQLite journal against sluice-sim. The backlog is written into the
 * journal file by a second connection, as claims leave it, before a restart (10,000 claims
 * through the pipeline would take the suite past its bound); recovery queues it on v2, whose
 * worker takes it a no-op at a time (minutes), so it stays queued while the sweeps are timed.
 * What a sweep costs is counted, not timed: the rows it reads from the journal (the old sweep:
 * every open command, 10,002; a sweep now: a page and the idle device's), a bound that holds on
 * any machine (the time is the bench's; here 3–7 ms a sweep against 47–130 ms before).
 */

const BACKLOG = 10_000;

describe('the sweep with a backlog of open commands', () => {
  it('reads a bounded part per run and takes up every open command', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await SimHarness.start({ warm: true, sweepMs: 600_000 });
    onTestFinished(() => h.close());
    await h.crash();
    insertOpenCommands(
      h.path,
      Array.from({ length: BACKLOG }, (_, i) => ({ key: `backlog-${i}`, device: 'v2' })),
    );
    expect(await h.restart()).toBe(BACKLOG);

    // Left open with no worker while the backlog stands (a claim or a supersession lost with
    // its batch leaves such a command): one on an idle device, one on the busy one.
    insertOpenCommands(h.path, [
      { key: 'idle-left', device: 'v1' },
      { key: 'busy-left', device: 'v2' },
    ]);
    const rows = countRowsRead(h.journal);
    onTestFinished(() => {
      rows.stop();
    });
    const perSweep: number[] = [];
    for (let i = 0; i < 3; i++) {
      rows.reset();
      h.pipeline.sweep();
      perSweep.push(rows.read());
    }
    // Ground truth: the idle device's command was taken up at once and written once.
    const idle = await h.settled('idle-left');
    expect(idle.state).toBe('confirmed');
    expect(h.device('v1').writeLog.map((w) => w.seq)).toEqual([idle.seq]);
    expect(h.device('v1').state).toBe('OPEN');
    // The busy device's: within the runs its backlog's pages take. The lane's queue (the
    // pipeline's own state) is where a take-up puts it; the backlog ahead of it runs for minutes.
    const lanes = Reflect.get(h.pipeline, 'lanes') as ReadonlyMap<string, Lane>;
    const queued = (): boolean =>
      lanes.get('v2')?.queue.some((r) => r.key === 'busy-left') ?? false;
    for (let i = 0; i < Math.ceil(BACKLOG / SWEEP_PAGE_ROWS) + 2 && !queued(); i++) {
      h.pipeline.sweep();
    }
    expect(queued()).toBe(true);
    expect(h.journal.get({ scope: 'plant', key: 'busy-left' })?.state).toBe('accepted');
    // The old sweep read all 10,002 open commands at each run; a run now reads a page of the
    // busy device's and the idle device's whole (one command), with v2's dispatched first.
    for (const read of perSweep) expect(read).toBeLessThanOrEqual(SWEEP_PAGE_ROWS + 2);
  });
});
