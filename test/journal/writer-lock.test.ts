import { execFileSync, spawn } from 'node:child_process';
import { chmodSync, mkdirSync, readdirSync, symlinkSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { JournalUnavailableError } from '../../src/core/errors.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { lockJournal } from '../../src/journal/writer-lock.js';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import { isRoot, realComponent } from '../helpers/real.js';
import { mountTmpfs, remount, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * One daemon per journal (src/journal/writer-lock.ts). SQLite opens a lock file it may not
 * write read-only, without an error, and an EXCLUSIVE transaction on that connection excluded
 * no one: on a filesystem that turned read-only (a daemon restarted on it after a crash starts,
 * and answers 503), a second sluiced "took" the lock too, and once the filesystem was writable
 * again both wrote the journal. Real processes on a real read-only tmpfs; ground truth: what each
 * process got from lockJournal.
 */

let dir: string;
let cleanup: () => void;
let mnt: string;
const children: ReturnType<typeof spawn>[] = [];

/** lockJournal in another process (a second sluiced): "locked" or "refused <message>". */
function lockInChild(path: string): Promise<string> {
  const child = spawn(process.execPath, [...nodeArgs('test/helpers/lock-process.ts'), path], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve);
    child.once('error', reject);
    child.once('exit', (code) => {
      reject(new Error(`lock-process exited (${code ?? 'signal'}) without a word`));
    });
  });
}

const available = tmpfsAvailable();

describe.runIf(available)('the journal lock on a filesystem that cannot be written', () => {
  beforeEach(() => {
    ({ dir, cleanup } = tempDir('sluice-lock-'));
    mnt = join(dir, 'mnt');
    mkdirSync(mnt);
    mountTmpfs(mnt, '1m');
  });
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    unmount(mnt);
    cleanup();
  });

  it('is refused, saying why, rather than "held" by two daemons at once', async () => {
    const path = join(mnt, 'journal.db');
    // A daemon's earlier life left the journal and its lock file.
    const earlier = lockJournal(path);
    SqliteJournal.open({ path }).close();
    earlier.release();
    remount(mnt, 'ro');

    const first = await lockInChild(path);
    let second: string;
    try {
      lockJournal(path);
      second = 'locked';
    } catch (error) {
      expect(error).toBeInstanceOf(JournalUnavailableError);
      second = `refused ${(error as Error).message}`;
    }
    expect([first, second].filter((outcome) => outcome === 'locked')).toHaveLength(0);
    for (const outcome of [first, second]) {
      expect(outcome).toBe(
        `refused journal unavailable (open): the filesystem of ${path} is read-only, so ${path}.lock cannot be locked (one daemon per journal); start sluiced again once it is writable`,
      );
    }
    // Writable again, the lock works as before: one holder, the next refused.
    remount(mnt, 'rw');
    expect(await lockInChild(path)).toBe('locked');
    expect(() => lockJournal(path)).toThrow(/in use by another sluiced/);
  }, 30_000);

  it('a new journal there: the lock and the journal say the filesystem is read-only', () => {
    // SQLite's "unable to open database file", and Node's ENOENT for a folder it could not
    // create, named no cause.
    remount(mnt, 'ro');
    for (const path of [join(mnt, 'journal.db'), join(mnt, 'sub', 'journal.db')]) {
      const readOnly = `the filesystem of ${mnt} is read-only`;
      expect(() => lockJournal(path)).toThrow(
        `journal unavailable (open): ${readOnly}, so ${path}.lock cannot be created to lock the journal (one daemon per journal); start sluiced again once it is writable`,
      );
      expect(() => SqliteJournal.open({ path })).toThrow(
        `journal unavailable (open): ${path} cannot be created: ${readOnly}; start sluiced again once it is writable`,
      );
    }
  });
});

// Root, to take the lock as another user (nobody): skipped with why, a failure under
// SLUICE_REQUIRE_REAL=1.
const asAnotherUser = realComponent(
  'root (to take the journal lock as another user)',
  isRoot,
  'run the tests as root',
);

describe.runIf(asAnotherUser)("the journal lock in a folder the daemon's user cannot write", () => {
  it('is refused, naming the folder, the user and what to do', () => {
    // As root a folder's mode does not stop a write: the lock is taken by another user, as
    // sluiced runs under systemd (User=sluice), in a folder left to root.
    const { dir: folder, cleanup: done } = tempDir('sluice-lock-perm-');
    try {
      const state = join(folder, 'state');
      mkdirSync(state);
      chmodSync(folder, 0o755);
      chmodSync(state, 0o555);
      const path = join(state, 'journal.db');
      const said = execFileSync(
        process.execPath,
        [...nodeArgs('test/helpers/lock-process.ts'), path],
        { uid: 65534, gid: 65534, encoding: 'utf8', timeout: 30_000 },
      );
      expect(said.trim()).toBe(
        `refused journal unavailable (open): ${state} cannot be written by this user (uid 65534, EACCES), so ${path}.lock cannot be created to lock the journal (one daemon per journal); give it to the daemon's user (stateDir, journal.path)`,
      );
      expect(readdirSync(state)).toEqual([]);
    } finally {
      done();
    }
  }, 30_000);
});

describe('the journal lock through a symlink', () => {
  beforeEach(() => {
    ({ dir, cleanup } = tempDir('sluice-lock-'));
  });
  afterEach(() => {
    for (const c of children.splice(0)) c.kill('SIGKILL');
    cleanup();
  });

  it('is one lock for the journal and a symlink to it: the second daemon is refused', async () => {
    // The journal moved to a larger disk, a symlink left at its old place (the service's
    // stateDir), and a configuration naming the new place.
    const disk = join(dir, 'data');
    mkdirSync(disk);
    const moved = join(disk, 'journal.db');
    SqliteJournal.open({ path: moved }).close();
    const state = join(dir, 'state');
    mkdirSync(state);
    const link = join(state, 'journal.db');
    symlinkSync(moved, link);

    expect(await lockInChild(link)).toBe('locked');
    expect(() => lockJournal(moved)).toThrow(
      `the journal ${moved} is in use by another sluiced (it holds ${moved}.lock)`,
    );
    // And the other way round, with a folder reached through a symlink.
    for (const c of children.splice(0)) c.kill('SIGKILL');
    const linkedFolder = join(dir, 'state-link');
    symlinkSync(disk, linkedFolder);
    expect(await lockInChild(moved)).toBe('locked');
    expect(() => lockJournal(join(linkedFolder, 'journal.db'))).toThrow(
      /in use by another sluiced/,
    );
  }, 30_000);
});
