import { execFileSync } from 'node:child_process';
import { closeSync, mkdirSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { JournalDamagedError, JournalUnavailableError } from '../../src/core/errors.js';
import type { NewCommand } from '../../src/core/journal.js';
import { refuseDamagedJournal } from '../../src/journal/integrity.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import {
  failingDisk,
  journalLeftByKilledDaemon,
  type FailingDisk,
} from '../helpers/failing-disk.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { tmpfsAvailable } from '../reliability/support.js';

/**
 * The start's check of the journal (src/journal/integrity.ts) on real journal files. The
 * daemon's refusal of garbage in a page is test/daemon/damaged-journal.test.ts; here, a page
 * whose content is well formed but stale (a write the disk lost: an older version of the page
 * read back), which SQLite reads without an error: the keys claimed since were free again, and
 * their retries ran as new commands (I1). And a journal on a disk that fails reads of it (an I/O
 * error, a failing sector): a real one, an ext4 image on a loop device cut short inside the file
 * (test/helpers/failing-disk.ts), whose reads past the cut the kernel fails with EIO. The check
 * it stops must not pass it (its open does not read every page), and its refusal names the I/O
 * failure, not damage. The journal of a daemon killed before SQLite's first checkpoint holds its
 * schema version in its log alone: the check reads it through the log.
 */

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-integrity-'));
});
afterEach(() => {
  cleanup();
});

function command(key: string): NewCommand {
  return {
    scope: 'plant',
    key,
    fingerprint: `f-${key}`,
    device: 'inlet-valve',
    action: 'open',
    position: null,
    issuedAt: 1,
    issuedAtSource: 'issuer',
    ttlMs: 30_000,
    deadline: 30_001,
    intake: 'https',
    acceptedAt: 1,
  };
}

function claim(path: string, from: number, to: number): void {
  const j = SqliteJournal.open({ path, groupCommit: true });
  try {
    for (let i = from; i < to; i++) j.claim(command(`key-${i}`));
  } finally {
    j.close();
  }
}

function keyLeaves(path: string): Set<number> {
  const db = new BetterSqlite3(path, { readonly: true });
  try {
    return new Set(
      (
        db
          .prepare("SELECT pageno FROM dbstat WHERE name = 'commands_key' AND pagetype = 'leaf'")
          .all() as { pageno: number }[]
      ).map((r) => r.pageno),
    );
  } finally {
    db.close();
  }
}

describe("the start's check of the journal", () => {
  it('passes a whole journal, and an absent one, and leaves a folder to the open', async () => {
    const path = join(dir, 'journal.db');
    await refuseDamagedJournal(path);
    // journal.path naming a folder: the journal's open says what it is.
    mkdirSync(join(dir, 'folder'));
    await refuseDamagedJournal(join(dir, 'folder'));
    claim(path, 0, 100);
    await refuseDamagedJournal(path);
  });

  it("leaves another program's database as it is, its interrupted transaction too", async () => {
    // journal.path pointed at the wrong file, one whose program was killed mid-transaction:
    // a connection opened on it plays its rollback journal back into it. The journal's open
    // refuses such a file byte for byte (sqlite-journal.test.ts); the check before it must not
    // have changed it.
    const path = join(dir, 'other.db');
    const crash = `const D = require('better-sqlite3'); const db = new D(${JSON.stringify(path)});
      db.exec('CREATE TABLE readings (tag TEXT, value BLOB)');
      db.pragma('cache_size = 2'); db.exec('BEGIN');
      const put = db.prepare('INSERT INTO readings VALUES (?, randomblob(4000))');
      for (let i = 0; i < 200; i++) put.run('t' + i);
      process.kill(process.pid, 'SIGKILL');`;
    expect(() => execFileSync(process.execPath, ['-e', crash], { cwd: ROOT })).toThrow();
    const before = readFileSync(path);
    const journal = readFileSync(`${path}-journal`);
    expect(journal.length).toBeGreaterThan(0);
    await refuseDamagedJournal(path);
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(readFileSync(`${path}-journal`).equals(journal)).toBe(true);
  });

  it('refuses a journal with a stale page of its key index, whose keys would be claimed anew', async () => {
    const path = join(dir, 'journal.db');
    claim(path, 0, 1_000);
    const old = readFileSync(path);
    const oldLeaves = keyLeaves(path);
    claim(path, 1_000, 1_100);
    const now = readFileSync(path);
    const pageSize = 4096;
    const at = (buf: Buffer, page: number): Buffer =>
      buf.subarray((page - 1) * pageSize, page * pageSize);
    // A leaf of the key index then and now, changed by the later claims: its older version
    // written back.
    const page = [...keyLeaves(path)].find(
      (p) => oldLeaves.has(p) && !at(old, p).equals(at(now, p)),
    );
    expect(page).toBeDefined();
    const fd = openSync(path, 'r+');
    writeSync(fd, at(old, page!), 0, pageSize, (page! - 1) * pageSize);
    closeSync(fd);
    const damaged = readFileSync(path);

    let refused: unknown = null;
    try {
      await refuseDamagedJournal(path);
    } catch (error) {
      refused = error;
    }
    expect(refused).toBeInstanceOf(JournalUnavailableError);
    expect((refused as Error).message).toContain(
      `journal unavailable (open): ${path} is damaged (SQLite's check: wrong # of entries in index commands_key`,
    );
    expect((refused as Error).message).toContain(
      'Restore the journal from a backup, or move it aside with its -wal and -shm files',
    );
    expect(readFileSync(path).equals(damaged)).toBe(true);

    // What the check keeps the daemon from: the journal opens, and keys it holds are new again.
    const j = SqliteJournal.open({ path, groupCommit: true });
    try {
      const again = Array.from({ length: 1_100 }, (_, i) => `key-${i}`).filter(
        (key) => j.claim(command(key)).kind === 'new',
      );
      expect(again.length).toBeGreaterThan(0);
    } finally {
      j.close();
    }
  });
});

