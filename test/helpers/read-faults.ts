import type { Statement } from 'better-sqlite3';
import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';

/**
 * Fails the journal's reads of chosen commands (Journal.get) on demand, as an I/O error on a
 * read would (SQLITE_IOERR_READ: the journal translates it to JournalUnavailableError), while
 * every other read and every write goes through. A double, for a fault no simulator or
 * filesystem can aim: a read-only or full filesystem fails writes, not reads, and a journal
 * that cannot be opened fails every read and write at once (a stop could then not even be
 * accepted), which hides what one failed read does inside a stop's take-over. The journal's
 * connection is private: reached here, in tests, for this fault alone (one connection per
 * journal object; a reopened connection prepares its statements anew, without the fault).
 */
export interface ReadFaults {
  /** While true, reads of the armed keys fail. */
  armed: boolean;
  /** Reads failed so far. */
  readonly failed: number;
}

export function readFaults(journal: SqliteJournal, keys: ReadonlySet<string>): ReadFaults {
  let failed = 0;
  const stmt = (journal as unknown as { conn: { stmts: { get: Statement } } }).conn.stmts.get;
  const get = stmt.get.bind(stmt);
  const faults = {
    armed: true,
    get failed() {
      return failed;
    },
  };
  // The statement is `SELECT * FROM commands WHERE scope = ? AND key = ?`.
  stmt.get = (...params: unknown[]) => {
    if (faults.armed && keys.has(String(params[1]))) {
      failed++;
      throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_READ' });
    }
    return get(...params);
  };
  return faults;
}
