import { spawn } from 'node:child_process';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { upgradeJournal } from '../../src/journal/schema-upgrade.js';
import { LATEST_VERSION } from '../../src/journal/migrations.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { journalOutlook, upgradeRoom } from '../../src/journal/upgrade-room.js';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { writeSettledJournal } from '../helpers/settled-journal.js';
import { schemaOf } from '../helpers/journal-schema.js';

/**
 * Version 3 adds two indexes of the commands that ended rejected or failed (Journal.list by
 * those states) to a version 2 journal, and nothing else: every row as it was, the schema of a
 * journal created new, and only the room an index needs, not the twice the journal's size a copy
 * of the tables does. A crash in the middle of the step (the upgrade's process killed, as the
 * daemon's stop or a power cut does) leaves the journal at version 2, whole, and the next start
 * upgrades it.
 */

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

const V3_INDEXES = ['commands_unsuccessful', 'commands_unsuccessful_device'];
const haveStrace = realComponent('strace', hasCommand('strace'), 'apt-get install strace');

function indexes(db: BetterSqlite3.Database): string[] {
  return (
    db
      .prepare("SELECT name FROM sqlite_schema WHERE type = 'index' AND name LIKE 'commands_%'")
      .pluck()
      .all() as string[]
  ).sort();
}

/**
 * A version 2 journal of `commands` commands, each third failed and each third rejected (the
 * rest confirmed): written by this Sluice, then its version 3 indexes dropped and its version
 * set back, which is a version 2 journal exactly (version 3 adds nothing else).
 */
function writeV2(path: string, commands: number): void {
  writeSettledJournal(path, commands, 'inlet-valve');
  const db = new BetterSqlite3(path);
  try {
    db.exec(`
      DROP INDEX commands_unsuccessful;
      DROP INDEX commands_unsuccessful_device;
      UPDATE commands SET state = 'failed', code = 'DEVICE_UNREACHABLE' WHERE id % 3 = 0;
      UPDATE commands SET state = 'rejected', code = 'STALE_COMMAND' WHERE id % 3 = 1;
    `);
    db.pragma('user_version = 2');
    db.pragma('wal_checkpoint(TRUNCATE)');
  } finally {
    db.close();
  }
}

function rowsOf(path: string): unknown[] {
  const db = new BetterSqlite3(path, { readonly: true });
  try {
    return db.prepare('SELECT id, key, state, code, accepted_at FROM commands ORDER BY id').all();
  } finally {
    db.close();
  }
}

describe('journal migration 2 → 3', () => {
  it('adds the indexes alone, asks for an index’s room, and lists by them', () => {
    expect(LATEST_VERSION).toBe(3);
    const { dir, cleanup } = tempDir('sluice-migrate-v3-');
    cleanups.push(cleanup);
    const path = join(dir, 'journal.db');
    writeV2(path, 3_000);
    const before = rowsOf(path);
    const size = statSync(path).size;
    // The room asked for: 0.6 × the journal and the log's margin, not twice the journal; and
    // 0.3 × and 1 MB for the index build's sorts in SQLite's temporary folder, counted with
    // the journal's when that folder is on its filesystem.
    const room = upgradeRoom(path, 2);
    const sorts = Math.ceil(0.3 * size) + 1e6;
    expect(room?.sorts).toMatchObject({ needed: sorts });
    expect(room?.needed).toBe(Math.ceil(0.6 * size) + 1e6 + (room?.sorts?.shared ? sorts : 0));
    const outlook = journalOutlook(path);
    expect(outlook).toMatchObject({ kind: 'upgrade', from: 2, to: 3, refusal: null });

    expect(upgradeJournal(path)).toEqual({ from: 2, to: 3 });
    const fresh = join(dir, 'fresh.db');
    SqliteJournal.open({ path: fresh }).close();
    expect(schemaOf(path)).toEqual(schemaOf(fresh));
    expect(rowsOf(path)).toEqual(before);
    const db = new BetterSqlite3(path, { readonly: true });
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(3);
      expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
    } finally {
      db.close();
    }
    const j = SqliteJournal.open({ path, readonly: true });
    try {
      const failed = j.list({ state: 'failed', limit: 5 });
      expect(failed.map((r) => r.state)).toEqual(Array(5).fill('failed'));
      expect(j.list({ state: 'rejected', device: 'inlet-valve', limit: 2000 })).toHaveLength(1_000);
    } finally {
      j.close();
    }
  });

  it.runIf(haveStrace)(
    'killed in the middle of building the indexes, leaves version 2 whole; the next start upgrades it',
    async () => {
      const { dir, cleanup } = tempDir('sluice-migrate-v3-');
      cleanups.push(cleanup);
      const path = join(dir, 'journal.db');
      // Enough failed and rejected commands that the step writes well over 600 pages to the log.
      writeV2(path, 120_000);
      const before = rowsOf(path);
      // The daemon's upgrade process (upgrade-process.ts, as upgrade.ts forks it, its answer on
      // the IPC channel), under strace, which kills it (SIGKILL, as a power cut would) at its
      // 600th write to the log: the step writes its pages there at its commit (2,268 of them
      // here, the log's header first), and the commit is the last of them, so the process dies
      // with the index pages in the log and the step not committed. Killed once the log had grown
      // past 1 MB (a poll every 2 ms), it had committed at times on a loaded machine (exit 0).
      const args = nodeArgs('src/journal/upgrade-process.ts');
      const child = spawn(
        'strace',
        [
          '-f',
          '-qq',
          '-o',
          '/dev/null',
          '-P',
          `${path}-wal`,
          '-e',
          'trace=pwrite64,write',
          '-e',
          'inject=pwrite64,write:signal=SIGKILL:when=600',
          process.execPath,
          ...args,
          path,
          '2000',
        ],
        { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] },
      );
      const exited = new Promise<NodeJS.Signals | number | null>((resolve) => {
        child.once('exit', (code, signal) => {
          resolve(signal ?? code);
        });
      });
      let answer: unknown = null;
      child.on('message', (m) => (answer = m));
      // strace ends as its tracee did.
      expect(await exited).toBe('SIGKILL');
      expect(answer).toBeNull();
      expect(statSync(`${path}-wal`).size).toBeGreaterThan(1e6);
      // Ground truth: the file and the log as SQLite reads them after the crash.
      const db = new BetterSqlite3(path, { readonly: true });
      try {
        expect(db.pragma('user_version', { simple: true })).toBe(2);
        expect(indexes(db).filter((n) => V3_INDEXES.includes(n))).toEqual([]);
        expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
      } finally {
        db.close();
      }
      expect(rowsOf(path)).toEqual(before);
      // The next start: the upgrade again, to its end.
      expect(upgradeJournal(path)).toEqual({ from: 2, to: 3 });
      const after = new BetterSqlite3(path, { readonly: true });
      try {
        expect(after.pragma('user_version', { simple: true })).toBe(3);
        expect(indexes(after)).toEqual(expect.arrayContaining(V3_INDEXES));
        expect(after.pragma('integrity_check', { simple: true })).toBe('ok');
      } finally {
        after.close();
      }
      expect(rowsOf(path)).toEqual(before);
    },
    120_000,
  );
});
