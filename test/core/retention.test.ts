import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
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

  it('keeps a settled key for the window in real time when the wall clock steps forward', async () => {
    // The gateway's wall clock as the test sets it; its monotonic clock runs on (SPEC §6).
    const shift = { wall: 0 };
    const clock: Clock = { ...systemClock, now: () => systemClock.now() + shift.wall };
    const retentionMs = 400;
    const sweeper = new RetentionSweeper({
      journal,
      clock,
      logger: silentLogger,
      retentionMs,
      pauseMs: 1,
    });
    // Settled before the daemon started, past the window by the wall clock: purged as before.
    add('earlier-life', clock.now() - retentionMs - 1_000);
    expect(await sweeper.sweep()).toBe(1);
    const settled = performance.now();
    add('just-settled', clock.now());
    // A time source steps the clock two days forward: the key settled a moment ago, and a
    // retry of it must still be replayed, not run again.
    shift.wall = 48 * HOUR;
    expect(await sweeper.sweep()).toBe(0);
    expect(journal.get({ scope: 'plant', key: 'just-settled' })?.state).toBe('rejected');
    // Stepped back, and forward again: still the same key within its window.
    shift.wall = -HOUR;
    expect(await sweeper.sweep()).toBe(0);
    shift.wall = 48 * HOUR;
    expect(await sweeper.sweep()).toBe(0);
    expect(journal.get({ scope: 'plant', key: 'just-settled' })?.state).toBe('rejected');
    // Once the window has passed in real time, it goes.
    await new Promise((r) => setTimeout(r, retentionMs - (performance.now() - settled) + 50));
    expect(await sweeper.sweep()).toBe(1);
    expect(journal.get({ scope: 'plant', key: 'just-settled' })).toBeUndefined();
    // A step older than the window no longer holds the cut-off back: the stepped clock rules.
    await new Promise((r) => setTimeout(r, retentionMs + 50));
    add('stepped-scale', clock.now() - retentionMs - 100);
    expect(await sweeper.sweep()).toBe(1);
  });
});
