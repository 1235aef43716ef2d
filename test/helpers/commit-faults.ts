import type BetterSqlite3 from 'better-sqlite3';
import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';

/**
 * Fails COMMITs of a journal's group-commit batches on demand, as an I/O error that clears at
 * once would: the batch rolled back, none of its writes kept, the next commit fine. A double,
 * for a fault no simulator or filesystem can time: a full or read-only filesystem
 * (test/reliability/faults-journal.test.ts) fails every later write too, which hides what a
 * single lost batch does. The journal's connection is private: reached here, in tests, for
 * this fault alone (one connection per journal object; a restarted journal is a new object).
 */
export interface CommitFaults {
  /** The next COMMIT fails. */
  failNext(): void;
  /** COMMITs failed so far. */
  readonly failed: number;
}

const installed = new WeakMap<SqliteJournal, CommitFaults>();

export function commitFaults(journal: SqliteJournal): CommitFaults {
  const existing = installed.get(journal);
  if (existing !== undefined) return existing;
  let armed = false;
  let failed = 0;
  const db = (journal as unknown as { conn: { db: BetterSqlite3.Database } }).conn.db;
  const exec = db.exec.bind(db);
  db.exec = (sql: string) => {
    if (sql === 'COMMIT' && armed) {
      armed = false;
      failed++;
      exec('ROLLBACK');
      throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_WRITE' });
    }
    return exec(sql);
  };
  const faults: CommitFaults = {
    failNext: () => {
      armed = true;
    },
    get failed() {
      return failed;
    },
  };
  installed.set(journal, faults);
  return faults;
}
