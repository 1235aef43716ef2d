import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import { RESULTS_ACKNOWLEDGED_KEY, ResultDelivery } from '../../src/intake/mqtt-result-delivery.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { damageMiddleLeaf } from '../helpers/damaged-journal.js';
import { tempDir } from '../helpers/fixtures.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { acknowledgingSink, settleStale } from '../helpers/resent-results.js';

/**
 * The watermark of results acknowledged by the broker (mqtt-result-delivery.ts) read back from a
 * real SQLite journal, with settlements timed by a wall clock stepped back: the daemon cannot be
 * made to step its clock here, so the settlement times are given to the journal, and the sink
 * stands for the publisher (it acknowledges everything: what is asserted is what the start
 * takes from the journal, and in which order).
 */

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0)) cleanup();
});

function journal(): SqliteJournal {
  const { dir, cleanup } = tempDir('sluice-delivery-');
  const j = SqliteJournal.open({ path: join(dir, 'journal.db') });
  cleanups.push(() => {
    j.close();
    cleanup();
  });
  return j;
}

/** The keys a start over `j` publishes again, in order, once connected. */
async function resent(j: SqliteJournal, pageSize = 2): Promise<string[]> {
  const { sink, published } = acknowledgingSink();
  const delivery = new ResultDelivery({ journal: j, sink, logger: silentLogger, pageSize });
  delivery.start();
  delivery.connected();
  for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
  await delivery.stop();
  return published;
}

describe('results published again at a start (the journal meta row)', () => {
  it('publishes none without the row, and none after a stop with every result acknowledged', async () => {
    const j = journal();
    settleStale(j, 'old', Date.now() - 5_000);
    expect(await resent(j)).toEqual([]);
    expect(j.readMeta(RESULTS_ACKNOWLEDGED_KEY)).not.toBeNull();
    expect(await resent(j)).toEqual([]);
  });

  it('publishes those settled from the watermark on, in settlement order, a page at a time', async () => {
    const j = journal();
    const t = 1_700_000_000_000;
    settleStale(j, 'before', t - 1);
    const mark = j.settledSince(0).mark;
    settleStale(j, 'c', t + 2);
    settleStale(j, 'a', t);
    settleStale(j, 'b', t + 1);
    settleStale(j, 'a2', t);
    j.writeMeta(RESULTS_ACKNOWLEDGED_KEY, JSON.stringify({ before: t, mark }));
    expect(await resent(j)).toEqual(['a', 'a2', 'b', 'c']);
  });

  it('a clock stepped back: a settlement journaled after the save before is published again, though timed before the watermark', async () => {
    const j = journal();
    const t = 1_700_000_000_000;
    settleStale(j, 'acked', t - 10_000);
    const mark = j.settledSince(0).mark;
    j.writeMeta(RESULTS_ACKNOWLEDGED_KEY, JSON.stringify({ before: t, mark }));
    // The clock stepped back a minute: settled after the save, timed before its watermark.
    settleStale(j, 'stepped', t - 60_000);
    settleStale(j, 'later', t + 5);
    expect(await resent(j)).toEqual(['stepped', 'acked', 'later']);
  });
});

describe('results published again from a journal that cannot be read', () => {
  it('says so and tries again at the next connection; the daemon does not end on it', async () => {
    // A damaged page of the settlement index (a torn write, a failing SD card): the re-sending's
    // read fails. The re-sending ran unawaited, and its rejection went unhandled: Node ends a
    // process on one (the daemon exited at the connection that started it).
    const { dir, cleanup } = tempDir('sluice-delivery-');
    cleanups.push(cleanup);
    const path = join(dir, 'journal.db');
    const setup = SqliteJournal.open({ path });
    const t = Date.now() - 3_600_000;
    for (let i = 0; i < 2_000; i++) settleStale(setup, `k-${String(i)}`, t + i);
    setup.writeMeta(RESULTS_ACKNOWLEDGED_KEY, JSON.stringify({ before: t, mark: 0 }));
    setup.close();
    damageMiddleLeaf(path, 'commands_settled');
    const j = SqliteJournal.open({ path });
    cleanups.push(() => {
      j.close();
    });
    const unhandled: unknown[] = [];
    const onUnhandled = (reason: unknown): void => {
      unhandled.push(reason);
    };
    process.on('unhandledRejection', onUnhandled);
    cleanups.push(() => process.off('unhandledRejection', onUnhandled));
    const { logger, lines } = recordingLogger();
    const { sink, published } = acknowledgingSink();
    const delivery = new ResultDelivery({ journal: j, sink, logger, pageSize: 100 });
    delivery.start();
    const failures = (): number =>
      lines.filter((l) => String(l.msg).includes('could not read the results to publish again'))
        .length;
    delivery.connected();
    for (let i = 0; i < 200 && failures() === 0; i++) await new Promise((r) => setImmediate(r));
    expect(failures()).toBe(1);
    expect(unhandled).toEqual([]);
    // The pages before the damage went out; the rest waits for the next connection.
    const before = published.length;
    expect(before).toBeGreaterThan(0);
    expect(before).toBeLessThan(2_000);
    // Meanwhile a result that settles is published as it settles, not left to the re-sending.
    const last = j.get({ scope: 'plant', key: 'k-1999' });
    if (last === undefined) throw new Error('k-1999 not read');
    delivery.settled({ ...last, key: 'live', settledAt: Date.now() });
    for (let i = 0; i < 20 && !published.includes('live'); i++) {
      await new Promise((r) => setImmediate(r));
    }
    expect(published.at(-1)).toBe('live');
    // The next connection tries again from where it stopped (the page is still damaged: said
    // again, nothing sent twice).
    delivery.connected();
    for (let i = 0; i < 200 && failures() === 1; i++) await new Promise((r) => setImmediate(r));
    expect(failures()).toBe(2);
    expect(published.length).toBe(before + 1);
    // Node reports an unhandled rejection once the microtasks of the turn that made it have run:
    // before the next turn's immediates.
    await new Promise((r) => setImmediate(r));
    expect(unhandled).toEqual([]);
    await delivery.stop();
  });
});
