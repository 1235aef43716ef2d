import { type ChildProcess, spawn } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  rmSync,
  statSync,
  statfsSync,
  truncateSync,
} from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { toResult } from '../../src/core/result.js';
import { LATEST_VERSION, MIGRATIONS } from '../../src/journal/migrations.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import { fillFilesystem, mountTmpfs, tmpfsAvailable, unmount } from '../reliability/support.js';
import { schemaOf } from '../helpers/journal-schema.js';

/**
 * Version 1 journals (a WITHOUT ROWID commands table with a stored response; events keyed by
 * scope and key) are migrated in place to version 2, then 3, at open: every command and event
 * kept, replays unchanged, and the same schema as a journal created new. Version 2 journals
 * get version 3's indexes (the commands that ended rejected or failed) and nothing else.
 */

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

describe('journal migration 1 → 2 → 3', () => {
  it('keeps every command and event, renders the same result, and ends in the new schema', () => {
    const { dir, cleanup } = tempDir('sluice-migrate-');
    cleanups.push(cleanup);
    const oldPath = join(dir, 'v1.db');
    const v1 = new BetterSqlite3(oldPath);
    v1.pragma('journal_mode = WAL');
    MIGRATIONS[0]!.up(v1);
    v1.pragma('user_version = 1');
    const observed = {
      state: 'OPEN',
      position: 100,
      seq: 7,
      faultCode: null,
      sourceTime: '2026-12-01T12:00:01.000Z',
      readAt: '2026-12-01T12:00:01.002Z',
    };
    const insert = v1.prepare(`
      INSERT INTO commands (scope, key, fingerprint, device, action, position, issued_at,
        issued_at_source, ttl_ms, deadline, intake, state, code, fault_code, seq, attempts,
        observed_before, observed, detail, accepted_at, dispatched_at, settled_at, response)
      VALUES (@scope, @key, 'fp', 'inlet-valve', 'open', NULL, 1764590400000, 'issuer', 30000,
        1764590430000, 'mqtt', @state, @code, NULL, @seq, @attempts, NULL, @observed, @detail,
        1764590400001, @dispatched, @settled, @response)`);
    const event = v1.prepare(
      'INSERT INTO events (scope, key, at, from_state, to_state, intake, detail) VALUES (?, ?, ?, ?, ?, ?, ?)',
    );
    insert.run({
      scope: 'plant',
      key: 'done',
      state: 'confirmed',
      code: 'OK',
      seq: 7,
      attempts: 1,
      observed: JSON.stringify(observed),
      detail: 'readback after the write shows OPEN',
      dispatched: 1764590400002,
      settled: 1764590401003,
      response: 'stored',
    });
    insert.run({
      scope: 'ops',
      key: 'open',
      state: 'dispatched',
      code: null,
      seq: 8,
      attempts: 1,
      observed: null,
      detail: null,
      dispatched: 1764590400005,
      settled: null,
      response: null,
    });
    event.run('plant', 'done', 1764590400001, null, 'accepted', 'mqtt', 'accepted');
    event.run('plant', 'done', 1764590400002, 'accepted', 'dispatched', 'mqtt', 'seq 7');
    event.run(
      'plant',
      'done',
      1764590401003,
      'dispatched',
      'confirmed',
      'mqtt',
      'OK: readback after the write shows OPEN',
    );
    event.run('ops', 'open', 1764590400001, null, 'accepted', 'https', 'accepted');
    v1.close();

    const j = SqliteJournal.open({ path: oldPath });
    try {
      const done = j.get({ scope: 'plant', key: 'done' })!;
      expect(done).toMatchObject({ state: 'confirmed', code: 'OK', seq: 7, observed });
      expect(done.response).toBe(JSON.stringify(toResult(done)));
      expect(j.history({ scope: 'plant', key: 'done' }).map((e) => e.detail)).toEqual([
        'accepted',
        'seq 7',
        'OK: readback after the write shows OPEN',
      ]);
      expect(j.get({ scope: 'ops', key: 'open' })).toMatchObject({
        state: 'dispatched',
        response: null,
      });
      expect(j.history({ scope: 'ops', key: 'open' })).toHaveLength(1);
      expect(j.listOpen().map((c) => c.key)).toEqual(['open']);
    } finally {
      j.close();
    }
    const fresh = join(dir, 'fresh.db');
    SqliteJournal.open({ path: fresh }).close();
    expect(schemaOf(oldPath)).toEqual(schemaOf(fresh));
    const db = new BetterSqlite3(oldPath, { readonly: true });
    expect(db.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
    db.close();
  });

  it('keeps the journal order of the commands, not their accepted_at, which a clock step reorders', () => {
    // Version 1 kept commands by (scope, key) with no rowid: their journal order is that of
    // their first events (ids given in claim order). Version 2 takes it from the commands' ids
    // (stopsAfter, listOpenRefs: a stop preempts what came before it, SPEC §2). Here the
    // gateway's clock stepped back twice: the stop `a-stop` came after `z-open` though accepted
    // 5 s "earlier", and `m-open` after `a-stop` though accepted "later" than both.
    const { dir, cleanup } = tempDir('sluice-migrate-');
    cleanups.push(cleanup);
    const path = join(dir, 'v1.db');
    const v1 = new BetterSqlite3(path);
    v1.pragma('journal_mode = WAL');
    MIGRATIONS[0]!.up(v1);
    v1.pragma('user_version = 1');
    const insert = v1.prepare(`
      INSERT INTO commands (scope, key, fingerprint, device, action, position, issued_at,
        issued_at_source, ttl_ms, deadline, intake, state, seq, attempts, accepted_at,
        dispatched_at)
      VALUES ('ops', @key, 'fp', 'inlet-valve', @action, NULL, @at, 'gateway', 30000,
        @at + 30000, 'https', @state, @seq, @attempts, @at, @dispatched)`);
    const event = v1.prepare(
      "INSERT INTO events (scope, key, at, from_state, to_state, intake, detail) VALUES ('ops', ?, ?, ?, ?, 'https', ?)",
    );
    const T = 1764590400000;
    // In claim order, each with its events as they came.
    insert.run({
      key: 'z-open',
      action: 'open',
      at: T + 5_000,
      state: 'dispatched',
      seq: 1,
      attempts: 1,
      dispatched: T + 5_001,
    });
    event.run('z-open', T + 5_000, null, 'accepted', 'accepted');
    event.run('z-open', T + 5_001, 'accepted', 'dispatched', 'seq 1');
    insert.run({
      key: 'a-stop',
      action: 'stop',
      at: T,
      state: 'accepted',
      seq: null,
      attempts: 0,
      dispatched: null,
    });
    event.run('a-stop', T, null, 'accepted', 'accepted');
    insert.run({
      key: 'm-open',
      action: 'open',
      at: T + 9_000,
      state: 'accepted',
      seq: null,
      attempts: 0,
      dispatched: null,
    });
    event.run('m-open', T + 9_000, null, 'accepted', 'accepted');
    v1.close();

    const j = SqliteJournal.open({ path });
    try {
      expect(j.listOpenRefs().map((r) => r.key)).toEqual(['z-open', 'a-stop', 'm-open']);
      expect(j.stopsAfter({ scope: 'ops', key: 'z-open' }, 10).map((r) => r.key)).toEqual([
        'a-stop',
      ]);
      expect(j.stopsAfter({ scope: 'ops', key: 'm-open' }, 10)).toEqual([]);
      expect(j.history({ scope: 'ops', key: 'z-open' }).map((e) => e.detail)).toEqual([
        'accepted',
        'seq 1',
      ]);
    } finally {
      j.close();
    }
  });

  const mountable = tmpfsAvailable();
  it.runIf(mountable)(
    'a migration the filesystem has no room for is refused before it writes anything, with the room it needs and the room there is',
    () => {
      // A small gateway filesystem: the upgrade copies the tables. Attempted without the room,
      // it filled the filesystem to the last block before it failed SQLITE_FULL and was rolled
      // back — at every start, every 2 s under systemd — while every other writer there met
      // ENOSPC. Ground truth: the filesystem's used blocks and the file's bytes (the system
      // calls of a refused sluiced: test/daemon/journal-upgrade-room.test.ts).
      const { dir, cleanup } = tempDir('sluice-migrate-');
      cleanups.push(cleanup);
      const mnt = join(dir, 'mnt');
      mkdirSync(mnt);
      mountTmpfs(mnt, '8m');
      cleanups.unshift(() => {
        unmount(mnt);
      });
      const path = join(mnt, 'journal.db');
      const v1 = new BetterSqlite3(path);
      v1.pragma('journal_mode = WAL');
      MIGRATIONS[0]!.up(v1);
      v1.pragma('user_version = 1');
      const insert = v1.prepare(`
        INSERT INTO commands (scope, key, fingerprint, device, action, position, issued_at,
          issued_at_source, ttl_ms, deadline, intake, state, accepted_at, response)
        VALUES ('ops', ?, 'fp', 'inlet-valve', 'open', NULL, 1, 'issuer', 30000, 30001,
          'https', 'accepted', 1, ?)`);
      const event = v1.prepare(
        "INSERT INTO events (scope, key, at, from_state, to_state, intake, detail) VALUES ('ops', ?, 1, NULL, 'accepted', 'https', 'accepted')",
      );
      v1.transaction(() => {
        for (let i = 0; i < 3_000; i++) {
          insert.run(`k${i}`, 'r'.repeat(300));
          event.run(`k${i}`);
        }
      })();
      v1.pragma('wal_checkpoint(TRUNCATE)');
      v1.close();
      const filler = join(mnt, 'filler');
      fillFilesystem(filler);
      truncateSync(filler, statSync(filler).size - 256 * 1024);
      const before = readFileSync(path);
      const used = (): number => {
        const fs = statfsSync(mnt);
        return (fs.blocks - fs.bfree) * fs.bsize;
      };
      const usedBefore = used();
      const free = statfsSync(mnt).bavail * statfsSync(mnt).bsize;
      let message = '';
      try {
        SqliteJournal.open({ path, groupCommit: true }).close();
      } catch (error) {
        message = (error as Error).message;
      }
      const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;
      const size = before.length;
      expect(message).toContain(
        `not enough free space to upgrade the journal ${path} from schema version 1 to 3: the upgrade copies its tables and needs about ${mb(Math.ceil(2.6 * size) + 1e6)} free on its filesystem (2.6 × the journal's ${mb(size)}, and 1.0 MB for the log), and `,
      );
      // The free space as the open found it (its log's index, 32 KB, already taken).
      const said = /, and ([\d.]+) MB are free; /.exec(message);
      expect(Math.abs(Number(said?.[1]) - free / 1e6)).toBeLessThanOrEqual(0.1);
      expect(message).toContain(
        'nothing was written, the journal is left as it was (version 1); free ',
      );
      expect(used()).toBe(usedBefore);
      expect(readFileSync(path).equals(before)).toBe(true);
      // Space freed: the next start upgrades it, every command kept.
      rmSync(filler);
      const j = SqliteJournal.open({ path, groupCommit: true });
      try {
        expect(j.listOpenRefs()).toHaveLength(3_000);
      } finally {
        j.close();
      }
    },
  );
});

describe.runIf(tmpfsAvailable())(
  'an upgrade committed on a filesystem that fills before its checkpoint',
  () => {
    const children: ChildProcess[] = [];
    afterEach(() => {
      for (const c of children.splice(0)) c.kill('SIGKILL');
    });

    it('says the journal is at the new version, its log holding the upgrade, not that it was undone', async () => {
      // After the upgrade's COMMIT, migrate() copies the log into the journal file (a TRUNCATE
      // checkpoint). With a reader of the old journal (a backup, the sqlite3 shell) SQLite waits
      // for it to end before that copy; meanwhile another writer took the filesystem's last
      // blocks. The copy then fails SQLITE_FULL with the upgrade committed in the log, and "the
      // upgrade was undone and the journal is left as it was" sent the operator to the wrong
      // fix: the log is the upgraded journal. Real processes on a real tmpfs; ground truth: the
      // journal's version and commands as SQLite reads them from the file and its log.
      const { dir, cleanup } = tempDir('sluice-migrate-');
      cleanups.push(cleanup);
      const mnt = join(dir, 'mnt');
      mkdirSync(mnt);
      mountTmpfs(mnt, '8m');
      cleanups.unshift(() => {
        unmount(mnt);
      });
      const path = join(mnt, 'journal.db');
      const v1 = new BetterSqlite3(path);
      v1.pragma('journal_mode = WAL');
      MIGRATIONS[0]!.up(v1);
      v1.pragma('user_version = 1');
      const insert = v1.prepare(`
      INSERT INTO commands (scope, key, fingerprint, device, action, position, issued_at,
        issued_at_source, ttl_ms, deadline, intake, state, accepted_at)
      VALUES ('ops', ?, 'fp', 'inlet-valve', 'open', NULL, 1, 'issuer', 30000, 30001,
        'https', 'accepted', 1)`);
      const event = v1.prepare(
        "INSERT INTO events (scope, key, at, from_state, to_state, intake, detail) VALUES ('ops', ?, 1, NULL, 'accepted', 'https', 'accepted')",
      );
      v1.transaction(() => {
        for (let i = 0; i < 3_000; i++) {
          insert.run(`k${i}`);
          event.run(`k${i}`);
        }
      })();
      v1.pragma('wal_checkpoint(TRUNCATE)');
      v1.close();

      // The reader fills the filesystem once the whole upgrade (version 3) is committed. Waiting
      // for version 2 only, it filled it between the upgrade's two steps at times (seen in CI):
      // the step to 3 then failed and was undone, honestly said, but not the case tested here.
      const reader = spawn(
        process.execPath,
        [...nodeArgs('test/helpers/upgrade-reader-process.ts'), path, '3', join(mnt, 'filler')],
        { stdio: ['ignore', 'pipe', 'inherit'] },
      );
      children.push(reader);
      const lines = createInterface({ input: reader.stdout })[Symbol.asyncIterator]();
      expect((await lines.next()).value).toBe('reading');
      const exited = new Promise((resolve) => reader.once('exit', resolve));
      let message = '';
      try {
        // The wait for the reader is SQLite's busy handler: long enough for a loaded machine.
        SqliteJournal.open({ path, groupCommit: true, busyTimeoutMs: 20_000 }).close();
      } catch (error) {
        message = (error as Error).message;
      }
      expect((await lines.next()).value).toBe('filled');
      expect(await exited).toBe(0);

      expect(message).toContain(
        `journal unavailable (open): SQLITE_FULL: the filesystem of ${path} is full`,
      );
      expect(message).not.toContain('undone');
      expect(message).not.toContain('left as it was');
      expect(message).toContain(
        `the journal was upgraded from schema version 1 to 3: the upgrade is committed, in its log ${path}-wal, but copying it into ${path} found no room`,
      );
      expect(message).toContain(`keep ${path}-wal beside it`);
      // Ground truth, still full: the journal with its log is at version 3, every command there.
      const read = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
      try {
        expect(read.pragma('user_version', { simple: true })).toBe(3);
        expect(read.prepare('SELECT count(*) AS n FROM commands').get()).toEqual({ n: 3_000 });
      } finally {
        read.close();
      }
      expect(statSync(`${path}-wal`).size).toBeGreaterThan(0);

      // Space freed: the next start opens it at version 3 without upgrading again, every command
      // kept, and its close copies the log into the journal file.
      rmSync(join(mnt, 'filler'));
      const j = SqliteJournal.open({ path, groupCommit: true });
      try {
        expect(j.listOpenRefs()).toHaveLength(3_000);
      } finally {
        j.close();
      }
      expect(existsSync(`${path}-wal`)).toBe(false);
      const alone = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
      try {
        expect(alone.pragma('user_version', { simple: true })).toBe(3);
      } finally {
        alone.close();
      }
    });
  },
);
