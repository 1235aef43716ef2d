import { execFileSync } from 'node:child_process';
import fs, {
  closeSync,
  copyFileSync,
  fstatSync,
  mkdirSync,
  openSync,
  renameSync,
  rmSync,
  statSync,
  writeSync,
} from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { dirname, join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import type { CommandRecord, NewCommand, Settlement } from '../../src/core/journal.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { tempDir } from '../helpers/fixtures.js';
import { holdThreadPool } from '../helpers/thread-pool.js';
import { fillFilesystem, mountTmpfs, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * Group commit: writes that arrive together share one durability barrier (one fsync of the
 * WAL), and durable() resolves only after it; without the option every commit is synced
 * before its method returns, as before. The recovery after a failed fdatasync meets a batch it
 * cannot commit on a real full filesystem (tmpfs: root).
 */

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function command(key: string): NewCommand {
  const now = Date.now();
  return {
    scope: 'plant',
    key,
    fingerprint: `f-${key}`,
    device: 'inlet-valve',
    action: 'open',
    position: null,
    issuedAt: now,
    issuedAtSource: 'issuer',
    ttlMs: 30_000,
    deadline: now + 30_000,
    intake: 'test',
    acceptedAt: now,
  };
}

/** A settlement (rejected STALE_COMMAND) made at `at`. */
function stale(at: number): Settlement {
  return {
    to: 'rejected',
    code: 'STALE_COMMAND',
    faultCode: null,
    observed: null,
    detail: 'test',
    at,
    intake: 'test',
  };
}

/** A journal in a folder of its own, or in `dir` (left to its caller) when given. */
function open(groupCommit: boolean, dir?: string): { journal: SqliteJournal; path: string } {
  const folder = dir ?? tempDir('sluice-group-');
  const path = join(typeof folder === 'string' ? folder : folder.dir, 'journal.db');
  const journal = SqliteJournal.open({ path, groupCommit });
  cleanups.push(() => {
    journal.close();
    if (typeof folder !== 'string') folder.cleanup();
  });
  return { journal, path };
}

describe('group commit', () => {
  it('claims that arrive together share one barrier, and durable() waits for it', async () => {
    const { journal, path } = open(true);
    expect(journal.syncPending).toBe(false);
    for (let i = 0; i < 50; i++) journal.claim(command(`k${i}`));
    expect(journal.syncPending).toBe(true);
    const waits = Array.from({ length: 50 }, () => journal.durable());
    expect(journal.barriers).toBe(0); // scheduled, not yet run: nothing acknowledged yet
    await Promise.all(waits);
    expect(journal.barriers).toBe(1);
    expect(journal.syncPending).toBe(false);
    // Nothing pending: durable() resolves at once, without another barrier.
    await journal.durable();
    expect(journal.barriers).toBe(1);
    // Writes after a barrier need a new one.
    journal.claim(command('late'));
    await journal.durable();
    expect(journal.barriers).toBe(2);
    // Every claim is in the file, read by another connection.
    const other = new BetterSqlite3(path, { readonly: true });
    expect(other.prepare('SELECT count(*) AS n FROM commands').get()).toEqual({ n: 51 });
    other.close();
  });

  it('a settlement committed before the last barrier counts as durable, a later one does not', async () => {
    const { journal } = open(true);
    const claimed = journal.claim(command('old')).record;
    const settled = journal.settle(claimed, 'accepted', stale(Date.now() - 5));
    expect(journal.settledDurably(settled)).toBe(false); // its barrier has not run
    await journal.durable();
    expect(journal.settledDurably(settled)).toBe(true); // nothing pending at all
    journal.claim(command('new')); // a write pending again
    expect(journal.settledDurably(settled)).toBe(true); // settled before that barrier began
    const later = journal.settle(
      journal.get({ scope: 'plant', key: 'new' })!,
      'accepted',
      stale(Date.now()),
    );
    expect(journal.settledDurably(later)).toBe(false); // settled after it
    expect(open(false).journal.settledDurably(settled)).toBe(true); // no group commit
  });

  it('a command rejected at the door (settled in its claim) is vouched for only once a barrier covers its claim', async () => {
    const { journal } = open(true);
    journal.claim(command('earlier'));
    // A barrier of this process has completed, as in any running daemon.
    await journal.durable();
    const stale = { ...command('stale'), deadline: Date.now() - 1 };
    const claim = journal.claim(stale, { code: 'STALE_COMMAND', detail: 'its deadline passed' });
    expect(claim.record.state).toBe('rejected');
    // What the HTTPS intake reads back before it answers: not on disk yet. Taken for a
    // settlement of an earlier life (write 0), it was answered before its fsync.
    const reread = journal.get({ scope: 'plant', key: 'stale' })!;
    expect(journal.settledDurably(reread)).toBe(false);
    await journal.durable();
    expect(journal.settledDurably(reread)).toBe(true);
  });

  it('a settlement made while a barrier runs is not vouched for by it, whatever its time says (the wall clock stepped back)', async () => {
    const { journal } = open(true);
    const claimed = journal.claim(command('stepped')).record;
    // The claim's barrier: its fdatasync is queued behind the held pool and cannot return yet.
    const pool = holdThreadPool();
    let first: Promise<void>;
    let settled: CommandRecord;
    try {
      first = journal.durable();
      await new Promise((resolve) => setImmediate(resolve));
      // The gateway's wall clock steps back ten seconds while it runs: the settlement's time
      // lies before the barrier began, though it was written after.
      settled = journal.settle(claimed, 'accepted', stale(Date.now() - 10_000));
    } finally {
      await pool.release();
    }
    await first;
    expect(journal.syncPending).toBe(true);
    // Not on disk: that barrier began before it was written, whatever settledAt says.
    expect(journal.settledDurably(settled)).toBe(false);
    await journal.durable();
    expect(journal.settledDurably(settled)).toBe(true);
  });

  it('what the file held when it was opened is vouched for only once a barrier of this process has run', async () => {
    const { journal, path } = open(true);
    const claimed = journal.claim(command('before'));
    const settled = journal.settle(claimed.record, 'accepted', stale(Date.now()));
    await journal.durable();
    journal.close();
    const again = SqliteJournal.open({ path, groupCommit: true });
    cleanups.unshift(() => {
      again.close();
    });
    again.claim(command('after')); // a write pending: nothing synced by this process yet
    // As a crashed process may have left it: appended to the WAL, not known to be synced.
    expect(again.settledDurably(settled)).toBe(false);
    await again.durable();
    expect(again.settledDurably(settled)).toBe(true);
  });

  it('commits with synchronous=NORMAL between barriers and FULL without the option', () => {
    const grouped = open(true).journal;
    const plain = open(false).journal;
    const mode = (j: SqliteJournal): unknown =>
      (j as unknown as { conn: { db: BetterSqlite3.Database } }).conn.db.pragma('synchronous', {
        simple: true,
      });
    expect(mode(grouped)).toBe(1); // NORMAL
    expect(mode(plain)).toBe(2); // FULL
    plain.claim(command('k'));
    expect(plain.syncPending).toBe(false);
  });

  it('the writes of one turn are one transaction, committed at the end of the turn', async () => {
    const { journal, path } = open(true);
    const other = new BetterSqlite3(path, { readonly: true });
    cleanups.unshift(() => other.close());
    const count = (): unknown => other.prepare('SELECT count(*) AS n FROM commands').get();
    const before = journal.batchCommits;
    for (let i = 0; i < 50; i++) journal.claim(command(`t${i}`));
    // The journal's own connection reads its batch; another connection sees nothing yet.
    expect(journal.get({ scope: 'plant', key: 't49' })?.state).toBe('accepted');
    expect(count()).toEqual({ n: 0 });
    await new Promise((resolve) => setImmediate(resolve));
    expect(count()).toEqual({ n: 50 });
    expect(journal.batchCommits).toBe(before + 1);
    // Durable only with the barrier, as before.
    expect(journal.syncPending).toBe(true);
    await journal.durable();
    expect(journal.syncPending).toBe(false);
  });

  it('a write that fails in a batch undoes only itself', async () => {
    const { journal, path } = open(true);
    journal.claim(command('kept-1'));
    // Settling a command that is not there fails inside the batch (its savepoint rolls back).
    expect(() =>
      journal.settle({ scope: 'plant', key: 'missing' }, 'accepted', stale(Date.now())),
    ).toThrow(/command missing is missing/);
    journal.claim(command('kept-2'));
    await journal.durable();
    const other = new BetterSqlite3(path, { readonly: true });
    try {
      expect(
        other
          .prepare('SELECT key FROM commands ORDER BY key')
          .all()
          .map((r) => (r as { key: string }).key),
      ).toEqual(['kept-1', 'kept-2']);
    } finally {
      other.close();
    }
  });

  it('a check commits on its own, at once, with the batch before it', () => {
    const { journal, path } = open(true);
    journal.claim(command('c1'));
    journal.checkWritable();
    const other = new BetterSqlite3(path, { readonly: true });
    try {
      expect(other.prepare('SELECT count(*) AS n FROM commands').get()).toEqual({ n: 1 });
    } finally {
      other.close();
    }
  });

  it('two fdatasyncs at most: a barrier with writes of its own begins beside one running, not beside two; one with none waits for the one begun last', async () => {
    const { journal, path } = open(true);
    const inner = (journal as unknown as { group: { inFlight: number } }).group;
    // The fdatasyncs are queued behind the held pool: begun, they cannot return until released.
    const pool = holdThreadPool();
    let first: Promise<void>;
    let second: Promise<void>;
    let third: Promise<void>;
    let nothingNew: Promise<number>;
    try {
      journal.claim(command('a'));
      first = journal.durable();
      // The barrier begins at the end of the turn (setImmediate, before this one).
      await new Promise((resolve) => setImmediate(resolve));
      expect(journal.barriers).toBe(0);
      expect(inner.inFlight).toBe(1);
      expect(journal.syncPending).toBe(true); // begun, not on disk yet
      // Nothing written since the first began: resolved by the first's fdatasync, not before.
      nothingNew = journal.durable().then(() => journal.barriers);
      journal.claim(command('b'));
      second = journal.durable();
      // The second begins at the end of this turn, beside the first, which still runs.
      await new Promise((resolve) => setImmediate(resolve));
      expect(inner.inFlight).toBe(2);
      journal.claim(command('c'));
      third = journal.durable();
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      // Not a third beside two: it waits for one of them to return.
      expect(inner.inFlight).toBe(2);
      expect(journal.barriers).toBe(0);
    } finally {
      await pool.release();
    }
    // Writes and barriers over the next turns: never more than two at once.
    let most = inner.inFlight;
    const more: Promise<number>[] = [];
    for (let i = 0; i < 20; i++) {
      await new Promise((resolve) => setImmediate(resolve));
      most = Math.max(most, inner.inFlight);
      journal.claim(command(`c${i}`));
      more.push(journal.durable().then(() => journal.barriers));
      most = Math.max(most, inner.inFlight);
    }
    await expect(nothingNew).resolves.toBeGreaterThanOrEqual(1);
    await Promise.all([first, second, third]);
    const after = await Promise.all(more);
    expect(most).toBeLessThanOrEqual(2);
    expect(journal.syncPending).toBe(false);
    expect(after.every((n) => n >= 2)).toBe(true);
    const other = new BetterSqlite3(path, { readonly: true });
    expect(other.prepare('SELECT count(*) AS n FROM commands').get()).toEqual({ n: 23 });
    other.close();
  });

  it('a barrier whose fdatasync returned 0 is answered only once the one of the same descriptor begun beside it has returned, and fails if that one failed', async () => {
    const { journal } = open(true);
    const disk = overlappingFdatasyncs();
    const order: string[] = [];
    let first: Promise<string>;
    let second: Promise<string>;
    try {
      journal.claim(command('a'));
      first = journal.durable().then(
        () => 'resolved',
        (error: unknown) => `rejected: ${String(error)}`,
      );
      void first.then(() => order.push('first answered'));
      // The first barrier's fdatasync begins at the end of the turn; the second, with a write
      // of its own, at the end of the next, beside it on the same descriptor.
      await new Promise((resolve) => setImmediate(resolve));
      journal.claim(command('b'));
      second = journal.durable().then(
        () => 'resolved',
        (error: unknown) => `rejected: ${String(error)}`,
      );
      await disk.bothReturned;
    } finally {
      disk.restore();
    }
    // The first returned 0 first; the error of the writeback it waited for may have been told
    // to the second: the claim "a" is not acknowledged on the first's word.
    expect(await first).toMatch(/^rejected: .*journal unavailable \(sync\): EIO/);
    expect(await second).toMatch(/^rejected: .*journal unavailable \(sync\): EIO/);
    expect([...disk.returns, ...order]).toEqual([
      'first returned 0',
      'second returned EIO',
      'first answered',
    ]);
    expect(disk.descriptors[0]).toBe(disk.descriptors[1]);
    expect(journal.barriers).toBe(0);
    expect(journal.knownFailure()?.message).toMatch(/journal unavailable \(sync\): EIO/);
  });

  it('a write made while an fdatasync runs stays in the open batch until it returns, then commits once', async () => {
    const { journal, path } = open(true);
    const inner = (journal as unknown as { group: { inFlight: number } }).group;
    const other = new BetterSqlite3(path, { readonly: true });
    cleanups.unshift(() => other.close());
    const count = (): unknown => other.prepare('SELECT count(*) AS n FROM commands').get();
    journal.claim(command('a'));
    // The fdatasync is queued behind the held pool: it runs, and cannot return, until released.
    const pool = holdThreadPool();
    let first: Promise<void>;
    let commits: number;
    try {
      first = journal.durable();
      await new Promise((resolve) => setImmediate(resolve));
      expect(inner.inFlight).toBe(1);
      commits = journal.batchCommits;
      // A write, and no barrier asked for it; two turns pass, the end of its own among them.
      journal.claim(command('b'));
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      // The batch is still open, invisible to another connection.
      expect(journal.barriers).toBe(0);
      expect(count()).toEqual({ n: 1 });
      expect(journal.batchCommits).toBe(commits);
    } finally {
      await pool.release();
    }
    await first;
    // The fdatasync's return committed it, once, without a barrier of its own.
    expect(journal.batchCommits).toBe(commits + 1);
    expect(count()).toEqual({ n: 2 });
    expect(journal.barriers).toBe(1);
    expect(journal.syncPending).toBe(true); // committed, not yet synced
    await journal.durable();
    expect(journal.barriers).toBe(2);
  });

  it('syncs the WAL file that is there now: a new one after the connection was replaced', async () => {
    const { journal, path } = open(true);
    type Inner = {
      conn: { db: BetterSqlite3.Database };
      group: { wal: { fd: number } | null };
    };
    const inner = journal as unknown as Inner;
    journal.claim(command('before'));
    await journal.durable();
    // The file the barrier syncs: still linked (a deleted WAL has no name), and the one there.
    const synced = (): { ino: number; nlink: number } | undefined => {
      if (inner.group.wal === null) return undefined;
      const { ino, nlink } = fstatSync(inner.group.wal.fd);
      return { ino, nlink };
    };
    const there = (): { ino: number; nlink: number } => ({
      ino: statSync(`${path}-wal`).ino,
      nlink: 1,
    });
    expect(synced()).toEqual(there());
    // The connection goes away (as after a read-only filesystem, see reopen): SQLite, its last
    // connection closing, checkpoints and deletes the WAL; the next write opens a new one.
    inner.conn.db.close();
    journal.claim(command('after'));
    await journal.durable();
    expect(synced()).toEqual(there());
    const other = new BetterSqlite3(path, { readonly: true });
    expect(other.prepare('SELECT count(*) AS n FROM commands').get()).toEqual({ n: 2 });
    other.close();
  });

  it('a journal removed or replaced while open fails every barrier from then on, for good', async () => {
    // Its files deleted (the state folder removed while the daemon ran), or another file moved
    // over it: SQLite writes and fdatasync syncs the files it opened, and every command
    // acknowledged since would be missing at the next start (its key free again, I1).
    const cases: [string, (path: string) => void][] = [
      [
        'its folder removed',
        (path) => {
          rmSync(dirname(path), { recursive: true });
        },
      ],
      [
        'its log removed',
        (path) => {
          rmSync(`${path}-wal`);
        },
      ],
      [
        'another file moved over it',
        (path) => {
          copyFileSync(path, `${path}.copy`);
          renameSync(`${path}.copy`, path);
        },
      ],
    ];
    for (const [what, remove] of cases) {
      const { journal, path } = open(true);
      journal.claim(command('before'));
      await journal.durable();
      remove(path);
      // The claim itself succeeds (SQLite writes the open files); its barrier must not.
      journal.claim(command('after'));
      await expect(journal.durable(), what).rejects.toThrow(
        /journal unavailable \(sync\): the journal was removed or replaced while sluiced ran/,
      );
      // For good: the next barrier, /readyz's check and the status line say so too.
      journal.claim(command('later'));
      await expect(journal.durable(), what).rejects.toThrow(/removed or replaced/);
      expect(() => {
        journal.checkWritable();
      }, what).toThrow(/removed or replaced/);
      expect(journal.knownFailure()?.message, what).toMatch(/removed or replaced/);
    }
  });

  it('a failed fdatasync fails every barrier until the journal has written its log anew and synced it', async () => {
    const { journal, path } = await failedSync();
    expect(journal.barriers).toBe(1);
    // The descriptor works again, but a later fdatasync that succeeds proves nothing on Linux
    // (the failed pages may be marked clean): the barriers keep failing until the recovery.
    expect(journal.syncPending).toBe(true);
    journal.claim(command('third'));
    // The recovery is tried at a pace (1 s after the failure): the barrier waits for it and
    // succeeds only with it.
    expect(await journal.durable().then(() => journal.recoveries)).toBe(1);
    expect(journal.recoveries).toBe(1);
    expect(journal.barriers).toBe(2);
    expect(journal.syncPending).toBe(false);
    // The WAL as written anew holds every commit: a copy of the files without the wal-index is
    // recovered by SQLite from the WAL's checksum chain.
    expect(copiedKeys(path)).toEqual(['first', 'second', 'third']);
    // And barriers are ordinary again.
    journal.claim(command('fourth'));
    await journal.durable();
    expect(journal.barriers).toBe(3);
  });

  it("the recovery keeps SQLite's locks on the WAL index: another process still sees the connection, and cannot write beside an open batch", async () => {
    const { journal, path } = await failedSync();
    journal.claim(command('third'));
    expect(await journal.durable().then(() => journal.recoveries)).toBe(1);
    // A batch open, as every turn that writes holds one: its write lock taken. The locks as
    // another process sees them (F_GETLK; SQLite's unix VFS: the WAL write lock at byte 120 of
    // the index, the lock that says a connection is there at byte 128). A descriptor of the
    // index opened and closed by the recovery released both: closing any descriptor of a file
    // releases every POSIX lock the process holds on it.
    journal.claim(command('fourth'));
    const locks = execFileSync('python3', ['-c', GETLK, `${path}-shm`], { encoding: 'utf8' });
    expect(locks.trim().split('\n')).toEqual([
      `120 WRLCK ${process.pid}`,
      `128 RDLCK ${process.pid}`,
    ]);
    await journal.durable();
  });

  it('the recovery carries the batch open when its attempt begins: a write made just before it is answered only after an fdatasync asked for once it was committed', async () => {
    const { journal, path } = await failedSync();
    const inner = (journal as unknown as { group: { attemptRecovery(): Promise<void> } }).group;
    const reader = new BetterSqlite3(path, { readonly: true });
    cleanups.unshift(() => reader.close());
    // Every fdatasync of the WAL (the real one, watched): whether the write "w" was committed
    // when it was asked for (another connection sees it), and whether it has returned.
    const syncs: { sawW: boolean; returned: boolean }[] = [];
    const real = fs.fdatasync;
    fs.fdatasync = ((fd: number, callback: (error: NodeJS.ErrnoException | null) => void) => {
      const seen = reader.prepare("SELECT 1 FROM commands WHERE key = 'w'").get();
      const sync = { sawW: seen !== undefined, returned: false };
      syncs.push(sync);
      real(fd, (error) => {
        sync.returned = true;
        callback(error);
      });
    }) as typeof fs.fdatasync;
    syncBuiltinESMExports();
    let answered: { sawW: boolean; returned: boolean }[] = [];
    try {
      // A write and its barrier, then the recovery's attempt in the same turn: as when a timer
      // (a lane's deadline settling a command, say) fires just before the attempt's, in the same
      // timers phase, its batch still open. The attempt is begun directly: two timers cannot be
      // ordered for sure within one phase (each is stamped with the loop's time at its creation).
      journal.claim(command('w'));
      const wrote = journal.durable().then(() => {
        answered = syncs.map((s) => ({ ...s }));
      });
      await inner.attemptRecovery();
      expect(journal.recoveries).toBe(1);
      await wrote;
    } finally {
      fs.fdatasync = real;
      syncBuiltinESMExports();
    }
    // "w" was answered: an fdatasync asked for once it was committed had returned by then.
    expect(answered.some((s) => s.sawW && s.returned)).toBe(true);
    expect(copiedKeys(path)).toEqual(['first', 'second', 'w']);
  });

  it.runIf(tmpfsAvailable())(
    'the recovery fails when the batch open as its attempt begins is lost (its COMMIT finds the filesystem full): it vouches for nothing, and the journal stays closed until an attempt succeeds',
    async () => {
      // A real full filesystem (tmpfs): the batch's COMMIT needs new frames in the WAL and fails
      // SQLITE_FULL, while the recovery writes the WAL anew in place and needs no room.
      const { dir, cleanup } = tempDir('sluice-group-full-');
      const disk = join(dir, 'disk');
      mkdirSync(disk);
      mountTmpfs(disk, '4m');
      const { journal, path } = await failedSync(disk);
      cleanups.push(() => {
        unmount(disk);
        cleanup();
      });
      const inner = (journal as unknown as { group: { attemptRecovery(): Promise<void> } }).group;
      const filler = join(disk, 'filler');
      fillFilesystem(filler);
      // A write and its barrier, then the recovery's attempt in the same turn, begun directly as
      // in the test above: the attempt commits the write's batch first, and that COMMIT fails.
      journal.claim(command('w'));
      const wrote = journal.durable();
      await expect(inner.attemptRecovery()).rejects.toThrow(
        /journal unavailable \(commit\): SQLITE_FULL/,
      );
      // It vouched for nothing: no recovery, the journal still closed, the write not answered.
      expect(journal.recoveries).toBe(0);
      expect(journal.syncPending).toBe(true);
      await expect(wrote).rejects.toThrow(/journal unavailable \(commit\): SQLITE_FULL/);
      const reader = new BetterSqlite3(path, { readonly: true });
      try {
        expect(reader.prepare("SELECT 1 FROM commands WHERE key = 'w'").get()).toBeUndefined();
      } finally {
        reader.close();
      }
      // Room again: the next write's barrier waits for the next attempt, which succeeds.
      rmSync(filler);
      journal.claim(command('x'));
      await journal.durable();
      expect(journal.recoveries).toBe(1);
      expect(copiedKeys(path)).toEqual(['first', 'second', 'x']);
    },
  );

  it('a WAL whose content no longer verifies is not written anew: the journal stays closed', async () => {
    const { journal, path } = await failedSync();
    spoilLastFrame(path);
    // The barrier waits for the recovery's attempt (1 s after the failure), which fails.
    await expect(journal.durable()).rejects.toThrow(/does not verify/);
    expect(journal.recoveries).toBe(0);
    expect(journal.syncPending).toBe(true);
  });

  it('while a failed fdatasync is outstanding, the connection is not replaced (its close would checkpoint past the failure)', async () => {
    const { journal, path } = await failedSync();
    // The WAL can no longer be written anew (a page read back stale, as in the test above).
    const size = spoilLastFrame(path);
    // A write failed SQLITE_READONLY (a filesystem remounted read-only after the I/O error):
    // the next write would replace the connection, closing this one. SQLite checkpoints at the
    // close of a file's last connection, copying the WAL — the frame that failed included —
    // into the database file, and deletes the WAL.
    (journal as unknown as { readOnlyConnection: boolean }).readOnlyConnection = true;
    journal.claim(command('third'));
    // Kept: the WAL is still there, and the database file alone holds none of the commands
    // (nothing was checkpointed since the journal was created, not even its tables).
    expect(statSync(`${path}-wal`).size).toBeGreaterThanOrEqual(size);
    expect(mainFileKeys(path)).toEqual([]);
    expect(journal.syncPending).toBe(true);
  });
});

/**
 * A journal with one claim on disk and a second whose barrier's fdatasync failed. A disk that
 * fails an fdatasync (EIO) cannot be made here: a descriptor that is not open fails it the same
 * way (EBADF), through the same path; the descriptor is put back afterwards.
 */
/** Prints, for bytes 120 and 128 of the file argv[1], the POSIX lock another process meets. */
const GETLK = `
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for start in (120, 128):
    lk = struct.pack('hhqqi4x', fcntl.F_WRLCK, 0, start, 1, 0)
    kind, _, _, _, pid = struct.unpack('hhqqi4x', fcntl.fcntl(fd, fcntl.F_GETLK, lk))
    name = {fcntl.F_RDLCK: 'RDLCK', fcntl.F_WRLCK: 'WRLCK', fcntl.F_UNLCK: 'UNLCK'}[kind]
    print(start, name, pid if kind != fcntl.F_UNLCK else '-')
`;

async function failedSync(dir?: string): Promise<{ journal: SqliteJournal; path: string }> {
  const opened = open(true, dir);
  const { journal } = opened;
  type Inner = { wal: { fd: number; conn: unknown } | null };
  const inner = (journal as unknown as { group: Inner }).group;
  journal.claim(command('first'));
  await journal.durable();
  const wal = inner.wal;
  if (wal === null) throw new Error('no WAL descriptor after a barrier');
  inner.wal = { ...wal, fd: 2 ** 30 };
  journal.claim(command('second'));
  await expect(journal.durable()).rejects.toThrow(/journal unavailable \(sync\): EBADF/);
  inner.wal = wal;
  return opened;
}

/**
 * A double of fs.fdatasync for a fault no real part here produces on demand: two fdatasyncs of
 * one descriptor side by side, the first told nothing (0) and the second told of a failed
 * writeback (EIO). Linux keeps one writeback-error cursor per open file, so of two overlapping
 * fdatasyncs of one descriptor whichever checks first gets the error, whatever pages failed;
 * making the disk fail a writeback needs a device this machine cannot set up (dm-error, root).
 * Both calls run the real fdatasync on the real WAL; the first's answer is held until the
 * second was asked for (so that they overlap), and the second's EIO is delivered one turn after
 * the first's 0. Later calls reach the real fdatasync.
 */
function overlappingFdatasyncs(): {
  readonly returns: string[];
  readonly descriptors: number[];
  readonly bothReturned: Promise<void>;
  restore(): void;
} {
  const real = fs.fdatasync;
  const returns: string[] = [];
  const descriptors: number[] = [];
  let firstAnswer: { error: NodeJS.ErrnoException | null } | null = null;
  let firstCallback: ((error: NodeJS.ErrnoException | null) => void) | null = null;
  let secondCallback: ((error: NodeJS.ErrnoException | null) => void) | null = null;
  let bothReturned = (): void => undefined;
  const returned = new Promise<void>((resolve) => {
    bothReturned = resolve;
  });
  const deliver = (): void => {
    if (firstAnswer === null || firstCallback === null || secondCallback === null) return;
    const second = secondCallback;
    returns.push(firstAnswer.error === null ? 'first returned 0' : 'first failed');
    firstCallback(firstAnswer.error);
    setImmediate(() => {
      returns.push('second returned EIO');
      second(Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }));
      bothReturned();
    });
  };
  fs.fdatasync = ((fd: number, callback: (error: NodeJS.ErrnoException | null) => void) => {
    descriptors.push(fd);
    if (descriptors.length === 1) {
      firstCallback = callback;
      real(fd, (error) => {
        firstAnswer = { error };
        deliver();
      });
    } else if (descriptors.length === 2) {
      real(fd, () => {
        secondCallback = callback;
        deliver();
      });
    } else {
      real(fd, callback);
    }
  }) as typeof fs.fdatasync;
  syncBuiltinESMExports();
  return {
    returns,
    descriptors,
    bothReturned: returned,
    restore: () => {
      fs.fdatasync = real;
      syncBuiltinESMExports();
    },
  };
}

