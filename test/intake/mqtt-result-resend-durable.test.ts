import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { RESULTS_ACKNOWLEDGED_KEY, ResultDelivery } from '../../src/intake/mqtt-result-delivery.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { failFdatasync } from '../helpers/failing-fdatasync.js';
import { tempDir } from '../helpers/fixtures.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { acknowledgingSink, settleStale } from '../helpers/resent-results.js';

/**
 * The re-sending of results from the journal (mqtt-result-delivery.ts) publishes a settlement
 * only once it is on disk (I5). It read settled rows from SQLite and published them as read: a
 * settlement committed by group commit and not yet synced, in the batch still open (the same
 * connection reads it), or whose fdatasync failed went out before it was durable, and while the
 * journal failed closed (docs/spec-notes.md: no result published then). The real SqliteJournal
 * with group commit, its recovery included; fs.fdatasync is the one double, for a disk error no
 * real part here produces on demand (test/helpers/failing-fdatasync.ts). The sink stands for the
 * publisher and acknowledges everything: what is asserted is what the re-sending hands it, and
 * when.
 */

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const cleanup of cleanups.splice(0).reverse()) cleanup();
});

/** Calls `check` every 10 ms until it is true, for at most `ms`. */
async function waitUntil(check: () => boolean, ms: number, what: string): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) throw new Error(`not within ${String(ms)} ms: ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('results published again from the journal', () => {
  it('publishes no settlement whose fdatasync failed, says so once, and publishes it at the next connection once the journal has recovered', async () => {
    const { dir, cleanup } = tempDir('sluice-resend-');
    const j = SqliteJournal.open({ path: join(dir, 'journal.db'), groupCommit: true });
    cleanups.push(cleanup, () => {
      j.close();
    });
    const t = Date.now() - 60_000;
    // A watermark from the run before: the results settled from t on may not have been
    // acknowledged by the broker.
    j.writeMeta(RESULTS_ACKNOWLEDGED_KEY, JSON.stringify({ before: t, mark: 0 }));
    await j.durable();
    const { logger, lines } = recordingLogger();
    const said = (level: number): number =>
      lines.filter(
        (l) =>
          l.level === level &&
          String(l.msg).includes('could not make the results to publish again from the journal'),
      ).length;
    const { sink, published } = acknowledgingSink();
    const delivery = new ResultDelivery({ journal: j, sink, logger });
    delivery.start();
    const failing = failFdatasync();
    cleanups.push(() => {
      failing.restore();
    });

    // A command settles (recovery at a start, a readback) in a batch whose fdatasync fails: the
    // journal fails closed.
    settleStale(j, 'k-unsynced', t + 20);
    await expect(j.durable()).rejects.toThrow(/journal unavailable \(sync\)/);

    // Connected: the re-sending reads the settlement, and its barrier fails (the journal's
    // recovery, tried a second after the failure, fails while every fdatasync does).
    delivery.connected();
    await waitUntil(
      () => said(40) === 1 || published.length > 0,
      10_000,
      'the failed barrier said (warn), or a result published',
    );
    expect(published).toEqual([]);
    // A connection after it, the journal still failing: nothing published, not said again.
    delivery.connected();
    await waitUntil(() => said(20) === 1, 10_000, 'the failed barrier again (debug)');
    expect(published).toEqual([]);
    expect(said(40)).toBe(1);

    // The disk works again: the journal recovers (its log written anew and synced), and the
    // next connection publishes the settlement, durable now.
    failing.restore();
    await j.durable();
    expect(j.recoveries).toBe(1);
    delivery.connected();
    await waitUntil(() => published.length > 0, 10_000, 'the result published');
    expect(published).toEqual(['k-unsynced']);
    expect(said(40)).toBe(1);
    await delivery.stop();
  }, 30_000);
});
