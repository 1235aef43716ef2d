import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import type { NewCommand } from '../../src/core/journal.js';
import { silentLogger } from '../../src/core/logger.js';
import {
  RETENTION_READINGS_KEY,
  RetentionSweeper,
  type RetentionOptions,
} from '../../src/core/retention.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { openJournal, tempDir } from '../helpers/fixtures.js';

let journal: SqliteJournal;
let journalPath: string;
let cleanup: () => void;
const HOUR = 3_600_000;

beforeEach(() => {
  const t = tempDir();
  cleanup = t.cleanup;
  journalPath = join(t.dir, 'journal.db');
  journal = openJournal(journalPath);
});
afterEach(() => {
  journal.close();
  cleanup();
});

/** Resolves once `done()` holds, checked every 5 ms; fails after 5 s. */
async function until(done: () => boolean, what: string): Promise<void> {
  const end = performance.now() + 5_000;
  while (!done()) {
    if (performance.now() > end) throw new Error(`${what} did not happen within 5 s`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** The daemon stops and starts again on the same journal file. */
function restart(): void {
  journal.close();
  journal = openJournal(journalPath);
}

/** A sweeper whose finished sweeps are counted. */
class CountedSweeper extends RetentionSweeper {
  sweeps = 0;
  constructor(options: Omit<RetentionOptions, 'journal' | 'logger'>) {
    super({ journal, logger: silentLogger, ...options });
  }
  override async sweep(): Promise<number> {
    const purged = await super.sweep();
    this.sweeps++;
    return purged;
  }
}

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
      // Bounded by count alone here: the time bound has its own test.
      batchBudgetMs: 10_000,
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
    await until(() => journal.get({ scope: 'plant', key: 'old' }) === undefined, 'a sweep');
    await sweeper.stop();
  });

  it('sweeps first one interval after its start: a clock set right at boot purges nothing early', async () => {
    // The gateway booted with its clock 100 h ahead; its time source sets it right a moment
    // after the daemon started.
    const shift = { wall: 100 * HOUR };
    const clock: Clock = { ...systemClock, now: () => systemClock.now() + shift.wall };
    const now = systemClock.now();
    add('before-reboot', now - 60_000);
    add('long-ago', now - 49 * HOUR);
    const sweeper = new RetentionSweeper({
      journal,
      clock,
      logger: silentLogger,
      intervalMs: 300,
      pauseMs: 1,
    });
    sweeper.start();
    try {
      await new Promise((r) => setTimeout(r, 50));
      shift.wall = 0;
      // The first sweep has run when the key past the window is gone.
      await until(() => journal.get({ scope: 'plant', key: 'long-ago' }) === undefined, 'a sweep');
    } finally {
      await sweeper.stop();
    }
    expect(journal.get({ scope: 'plant', key: 'before-reboot' })?.state).toBe('rejected');
  });

  it('holds the event loop for about its time budget per batch, however long the histories', async () => {
    // 300 settled commands with 1,000 history events each (clients that retried their keys):
    // by SQL on the journal's file, the way claim() writes them.
    const old = Date.now() - 100 * HOUR;
    for (let i = 0; i < 300; i++) add(`retried-${i}`, old + i);
    add('young', Date.now() - HOUR);
    const db = new BetterSqlite3(journalPath);
    try {
      const event =
        db.prepare(`INSERT INTO events (command, at, from_state, to_state, intake, detail)
        SELECT id, ?, 'rejected', 'rejected', 'https', 'duplicate' FROM commands WHERE key = ?`);
      db.transaction(() => {
        for (let i = 0; i < 300; i++)
          for (let e = 0; e < 1_000; e++) event.run(old + e, `retried-${i}`);
      })();
    } finally {
      db.close();
    }
    // As the daemon opens it (group commit), its batches counted.
    const daemons = SqliteJournal.open({ path: journalPath, groupCommit: true });
    let batches = 0;
    const counted = Object.create(daemons) as SqliteJournal;
    counted.purgeSettled = (...args) => {
      batches++;
      return daemons.purgeSettled(...args);
    };
    const sweeper = new RetentionSweeper({
      journal: counted,
      clock: systemClock,
      logger: silentLogger,
      batchBudgetMs: 5,
      pauseMs: 0,
    });
    // The event loop's longest hold while the sweep runs: each batch and its commit.
    let last = performance.now();
    let longest = 0;
    const ticks = setInterval(() => {
      const now = performance.now();
      longest = Math.max(longest, now - last);
      last = now;
    }, 1);
    let purged: number;
    try {
      purged = await sweeper.sweep();
      await daemons.durable();
    } finally {
      clearInterval(ticks);
      daemons.close();
    }
    expect(purged).toBe(300);
    // Deleting the 300,000 events took more than one batch could: each stopped near its budget
    // (the step it was in, 500 events, finished first), not at the batch size (500 commands),
    // and the event loop went on between them. (Its longest hold is bounded loosely: on a
    // machine shared with other work the process may wait for a core as long.)
    expect(batches).toBeGreaterThan(10);
    expect(longest).toBeLessThan(500);
    const count = new BetterSqlite3(journalPath, { readonly: true });
    try {
      // The young command's: accepted, rejected.
      expect(count.prepare('SELECT count(*) AS n FROM events').get()).toEqual({ n: 2 });
    } finally {
      count.close();
    }
    expect(journal.get({ scope: 'plant', key: 'young' })?.state).toBe('rejected');
  });

  it('keeps a settled key for the window in real time when the wall clock steps forward', async () => {
    // The gateway's wall clock as the test sets it; its monotonic clock runs on (SPEC §6).
    const shift = { wall: 0 };
    const clock: Clock = { ...systemClock, now: () => systemClock.now() + shift.wall };
    const retentionMs = 400;
    // Settled before the daemon started, past the window by the wall clock: purged as before.
    add('earlier-life', clock.now() - retentionMs - 1_000);
    const sweeper = new RetentionSweeper({
      journal,
      clock,
      logger: silentLogger,
      retentionMs,
      pauseMs: 1,
    });
    expect(await sweeper.sweep()).toBe(1);
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
    // The clock read an hour back until this reading: a key settled meanwhile would bear such
    // a time, so the cut-off stays on that scale until this reading is a window old.
    const stepped = performance.now();
    // A key settled on the stepped clock.
    add('stepped-scale', clock.now());
    expect(await sweeper.sweep()).toBe(0);
    expect(journal.get({ scope: 'plant', key: 'just-settled' })?.state).toBe('rejected');
    // Once the window has passed in real time, it goes; so does the key settled on the stepped
    // clock: a step older than the window no longer holds the cut-off back.
    await new Promise((r) => setTimeout(r, retentionMs - (performance.now() - stepped) + 50));
    expect(await sweeper.sweep()).toBe(2);
    expect(journal.get({ scope: 'plant', key: 'just-settled' })).toBeUndefined();
  });

  it('keeps a key settled while the wall clock was set back between two sweeps for the window in real time', async () => {
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
    expect(await sweeper.sweep()).toBe(0);
    // Between two sweeps the clock reads a day back for a while (a time source's bad answer,
    // corrected): a command timed by its receipt settles meanwhile, stamped a day back.
    shift.wall = -24 * HOUR;
    add('in-the-dip', clock.now());
    const settled = performance.now();
    shift.wall = 0;
    // Before: purged by this sweep, a day early (a retry of it would run again, I1).
    expect(await sweeper.sweep()).toBe(0);
    expect(journal.get({ scope: 'plant', key: 'in-the-dip' })?.state).toBe('rejected');
    // Once the window has passed in real time, it goes.
    await new Promise((r) => setTimeout(r, retentionMs - (performance.now() - settled) + 50));
    expect(await sweeper.sweep()).toBe(1);
    expect(journal.get({ scope: 'plant', key: 'in-the-dip' })).toBeUndefined();
  });

  it('reads settlements between sweeps, so that a sweep reads only the last moments, and keeps what they saw', async () => {
    const shift = { wall: 0 };
    const clock: Clock = { ...systemClock, now: () => systemClock.now() + shift.wall };
    // The journal's reads of settlements, with where each began (instrumented, not replaced).
    const reads: number[] = [];
    const settledSince = journal.settledSince.bind(journal);
    journal.settledSince = (after: number) => {
      // MAX_SAFE_INTEGER: a read of the last event's id only (the mark), which scans nothing.
      if (after !== Number.MAX_SAFE_INTEGER) reads.push(after);
      return settledSince(after);
    };
    const sweeper = new RetentionSweeper({
      journal,
      clock,
      logger: silentLogger,
      retentionMs: 400,
      pauseMs: 1,
      intervalMs: 60_000,
      lookIntervalMs: 10,
    });
    sweeper.start();
    try {
      // The clock reads a day back while a command settles, then is set right.
      shift.wall = -24 * HOUR;
      add('in-the-dip', clock.now());
      shift.wall = 0;
      for (let i = 0; i < 20; i++) add(`after-${i}`, clock.now());
      const last = (
        new BetterSqlite3(journalPath, { readonly: true })
          .prepare('SELECT max(id) AS id FROM events')
          .get() as { id: number }
      ).id;
      // A look between sweeps has read past every settlement.
      await until(() => reads.some((after) => after >= last), 'a look past the last event');
      reads.length = 0;
      // The sweep's own read begins where the looks ended: nothing left to scan.
      expect(await sweeper.sweep()).toBe(0);
      expect(reads[0]).toBeGreaterThanOrEqual(last);
      // What the looks saw (a key stamped a day back) counts at the sweep: it is kept.
      expect(journal.get({ scope: 'plant', key: 'in-the-dip' })?.state).toBe('rejected');
    } finally {
      await sweeper.stop();
    }
  });

  it('keeps a key settled while the wall clock was set back during a sweep, between two batches', async () => {
    const shift = { wall: 0 };
    const clock: Clock = { ...systemClock, now: () => systemClock.now() + shift.wall };
    const retentionMs = 400;
    for (let i = 0; i < 30; i++) add(`old-${i}`, clock.now() - retentionMs - 1_000);
    const sweeper = new RetentionSweeper({
      journal,
      clock,
      logger: silentLogger,
      retentionMs,
      batchSize: 10,
      pauseMs: 20,
    });
    const sweep = sweeper.sweep();
    // The first batch has run; the sweep pauses.
    await new Promise((r) => setTimeout(r, 5));
    shift.wall = -24 * HOUR;
    add('in-a-pause', clock.now());
    shift.wall = 0;
    // The batches after it cut by the time it settled with: the rest of the window's keys wait
    // for a later sweep (before: it went with them, 31 purged).
    expect(await sweep).toBe(10);
    expect(journal.get({ scope: 'plant', key: 'in-a-pause' })?.state).toBe('rejected');
  });

  it('sees a key settled after a purge emptied the journal, whose events take the old ids again', async () => {
    const shift = { wall: 0 };
    const clock: Clock = { ...systemClock, now: () => systemClock.now() + shift.wall };
    const retentionMs = 400;
    add('old', clock.now() - retentionMs - 1_000);
    const sweeper = new RetentionSweeper({
      journal,
      clock,
      logger: silentLogger,
      retentionMs,
      pauseMs: 1,
    });
    // Its events were the journal's last: SQLite gives their ids to the next ones.
    expect(await sweeper.sweep()).toBe(1);
    shift.wall = -24 * HOUR;
    add('in-the-dip', clock.now());
    shift.wall = 0;
    expect(await sweeper.sweep()).toBe(0);
    expect(journal.get({ scope: 'plant', key: 'in-the-dip' })?.state).toBe('rejected');
  });

  it('judges keys settled before a restart by the clock as it read before, not by a clock far ahead at boot', async () => {
    const now = systemClock.now();
    add('yesterday', now - 24 * HOUR);
    add('long-ago', now - 49 * HOUR);
    // The run before the restart, its clock right.
    const before = new CountedSweeper({ clock: systemClock, pauseMs: 1 });
    expect(await before.sweep()).toBe(1);
    restart();
    // The gateway reboots with its clock 100 days ahead (a wrong real-time clock), and its time
    // source stays out of reach past the first sweeps.
    const clock: Clock = { ...systemClock, now: () => systemClock.now() + 100 * 24 * HOUR };
    const sweeper = new CountedSweeper({ clock, intervalMs: 20, pauseMs: 1 });
    sweeper.start();
    try {
      await until(() => sweeper.sweeps >= 3, 'three sweeps');
    } finally {
      await sweeper.stop();
    }
    // Before: purged by the first sweep, a day after it settled (a retry of it, timed by its
    // receipt, would have run as a new command).
    expect(journal.get({ scope: 'plant', key: 'yesterday' })?.state).toBe('rejected');
  });

  it('purges a key settled before a restart once it is a window old, with the clock right', async () => {
    const retentionMs = 400;
    const settledAt = systemClock.now() - 100;
    add('recent', settledAt);
    const before = new CountedSweeper({ clock: systemClock, retentionMs, pauseMs: 1 });
    expect(await before.sweep()).toBe(0);
    restart();
    const sweeper = new CountedSweeper({
      clock: systemClock,
      retentionMs,
      intervalMs: 20,
      pauseMs: 1,
    });
    sweeper.start();
    try {
      await until(() => journal.get({ scope: 'plant', key: 'recent' }) === undefined, 'the purge');
    } finally {
      await sweeper.stop();
    }
    expect(systemClock.now() - settledAt).toBeGreaterThanOrEqual(retentionMs);
  });

  it('sweeps in a daemon that crashes more often than its interval, from a new journal on', async () => {
    const retentionMs = 400;
    let settledAt: number | null = null;
    // Each run lasts 100 ms, far less than the interval (a minute): before, none ever swept.
    for (let run = 0; run < 40; run++) {
      const sweeper = new CountedSweeper({
        clock: systemClock,
        retentionMs,
        intervalMs: 60_000,
        pauseMs: 1,
        lookIntervalMs: 10,
        saveIntervalMs: 20,
      });
      sweeper.start();
      try {
        await until(() => sweeper.sweeps >= 1, `run ${run}'s first sweep`);
        if (settledAt === null) {
          settledAt = systemClock.now();
          add('in-the-loop', settledAt);
        }
        await new Promise((r) => setTimeout(r, 100));
      } finally {
        // A crash: what the stop saves is lost; what the looks saved before it stays.
        const saved = journal.readMeta(RETENTION_READINGS_KEY);
        await sweeper.stop();
        if (saved !== null) journal.writeMeta(RETENTION_READINGS_KEY, saved);
      }
      if (journal.get({ scope: 'plant', key: 'in-the-loop' }) === undefined) break;
      restart();
    }
    expect(journal.get({ scope: 'plant', key: 'in-the-loop' })).toBeUndefined();
    // Kept for the window of the runs' time at least (the time between runs counts as none).
    expect(settledAt).not.toBeNull();
    expect(systemClock.now() - (settledAt ?? 0)).toBeGreaterThanOrEqual(retentionMs);
  });

  it('saves no reading of a clock not yet trusted: a run without readings, before its first sweep', async () => {
    // A journal written before the readings were saved.
    add('yesterday', systemClock.now() - 24 * HOUR);
    // The looks, counted (instrumented, not replaced).
    let looks = 0;
    const settledSince = journal.settledSince.bind(journal);
    journal.settledSince = (after: number) => {
      looks++;
      return settledSince(after);
    };
    // Booted with the clock 100 days ahead; stopped before its first sweep.
    const clock: Clock = { ...systemClock, now: () => systemClock.now() + 100 * 24 * HOUR };
    const sweeper = new CountedSweeper({
      clock,
      intervalMs: 60_000,
      lookIntervalMs: 5,
      saveIntervalMs: 5,
    });
    sweeper.start();
    try {
      await until(() => looks >= 10, 'ten looks');
    } finally {
      await sweeper.stop();
    }
    expect(sweeper.sweeps).toBe(0);
    // A restart would have taken such a reading up as the clock before it, and judged the key
    // settled yesterday by it.
    expect(journal.readMeta(RETENTION_READINGS_KEY)).toBeNull();
  });
});
