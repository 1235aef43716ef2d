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

/**
 * Fails the journal's lookups of chosen keys across identities (Journal.findByKey: the status
 * page's read of the keys in flight) while armed, as readFaults fails Journal.get: the same
 * double, for the same reason, on the statement `SELECT * FROM commands WHERE key = ?`.
 */
export function keyLookupFaults(journal: SqliteJournal, keys: ReadonlySet<string>): ReadFaults {
  let failed = 0;
  const stmt = (journal as unknown as { conn: { stmts: { byKey: Statement } } }).conn.stmts.byKey;
  const all = stmt.all.bind(stmt);
  const faults = {
    armed: false,
    get failed() {
      return failed;
    },
  };
  stmt.all = (...params: unknown[]) => {
    if (faults.armed && keys.has(String(params[0]))) {
      failed++;
      throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_READ' });
    }
    return all(...params);
  };
  return faults;
}

/** The journal's statements recovery reads at a start (pipeline.ts, recover()). */
export type RecoveryStatement = 'openRefs' | 'stopsSince' | 'history';

/**
 * Fails the runs of one of the journal's statements while armed — every run, or those whose
 * parameters `matches` picks — as an I/O error on a read would (SQLITE_IOERR_READ: the journal
 * translates it to JournalUnavailableError), while every other read and every write goes
 * through. The same double as readFaults, for the reads of recovery at a start: `openRefs`
 * (Journal.listOpenRefs, every open command), `stopsSince` (the stops since the oldest open
 * command) and `history` (a command's events, by scope and key: the history of a device's last
 * dispatch, previous-write.ts, earlierLastWrite). Armed when the journal is
 * opened, before recovery (SimHarness.restart). No filesystem fault aims at one read of them:
 * the reads before it at the start (the journal's open, the earlier lives' write bounds, each
 * device's last dispatch) go to the same file, and a disk failing its reads fails those first;
 * another process's lock does not stop a reader of a journal in WAL mode.
 */
export function statementFaults(
  journal: SqliteJournal,
  name: RecoveryStatement,
  matches: (params: readonly unknown[]) => boolean = () => true,
): ReadFaults {
  let failed = 0;
  const stmts = (journal as unknown as { conn: { stmts: Record<RecoveryStatement, Statement> } })
    .conn.stmts;
  const stmt = stmts[name];
  const all = stmt.all.bind(stmt);
  const faults = {
    armed: true,
    get failed() {
      return failed;
    },
  };
  stmt.all = (...params: unknown[]) => {
    if (faults.armed && matches(params)) {
      failed++;
      throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_READ' });
    }
    return all(...params);
  };
  return faults;
}

/**
 * Fails the journal's reads of chosen devices' last dispatch (Journal.lastDispatched: what a
 * start reads for the late-echo watch and for the device's last write) while armed, as
 * readFaults fails Journal.get: the same double, for the same reason, on the statement that
 * reads it. `count`: only that many reads fail, then the fault disarms itself.
 */
export function lastDispatchFaults(
  journal: SqliteJournal,
  devices: ReadonlySet<string>,
  count = Infinity,
): ReadFaults {
  let failed = 0;
  const stmt = (journal as unknown as { conn: { stmts: { lastDispatched: Statement } } }).conn.stmts
    .lastDispatched;
  const get = stmt.get.bind(stmt);
  const faults = {
    armed: true,
    get failed() {
      return failed;
    },
  };
  // Its parameters are named: { device, window, named }.
  stmt.get = (...params: unknown[]) => {
    const { device } = params[0] as { device: string };
    if (faults.armed && failed < count && devices.has(device)) {
      failed++;
      throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_READ' });
    }
    return get(...params);
  };
  return faults;
}
