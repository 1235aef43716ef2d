import type { Database } from 'better-sqlite3';
import { isTerminal, type Action, type CommandState, type ResultCode } from '../core/command.js';
import { JournalUnavailableError } from '../core/errors.js';
import type { CommandRecord, IssuedAtSource, Observation } from '../core/journal.js';
import { renderResult } from '../core/result.js';

/** A row of the commands table, as SQLite returns it. */
export interface CommandRow {
  /** The rowid: what the events of the command refer to. */
  id: number;
  scope: string;
  key: string;
  fingerprint: string;
  device: string;
  action: string;
  position: number | null;
  issued_at: number;
  issued_at_source: string;
  ttl_ms: number;
  deadline: number;
  intake: string;
  state: string;
  code: string | null;
  fault_code: string | null;
  seq: number | null;
  attempts: number;
  observed_before: string | null;
  observed: string | null;
  detail: string | null;
  accepted_at: number;
  dispatched_at: number | null;
  settled_at: number | null;
}

/** A row of the events table (a command's history), as SQLite returns it. */
export interface EventRow {
  at: number;
  from_state: string | null;
  to_state: string;
  intake: string;
  detail: string;
}

/** SQLite result codes that mean "this journal cannot take a durable write now". */
const UNAVAILABLE =
  /^SQLITE_(FULL|READONLY|BUSY|LOCKED|IOERR|CANTOPEN|CORRUPT|NOTADB|PROTOCOL|PERM|AUTH)/;

/** What an operator does about `code` on the journal at `path`, when there is something to do. */
function hint(code: string, path: string, what: string): string {
  if (code === 'SQLITE_FULL') {
    return `: the filesystem of ${path} is full; commands are refused until space is freed there, then taken again without a restart`;
  }
  // A write (a WAL reader waits for no writer) whose lock another connection held past the
  // journal's busy wait: sluiced is the journal's only writer (writer-lock.ts), so it is another
  // program — a sqlite3 shell or a backup tool with a transaction open. SQLITE_BUSY alone, in
  // /readyz and `sluicectl health`, named neither the file nor what holds it.
  if (code === 'SQLITE_BUSY' && what !== 'read' && what !== 'open') {
    return `: another program holds the write lock of ${path} (a sqlite3 shell or a backup with a transaction open) for longer than sluiced waits for it (journal.busyTimeoutMs); commands are refused until it lets go, then taken again without a restart`;
  }
  // A page damaged while the daemon runs (a failing disk): it does not mend itself, and
  // SQLITE_CORRUPT alone named neither the file nor what to do. The journal is checked at every
  // start (integrity.ts): started again on it as it is, sluiced refuses it.
  if (code.startsWith('SQLITE_CORRUPT')) {
    return `: the journal ${path} is damaged; commands that need its damaged pages are refused: stop sluiced, then restore the journal from a backup, or move it aside with its -wal and -shm files`;
  }
  return '';
}

/** Read again after a statement (the compiler would take the earlier check for it). */
export function stillInTransaction(db: Database): boolean {
  return db.inTransaction;
}

/**
 * An SQLite error that means the journal cannot be used now, as JournalUnavailableError. With
 * the journal's `path`, a full filesystem is said in words an operator acts on (/readyz,
 * `sluicectl health`): SQLITE_FULL alone names neither the cause nor where to free space.
 */
export function translate(error: unknown, what: string, path?: string): never {
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && UNAVAILABLE.test(code)) {
    const advice = path === undefined ? '' : hint(code, path, what);
    throw new JournalUnavailableError(`journal unavailable (${what}): ${code}${advice}`, {
      cause: error,
    });
  }
  throw error;
}

/**
 * A record as stored, with its result rendered: the result is a pure function of the settled
 * record (renderResult), so it is not stored twice (journal ≤ 1 KB per retained command).
 */
export function rowToRecord(row: CommandRow): CommandRecord {
  const record: CommandRecord = {
    scope: row.scope,
    key: row.key,
    fingerprint: row.fingerprint,
    device: row.device,
    action: row.action as Action,
    position: row.position,
    issuedAt: row.issued_at,
    issuedAtSource: row.issued_at_source as IssuedAtSource,
    ttlMs: row.ttl_ms,
    deadline: row.deadline,
    intake: row.intake,
    state: row.state as CommandState,
    code: row.code as ResultCode | null,
    faultCode: row.fault_code,
    seq: row.seq,
    attempts: row.attempts,
    observedBefore:
      row.observed_before === null ? null : (JSON.parse(row.observed_before) as Observation),
    observed: row.observed === null ? null : (JSON.parse(row.observed) as Observation),
    detail: row.detail,
    acceptedAt: row.accepted_at,
    dispatchedAt: row.dispatched_at,
    settledAt: row.settled_at,
    response: null,
  };
  return isTerminal(record.state) ? { ...record, response: renderResult(record) } : record;
}
