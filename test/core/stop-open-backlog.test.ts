import { describe, it } from 'vitest';
import { countRowsRead } from '../helpers/journal-rows.js';
import { SimHarness } from '../helpers/sim-harness.js';
import { insertOpenCommands } from '../helpers/open-backlog.js';

/**
 * A stop looks, at its claim, for the commands of its device accepted before it that nothing in
 * the process holds (preemption.ts, leftOut: their supersession lost with a batch). It listed
 * every open command of the gateway for that, on the event loop, before the stop went anywhere:
 * with a backlog of tens of thousands queued on other devices (a plant of hundreds of valves, a
 * client's flood), some 0.1–0.3 s per stop on this machine, and a stop of every valve at once
 * took that many times over. It now reads its own device's open commands only.
 *
 * The real pipeline and SQLite journal against sluice-sim. The backlog is written into the
 * journal file by a second connection, as claims leave it (accepted, of another device): 30,000
 * claims through the pipeline would take the suite past its bound. The sweep is held off so
 * that the backlog stays as it is. What a stop costs is counted, not timed: the open commands
 * the synchronous part of its submit (claim and preemption) reads from the journal — a bound
 * that holds on any machine (the time is the bench's; here 0.4 ms a stop against 217 ms before).
 */

const BACKLOG = 30_000;

describe('a stop with a backlog of open commands on other devices', () => {
  it('is claimed without reading them', async ({ expect, onTestFinished }) => {
    const h = await SimHarness.start({ warm: true, sweepMs: 600_000 });
    onTestFinished(() => h.close());
    const now = Date.now();
    insertOpenCommands(
      h.path,
      Array.from({ length: BACKLOG }, (_, i) => ({
        key: `backlog-${i}`,
        device: 'v2',
        acceptedAt: now + i,
        deadline: now + 600_000,
      })),
    );
    expect(h.journal.listOpenRefs()).toHaveLength(BACKLOG);
    const rows = countRowsRead(h.journal);
    onTestFinished(() => {
      rows.stop();
    });
    const perStop: number[] = [];
    for (let i = 0; i < 3; i++) {
      rows.reset();
      h.submit(`stop-${i}`, { device: 'v1', action: 'stop', ttlMs: 10_000 });
      perStop.push(rows.read());
      // Ground truth: the stop ran (a no-op at rest, nothing written).
      const s = await h.settled(`stop-${i}`);
      expect(s.state).toBe('confirmed');
    }
    expect(h.device('v1').writeLog).toEqual([]);
    // The backlog is untouched: still accepted, none superseded by a stop of another device.
    expect(h.journal.listOpenRefs()).toHaveLength(BACKLOG);
    // The old path read all 30,000 open commands at each stop; a stop now reads its own
    // device's, none here (v1 at rest).
    expect(perStop).toEqual([0, 0, 0]);
  });
});