/**
 * Alters the last WAL frame as a page the kernel evicted and read back stale would be (other
 * bytes than SQLite committed); returns the WAL's size.
 */
function spoilLastFrame(path: string): number {
  const size = statSync(`${path}-wal`).size;
  const fd = openSync(`${path}-wal`, 'r+');
  writeSync(fd, Buffer.alloc(16, 0xee), 0, 16, size - 100);
  closeSync(fd);
  return size;
}

/** The keys in the journal's database file alone, without its WAL. */
function mainFileKeys(path: string): string[] {
  const { dir, cleanup } = tempDir('sluice-main-');
  try {
    const copy = join(dir, 'journal.db');
    copyFileSync(path, copy);
    const db = new BetterSqlite3(copy, { readonly: true });
    try {
      // A database file that never had a checkpoint holds no tables yet.
      const table = db.prepare("SELECT 1 FROM sqlite_master WHERE name = 'commands'").get();
      if (table === undefined) return [];
      return (db.prepare('SELECT key FROM commands ORDER BY id').all() as { key: string }[]).map(
        (r) => r.key,
      );
    } finally {
      db.close();
    }
  } finally {
    cleanup();
  }
}

/** The keys of a copy of the journal's files without its wal-index (SQLite rebuilds it). */
function copiedKeys(path: string): string[] {
  const { dir, cleanup } = tempDir('sluice-copy-');
  try {
    const copy = join(dir, 'journal.db');
    copyFileSync(path, copy);
    copyFileSync(`${path}-wal`, `${copy}-wal`);
    const db = new BetterSqlite3(copy, { readonly: true });
    try {
      return (db.prepare('SELECT key FROM commands ORDER BY id').all() as { key: string }[]).map(
        (r) => r.key,
      );
    } finally {
      db.close();
    }
  } finally {
    cleanup();
  }
}
