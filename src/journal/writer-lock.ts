import { accessSync, constants, existsSync, mkdirSync, realpathSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { JournalInUseError, JournalUnavailableError } from '../core/errors.js';

/**
 * One daemon per journal. Two daemons on one journal would each work the other's commands: the
 * sweep of one takes up a command the other has dispatched and is about to write, proves it
 * not applied once the redispatch guard has passed, and writes it a second time (I1). So the
 * daemon holds, for its whole life, an exclusive lock on a file beside the journal's own file
 * (`<journal>.lock`, symlinks resolved), and a second daemon on the same journal refuses to start.
 *
 * The lock is SQLite's own (an EXCLUSIVE transaction on a small database file, held open): a
 * POSIX advisory lock the kernel drops when the process ends, however it ends — a killed daemon
 * leaves nothing to clean up, and a restart takes the lock at once. The journal itself is not
 * locked this way: sluicectl and the status page read it while the daemon runs.
 */
export interface WriterLock {
  readonly path: string;
  release(): void;
}

export function lockJournal(journalPath: string): WriterLock {
  let path = `${journalPath}.lock`;
  let db: BetterSqlite3.Database;
  try {
    mkdirSync(dirname(journalPath), { recursive: true });
    path = `${realJournalPath(journalPath)}.lock`;
    db = new BetterSqlite3(path, { timeout: 0 });
  } catch (error) {
    // SQLite's "unable to open database file" (and Node's ENOENT for a folder it could not
    // create on a read-only filesystem) named no cause: said as what it is when it is one.
    const why = unwritable(path);
    if (why !== null) {
      throw new JournalUnavailableError(
        `journal unavailable (open): ${why.what}, so ${path} cannot be created to lock the journal (one daemon per journal); ${why.todo}`,
        { cause: error },
      );
    }
    throw new JournalInUseError(
      `cannot open the journal's lock file ${path}: ${(error as Error).message}`,
      { cause: error },
    );
  }
  try {
    accessSync(path, constants.W_OK);
  } catch (error) {
    db.close();
    // SQLite opens a file it may not write read-only, without a word, and an EXCLUSIVE
    // transaction on such a connection excludes no one: two daemons both "held" the lock (a
    // start on a read-only filesystem, or a lock file another user left), and once the journal
    // could be written both wrote it (I1). Refused, as when the lock file cannot be created.
    const code = (error as { code?: unknown }).code;
    throw new JournalUnavailableError(
      code === 'EROFS'
        ? `journal unavailable (open): the filesystem of ${journalPath} is read-only, so ${path} cannot be locked (one daemon per journal); start sluiced again once it is writable`
        : `journal unavailable (open): ${path} cannot be written by this user (${String(code)}), so it cannot be locked (one daemon per journal); give it, and the journal, to the daemon's user`,
      { cause: error },
    );
  }
  try {
    db.exec('BEGIN EXCLUSIVE');
  } catch (error) {
    db.close();
    const code = (error as { code?: unknown }).code;
    if (code === 'SQLITE_FULL') {
      // Not another daemon: taking the lock writes (SQLite's rollback journal beside the lock
      // file), and so does opening the journal (its shared-memory index). Said as what it is.
      throw new JournalUnavailableError(
        `journal unavailable (open): SQLITE_FULL: the filesystem of ${journalPath} is full (${path} cannot be locked); free space there, then start sluiced again`,
        { cause: error },
      );
    }
    if (typeof code === 'string' && code.startsWith('SQLITE_BUSY')) {
      throw new JournalInUseError(
        `the journal ${journalPath} is in use by another sluiced (it holds ${path}); one daemon per journal: stop the other first`,
        { cause: error },
      );
    }
    throw new JournalInUseError(
      `cannot lock the journal's lock file ${path}: ${(error as Error).message}`,
      { cause: error },
    );
  }
  return {
    path,
    release: () => {
      if (!db.open) return;
      try {
        db.exec('ROLLBACK');
      } finally {
        db.close();
      }
    },
  };
}

/**
 * Why a file cannot be created at `path`, when the reason is the filesystem or the folder's
 * permissions: found on the nearest folder of it that exists (the rest would be created in
 * it). Null for another reason (the open's own error then says it).
 */
export function unwritable(path: string): { what: string; todo: string } | null {
  let folder = dirname(path);
  while (!existsSync(folder) && dirname(folder) !== folder) folder = dirname(folder);
  try {
    accessSync(folder, constants.W_OK);
    return null;
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    if (code === 'EROFS') {
      return {
        what: `the filesystem of ${folder} is read-only`,
        todo: 'start sluiced again once it is writable',
      };
    }
    if (code === 'EACCES' || code === 'EPERM') {
      return {
        what: `${folder} cannot be written by this user (uid ${String(process.getuid?.())}, ${code})`,
        todo: "give it to the daemon's user (stateDir, journal.path)",
      };
    }
    return null;
  }
}

/**
 * The journal's own file, its symlinks resolved (the file's, or its folder's while it does not
 * exist yet). The lock sits beside it: a journal moved to a larger disk and reached through a
 * symlink at its old place was locked beside the link by one daemon and beside the file by
 * another (a configuration naming the new place), and both ran on it — SQLite itself follows
 * the link to one WAL, so both wrote the one journal (I1).
 */
function realJournalPath(journalPath: string): string {
  try {
    return realpathSync(journalPath);
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'ENOENT') throw error;
    return join(realpathSync(dirname(journalPath)), basename(journalPath));
  }
}
