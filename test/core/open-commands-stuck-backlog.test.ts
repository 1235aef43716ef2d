import { describe, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import type { Lane } from '../../src/core/lane.js';
import { STUCK_LISTED_PER_DEVICE, summarizeOpen } from '../../src/core/open-commands.js';
import { deviceTimings } from '../../src/core/sweep.js';
import { countRowsRead } from '../helpers/journal-rows.js';
import { SimHarness } from '../helpers/sim-harness.js';
import { insertOpenCommands } from '../helpers/open-backlog.js';

/**
 * The open commands at a glance (Sweep.openCommands: /metrics' sluice_commands_stuck and
 * open-command gauges, /readyz's stuck check, the status page's counts) counts a backlog within
 * its deadlines in SQL (cc8357e), but handed over whole every open command past its deadline: a
 * device taken out of the configuration with a backlog leaves thousands, each stuck from its
 * deadline, read whole and judged at every scrape and probe. They are now counted by the journal
 * and only the most overdue of them handed over: the count stays the stuck rule's, and the ones
 * listed (/readyz names the five most overdue) are its most overdue.
 *
 * The real pipeline and SQLite journal against sluice-sim. The commands of the removed device
 * are written into the journal file before a restart (as open-commands-backlog.test.ts does);
 * the summary is compared with the rule's own (summarizeOpen over every open record, as
 * sluicectl stuck judges them) at the same instant; what a call costs is counted: the records
 * the journal hands over for it (countRowsRead), three calls.
 */

const GONE = 2_000;
/** The most a call hands over of the removed device's (STUCK_LISTED_PER_DEVICE, checked below). */
const LISTED_AT_MOST = 32;

describe('the open commands at a glance with a removed device’s backlog past its deadline', () => {
  it('counts the stuck ones in the journal and hands over only the most overdue', async ({
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
      // A device no longer configured: every one stuck from its deadline (each its own).
      ...Array.from({ length: GONE }, (_, i) => ({
        key: `gone-${i}`,
        device: 'gone',
        acceptedAt: now - 600_000 + i * 100,
        deadline: now - 300_000 + i * 100,
      })),
      // Within their deadlines on a configured device: not stuck.
      ...Array.from({ length: 50 }, (_, i) => ({
        key: `later-${i}`,
        device: 'v2',
        acceptedAt: now - i * 1_000,
        deadline: now + 3_600_000,
      })),
    ]);
    expect(await h.restart()).toBe(GONE + 50);

    const lanes = Reflect.get(h.pipeline, 'lanes') as ReadonlyMap<string, Lane>;
    const rows = countRowsRead(h.journal);
    onTestFinished(() => {
      rows.stop();
    });
    const reads: number[] = [];
    for (let i = 0; i < 3; i++) {
      frozen = systemClock.now();
      rows.reset();
      const summary = h.pipeline.openCommands();
      reads.push(rows.read());
      // Before: every command past its deadline, read whole at each call (2,000 here); now the
      // listed ones and the dispatched ones (a device's windows come from them).
      expect(rows.read()).toBeLessThanOrEqual(LISTED_AT_MOST + lanes.size * 2);
      // The rule over every open record, as sluicectl stuck and the status page read them.
      const reference = summarizeOpen(h.journal.listOpen(), frozen, {
        devices: deviceTimings(lanes),
        journal: h.journal,
      });
      expect(reference.stuck).toHaveLength(GONE);
      // What /metrics (sluice_commands_stuck), /readyz and the status page count: all of them.
      expect(summary.stuckCount).toBe(GONE);
      expect(summary.stuckCount).toBe(reference.stuckCount);
      // Listed: the most overdue, the rule's first (/readyz names five of them).
      expect(summary.stuck).toEqual(reference.stuck.slice(0, STUCK_LISTED_PER_DEVICE));
      expect(summary.stuck[0]?.key).toBe('gone-0');
      expect({ ...summary, stuck: [] }).toEqual({ ...reference, stuck: [] });
      frozen = null;
    }
    expect(reads).toHaveLength(3);
    expect(STUCK_LISTED_PER_DEVICE).toBeLessThanOrEqual(LISTED_AT_MOST);
  });

  it('hands over only the most overdue of a configured device’s backlog past its deadline plus confirm timeout', async ({
    expect,
    onTestFinished,
  }) => {
    // A configured device's worker ends its commands by their deadline plus confirm timeout, so
    // thousands past it mean it cannot (a journal failing its writes, a worker gone): before,
    // every one of them was handed over at each call. The backlog is written with deadlines an
    // hour ahead (recovery queues it on v2, whose worker takes it a no-op at a time) and the
    // summary taken with the pipeline's clock held past them all: the journal then holds what
    // such a device leaves, without a fault the simulator cannot make.
    let frozen: number | null = null;
    const clock: Clock = { ...systemClock, now: () => frozen ?? systemClock.now() };
    const h = await SimHarness.start({ warm: true, sweepMs: 600_000, clock });
    onTestFinished(() => h.close());
    await h.crash();
    const now = Date.now();
    const BACKLOG = 2_000;
    insertOpenCommands(
      h.path,
      Array.from({ length: BACKLOG }, (_, i) => ({
        key: `late-${i}`,
        device: 'v2',
        acceptedAt: now - 600_000 + i * 100,
        deadline: now + 3_600_000 + i * 100,
      })),
    );
    expect(await h.restart()).toBe(BACKLOG);

    const lanes = Reflect.get(h.pipeline, 'lanes') as ReadonlyMap<string, Lane>;
    const timings = deviceTimings(lanes);
    const timeout = timings.get('v2')?.confirmTimeoutMs;
    if (timeout === undefined) throw new Error('v2 is not configured');
    const rows = countRowsRead(h.journal);
    onTestFinished(() => {
      rows.stop();
    });
    for (let i = 0; i < 3; i++) {
      // Past every deadline plus the confirm timeout, by a minute.
      frozen = now + 3_600_000 + BACKLOG * 100 + timeout + 60_000;
      rows.reset();
      const summary = h.pipeline.openCommands();
      // Before: every open command of v2 past its bound (about 2,000 here) at each call.
      expect(rows.read()).toBeLessThanOrEqual(LISTED_AT_MOST + lanes.size * 2);
      const reference = summarizeOpen(h.journal.listOpen(), frozen, {
        devices: timings,
        journal: h.journal,
      });
      // The worker takes a few meanwhile: most are still open, each stuck.
      expect(reference.stuckCount).toBeGreaterThan(BACKLOG / 2);
      expect(summary.stuckCount).toBe(reference.stuckCount);
      // Listed: the most overdue first (the oldest deadlines), then any dispatched one whole.
      expect(summary.stuck.slice(0, STUCK_LISTED_PER_DEVICE)).toEqual(
        reference.stuck.slice(0, STUCK_LISTED_PER_DEVICE),
      );
      expect(summary.stuck.length).toBeLessThanOrEqual(LISTED_AT_MOST + 1);
      for (const s of summary.stuck) expect(reference.stuck).toContainEqual(s);
      expect({ ...summary, stuck: [] }).toEqual({ ...reference, stuck: [] });
      frozen = null;
    }
  });
});
