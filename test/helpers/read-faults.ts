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

/**
 * Makes the runs of the journal's statement `name` (its `get` or `all`) fail as an I/O error on
 * a read would while the returned faults are armed and `fails(params, failed so far)` holds;
 * every other run goes through.
 */
function statementFailing(
  journal: SqliteJournal,
  name: string,
  method: 'get' | 'all',
  armed: boolean,
  fails: (params: readonly unknown[], failed: number) => boolean,
): ReadFaults {
  let failed = 0;
  const stmt = (journal as unknown as { conn: { stmts: Record<string, Statement> } }).conn.stmts[
    name
  ]!;
  const runs = stmt as unknown as Record<'get' | 'all', (...params: unknown[]) => unknown>;
  const run = runs[method].bind(stmt);
  const faults = {
    armed,
    get failed() {
      return failed;
    },
  };
  runs[method] = (...params: unknown[]) => {
    if (faults.armed && fails(params, failed)) {
      failed++;
      throw Object.assign(new Error('disk I/O error'), { code: 'SQLITE_IOERR_READ' });
    }
    return run(...params);
  };
  return faults;
}

export function readFaults(journal: SqliteJournal, keys: ReadonlySet<string>): ReadFaults {
  // The statement is `SELECT * FROM commands WHERE scope = ? AND key = ?`.
  return statementFailing(journal, 'get', 'get', true, (params) => keys.has(String(params[1])));
}

/**
 * Fails the journal's lookups of chosen keys across identities (Journal.findByKey: the status
 * page's read of the keys in flight) while armed, as readFaults fails Journal.get: the same
 * double, for the same reason, on the statement `SELECT * FROM commands WHERE key = ?`.
 */
export function keyLookupFaults(journal: SqliteJournal, keys: ReadonlySet<string>): ReadFaults {
  return statementFailing(journal, 'byKey', 'all', false, (params) => keys.has(String(params[0])));
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
  return statementFailing(journal, name, 'all', true, matches);
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
  // Its parameters are named: { device, window, named }.
  return statementFailing(
    journal,
    'lastDispatched',
    'get',
    true,
    (params, failed) => failed < count && devices.has((params[0] as { device: string }).device),
  );
}

/**
 * Fails the journal's count of its open commands (Journal.openCounts: the status page's gateway
 * band, /metrics, /readyz) while armed, as readFaults fails Journal.get: the same double, for
 * the same reason, on the statement that counts them.
 */
export function openCountsFaults(journal: SqliteJournal): ReadFaults {
  return statementFailing(journal, 'openCounts', 'get', false, () => true);
}