/** Whether a read of `path` at byte `at` fails with EIO (the disk's answer past the cut). */
function readFails(path: string, at: number): boolean {
  const fd = openSync(path, 'r');
  try {
    readSync(fd, Buffer.alloc(4096), 0, 4096, at);
    return false;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EIO') return true;
    throw error;
  } finally {
    closeSync(fd);
  }
}

describe.runIf(tmpfsAvailable())("the start's check of a journal the disk cannot read", () => {
  let disk: FailingDisk | null = null;
  afterEach(() => {
    disk?.remove();
    disk = null;
  });

  async function refusal(path: string): Promise<Error> {
    let refused: unknown = null;
    try {
      await refuseDamagedJournal(path);
    } catch (error) {
      refused = error;
    }
    expect(refused).toBeInstanceOf(JournalDamagedError);
    return refused as Error;
  }

  it('refuses a journal whose log (-wal) it cannot read past a point, saying the disk failed a read', async () => {
    // What a killed daemon leaves: commits in the log, not yet copied into the file. The first
    // connection's open reads the whole log (SQLite's recovery of its index): the read past the
    // cut stops the check with an error, SQLITE_IOERR_CORRUPTFS (EIO).
    const files = await journalLeftByKilledDaemon(join(dir, 'source.db'));
    const wal = files[1]!.data.length;
    expect(wal).toBeGreaterThan(200_000);
    disk = failingDisk(dir, files);
    const path = join(disk.folder, 'journal.db');
    disk.failReadsFrom('journal.db-wal', wal / 2);
    expect(readFails(`${path}-wal`, wal - 4096)).toBe(true);
    expect(readFails(`${path}-wal`, 0)).toBe(false);

    const refused = await refusal(path);
    expect(refused.message).toContain(
      `journal unavailable (open): ${path} cannot be read: an I/O error, the disk failed to read part of it or of its -wal file (SQLite's check: SQLITE_IOERR_CORRUPTFS: disk I/O error)`,
    );
    expect(refused.message).not.toContain('damaged');
    expect(refused.message).toContain('restore the journal from a backup onto a sound disk');
  });

  it('refuses the journal of a daemon killed before its first checkpoint (its schema version in its log alone) whose log it cannot read past a point', async () => {
    // The file holds the switch to WAL alone, no schema version: taken for another program's
    // file, the journal was passed unchecked, and the open that followed called it damaged.
    const files = await journalLeftByKilledDaemon(join(dir, 'source.db'), true);
    expect(files[0]!.data.readUInt32BE(60)).toBe(0);
    const wal = files[1]!.data.length;
    expect(wal).toBeGreaterThan(200_000);
    disk = failingDisk(dir, files);
    const path = join(disk.folder, 'journal.db');
    disk.failReadsFrom('journal.db-wal', wal / 2);
    expect(readFails(`${path}-wal`, wal - 4096)).toBe(true);

    const refused = await refusal(path);
    expect(refused.message).toContain(
      `journal unavailable (open): ${path} cannot be read: an I/O error, the disk failed to read part of it or of its -wal file (SQLite's check: SQLITE_IOERR_CORRUPTFS: disk I/O error)`,
    );
    expect(refused.message).not.toContain('damaged');
  });

  it('refuses a journal with pages it cannot read, saying the disk failed a read, not that they are damaged', async () => {
    // Closed, its log copied into the file: quick_check reports each page it cannot read.
    const source = join(dir, 'source.db');
    claim(source, 0, 2_000);
    const data = readFileSync(source);
    expect(data.length).toBeGreaterThan(200_000);
    disk = failingDisk(dir, [{ name: 'journal.db', data }]);
    const path = join(disk.folder, 'journal.db');
    disk.failReadsFrom('journal.db', data.length / 2);
    expect(readFails(path, data.length - 4096)).toBe(true);
    expect(readFails(path, 0)).toBe(false);

    const refused = await refusal(path);
    expect(refused.message).toContain(
      `journal unavailable (open): ${path} cannot be read: an I/O error`,
    );
    // quick_check's own words: the page, and SQLITE_IOERR_CORRUPTFS (8458).
    expect(refused.message).toMatch(/page \d+: unable to get the page\. error code=8458/);
    expect(refused.message).not.toContain('is damaged');
  });
});
