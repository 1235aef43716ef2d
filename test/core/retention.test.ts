import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import type { NewCommand } from '../../src/core/journal.js';
import { silentLogger } from '../../src/core/logger.js';
import { RetentionSweeper } from '../../src/core/retention.js';
import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { openJournal, tempDir } from '../helpers/fixtures.js';

let journal: SqliteJournal;
let cleanup: () => void;
const HOUR = 3_600_000;

beforeEach(() => {
  const t = tempDir();
  cleanup = t.cleanup;
  journal = openJournal(join(t.dir, 'journal.db'));
});
afterEach(() => {
  journal.close();
  cleanup();
});

function add(key: string, settledAt: number | null): void {
  const c: NewCommand = {
    scope: 'plant',
    key,
    fingerprint: 'f',
    device: 'v1',
    action: 'open',
    position: null,
    issuedAt: 0,
    issuedAtSource: 'gateway',
    ttlMs: 1000,
    deadline: 1000,
    intake: 'https',
    acceptedAt: settledAt ?? 0,
  };
  const rec = journal.claim(c).record;
  if (settledAt === null) return;
  journal.settle(rec, 'accepted', {
    to: 'rejected',
    code: 'STALE_COMMAND',
    faultCode: null,
    observed: null,
    detail: 'stale',
    at: settledAt,
    intake: 'pipeline',
  });
}

describe('RetentionSweeper', () => {
  it('keeps settled keys for the window (48 h by default) and purges older ones in batches', async () => {
    const now = Date.now();
    for (let i = 0; i < 120; i++) add(`old-${i}`, now - 49 * HOUR);
    add('young', now - 47 * HOUR);
    add('open', null);
    const sweeper = new RetentionSweeper({
      journal,
      clock: systemClock,
      logger: silentLogger,
      batchSize: 50,
      pauseMs: 1,
      maxBatchesPerSweep: 2,
    });
    expect(sweeper.retentionMs).toBe(48 * HOUR);
    expect(await sweeper.sweep()).toBe(100); // bounded: two batches of 50 per sweep
    expect(await sweeper.sweep()).toBe(20);
    expect(await sweeper.sweep()).toBe(0);
    expect(journal.get({ scope: 'plant', key: 'young' })?.state).toBe('rejected');
    expect(journal.get({ scope: 'plant', key: 'open' })?.state).toBe('accepted');
  });

  it('lets claims interleave between batches', async () => {
    const now = Date.now();
    for (let i = 0; i < 300; i++) add(`old-${i}`, now - 100 * HOUR);
    const sweeper = new RetentionSweeper({
      journal,
      clock: systemClock,
      logger: silentLogger,
      batchSize: 20,
      pauseMs: 1,
    });
    const order: string[] = [];
    const sweep = sweeper.sweep().then((n) => {
      order.push(`sweep done (${n})`);
    });
    await new Promise((r) => setTimeout(r, 0));
    add('fresh', null);
    order.push('claim');
    await sweep;
    expect(order).toEqual(['claim', 'sweep done (300)']);
    expect(journal.get({ scope: 'plant', key: 'fresh' })?.state).toBe('accepted');
  });

  it('runs periodically until stopped', async () => {
    add('old', Date.now() - 100 * HOUR);
    const sweeper = new RetentionSweeper({
      journal,
      clock: systemClock,
      logger: silentLogger,
      intervalMs: 10,
    });
    sweeper.start();
    await new Promise((r) => setTimeout(r, 30));
    await sweeper.stop();
    expect(journal.get({ scope: 'plant', key: 'old' })).toBeUndefined();
  });
});
