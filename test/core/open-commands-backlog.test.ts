import { describe, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { summarizeOpen } from '../../src/core/open-commands.js';
import { deviceTimings } from '../../src/core/sweep.js';
import type { Lane } from '../../src/core/lane.js';
import { countRowsRead } from '../helpers/journal-rows.js';
import { SimHarness } from '../helpers/sim-harness.js';
import { insertOpenCommands } from '../helpers/open-backlog.js';

/**
 * The open commands at a glance (Sweep.openCommands: /metrics' open-command gauges, /readyz's
 * stuck check, the status page's counts) read every open command as a whole record and summed
 * it up in JavaScript at each call, on the event loop: at a backlog of ten thousand (after a
 * restart, recovery works it off beside the intakes) about 0.1 s a call on this machine. It now
 * counts in SQL and reads only the commands past their deadline, and says the same.
 *
 * The real pipeline and SQLite journal against sluice-sim. The backlog is written into the
 * journal file by a second connection before a restart, as sweep-open-backlog.test.ts does;
 * recovery queues it on v2, whose worker takes it a no-op at a time (minutes). Beside it, open
 * commands of a device no longer configured, past their deadline: stuck. The summary is compared
 * whole with the rule's own (summarizeOpen over every open record, the way sluicectl judges
 * them) at the same instant; what a call costs is counted: the records the journal hands over
 * for it (countRowsRead), five calls.
 */

const BACKLOG = 10_000;

describe('the open commands at a glance with a backlog', () => {
  it('reads a bounded part of the journal per call and says what the stuck rule says', async ({
    expect,
    onTestFinished,
  }) => {
    // The pipeline's wall clock held still while a summary and its reference are taken.
    let frozen: number | null = null;
    const clock: Clock = { ...systemClock, now: () => frozen ?? systemClock.now() };
    const h = await SimHarness.start({ warm: true, sweepMs: 600_000, clock });
    onTestFinished(() => h.close());
    await h.crash();
    const now = Date.now();
    insertOpenCommands(h.path, [
      // Ages spread over the buckets (1 s … 1 h and older), deadlines ahead: not stuck.
      ...Array.from({ length: BACKLOG }, (_, i) => ({
        key: `backlog-${i}`,
        device: 'v2',
        acceptedAt: now - (i % 7) * 700_000 - (i % 13) * 900,
        deadline: now + 3_600_000,
      })),
      // A device no longer configured: stuck from its deadline.
      ...Array.from({ length: 12 }, (_, i) => ({
        key: `gone-${i}`,
        device: 'gone',
        acceptedAt: now - 120_000 - i * 1_000,
        deadline: now - 60_000 - i * 1_000,
      })),
    ]);
    expect(await h.restart()).toBe(BACKLOG + 12);

    const lanes = Reflect.get(h.pipeline, 'lanes') as ReadonlyMap<string, Lane>;
    // The records the journal hands over during a call, counted, not timed: a bound that holds
    // on any machine (speed is the bench's).
    const rows = countRowsRead(h.journal);
    onTestFinished(() => {
      rows.stop();
    });
    const reads: number[] = [];
    for (let i = 0; i < 5; i++) {
      frozen = systemClock.now();
      rows.reset();
      const summary = h.pipeline.openCommands();
      reads.push(rows.read());
      // The rule over every open record, as sluicectl stuck and the status page read them.
      const reference = summarizeOpen(h.journal.listOpen(), frozen, {
        devices: deviceTimings(lanes),
        journal: h.journal,
      });
      expect(summary).toEqual(reference);
      expect(summary.stuck.map((s) => s.key)).toEqual(
        Array.from({ length: 12 }, (_, k) => `gone-${11 - k}`),
      );
      expect(summary.accepted + summary.dispatched).toBeGreaterThan(BACKLOG);
      frozen = null;
    }
    // Every record read whole and judged in JavaScript before (10,012 a call; 130–200 ms here),
    // now the stuck ones and the dispatched ones (a device's windows come from them), not the
    // backlog within its deadlines.
    expect(Math.max(...reads)).toBeLessThanOrEqual(12 + lanes.size * 2);
  });
});
