import { closeSync, fdatasync, fsyncSync, mkdirSync, openSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import type { Database, Statement, Transaction } from 'better-sqlite3';
import {
  isTerminal,
  type Action,
  type CommandState,
  type OpenState,
  type ResultCode,
} from '../core/command.js';
import {
  JournalConflictError,
  JournalUnavailableError,
  JournalVersionError,
} from '../core/errors.js';
import type {
  Claim,
  CommandRecord,
  CommandRef,
  IssuedAtSource,
  Journal,
  JournalEvent,
  ListFilter,
  NewCommand,
  Observation,
  OpenRef,
  Rejection,
  SeqAllocator,
  Settlement,
} from '../core/journal.js';
import { renderResult } from '../core/result.js';
import { LATEST_VERSION, MIGRATIONS, createLatest } from './migrations.js';

export interface SqliteJournalOptions {
  /** Path of the journal file; its directory is created when missing. */
  readonly path: string;
  /**
   * How long a write waits for another process (the operator CLI) holding the write lock
   * before the journal counts as unavailable and intakes refuse. Bounded: an intake must
   * answer, not hang. Default 2000 ms.
   */
  readonly busyTimeoutMs?: number;
  readonly readonly?: boolean;
  /**
   * How often, at most, a connection that SQLite opened read-only is replaced by a new one
   * (see `write`). Default 1000 ms.
   */
  readonly reopenIntervalMs?: number;
  /**
   * Group commit: the writes of one event-loop turn run in one transaction, committed at the
   * turn's end; they return before their fsync, and durable() makes all of them durable with
   * one (the daemon awaits it before any acknowledgement, publication or controller write).
   * Off: every write is its own transaction, fsynced before its method returns.
   */
  readonly groupCommit?: boolean;
}

interface CommandRow {
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

interface EventRow {
  at: number;
  from_state: string | null;
  to_state: string;
  intake: string;
  detail: string;
}

/** SQLite result codes that mean "this journal cannot take a durable write now". */
const UNAVAILABLE =
  /^SQLITE_(FULL|READONLY|BUSY|LOCKED|IOERR|CANTOPEN|CORRUPT|NOTADB|PROTOCOL|PERM|AUTH)/;

/** Read again after a statement (the compiler would take the earlier check for it). */
function stillInTransaction(db: Database): boolean {
  return db.inTransaction;
}

function translate(error: unknown, what: string): never {
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && UNAVAILABLE.test(code)) {
    throw new JournalUnavailableError(`journal unavailable (${what}): ${code}`, { cause: error });
  }
  throw error;
}

/**
 * A record as stored, with its result rendered: the result is a pure function of the settled
 * record (renderResult), so it is not stored twice (journal ≤ 1 KB per retained command).
 */
function rowToRecord(row: CommandRow): CommandRecord {
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

/**
 * The command journal on SQLite, in WAL mode. Without `groupCommit`, synchronous=FULL: every
 * commit is on disk (fsync) before its method returns. With it (the daemon), the writes of a
 * turn share one transaction (commitBatch) and durable() makes them durable together (see
 * there). Writes run in IMMEDIATE transactions (savepoints inside a batch) so that a check and
 * the write that depends on it are atomic, also against other processes sharing the file (the
 * CLI).
 */
export class SqliteJournal implements Journal {
  private readonly options: SqliteJournalOptions;
  /** The open connection with its statements and transactions (replaced by a reopen). */
  private conn: Connection;
  /** A write failed SQLITE_READONLY: the connection may be read-only for good (see below). */
  private readOnlyConnection = false;
  private lastReopen = Number.NEGATIVE_INFINITY;
  private closed = false;
  /** Group commit: a write made since the last durability barrier began. */
  private unsynced = false;
  /** The barrier scheduled for the end of this turn (not yet begun). */
  private barrier: Promise<void> | null = null;
  /** The barrier begun last, while its fdatasync runs: it covers every commit before it. */
  private syncing: Promise<void> | null = null;
  /** fdatasyncs of the WAL running on libuv's thread pool. */
  private inFlight = 0;
  /** The WAL file, opened for its fdatasync (see durable()); null: not open yet. */
  private wal: { readonly fd: number; readonly conn: Connection } | null = null;
  /** Descriptors of WAL files of connections replaced while an fdatasync ran. */
  private readonly staleWal: number[] = [];
  private syncs = 0;
  /** Group commit: the open batch's COMMIT is scheduled (end of this event-loop turn). */
  private commitScheduled = false;
  /** A batch was lost (its COMMIT failed, or SQLite rolled it back): the next barrier fails. */
  private batchLost: Error | null = null;
  /** Batches committed (transactions of group commit): for the benchmark. */
  private batches = 0;
  /** Every commit made before this time (ms) is on disk: the last barrier's start. */
  private syncedBefore = Number.NEGATIVE_INFINITY;

  static open(options: SqliteJournalOptions): SqliteJournal {
    return new SqliteJournal(options);
  }

  private constructor(options: SqliteJournalOptions) {
    this.options = options;
    this.conn = SqliteJournal.connect(options);
  }

  /** Opens the file, migrates it, and prepares every statement and transaction on it. */
  private static connect(options: SqliteJournalOptions): Connection {
    const readonly = options.readonly ?? false;
    let db: Database;
    try {
      if (!readonly) mkdirSync(dirname(options.path), { recursive: true });
      db = new BetterSqlite3(options.path, {
        readonly,
        fileMustExist: readonly,
        timeout: options.busyTimeoutMs ?? 2000,
      });
    } catch (error) {
      translate(error, 'open');
    }
    try {
      const version = db.pragma('user_version', { simple: true }) as number;
      if (version > LATEST_VERSION) {
        db.close();
        throw new JournalVersionError(
          `journal ${options.path} has schema version ${version}, newer than this Sluice's ${LATEST_VERSION}; refusing to open it`,
        );
      }
      if (!readonly) {
        db.pragma('journal_mode = WAL');
        // FULL: the WAL is fsynced at every commit, so an acknowledged command survives power
        // loss. With group commit, NORMAL: commits append to the WAL and durable() fsyncs it
        // once for all of them before anything is acknowledged.
        db.pragma(options.groupCommit === true ? 'synchronous = NORMAL' : 'synchronous = FULL');
        migrate(db, version);
      }
    } catch (error) {
      if (error instanceof JournalVersionError) throw error;
      if (db.open) db.close();
      translate(error, 'open');
    }
    const s = prepare(db);
    const findRow = (ref: CommandRef): CommandRow => {
      const row = s.get.get(ref.scope, ref.key) as CommandRow | undefined;
      if (row === undefined) throw new JournalConflictError(`no command ${ref.key}`);
      return row;
    };

    const txClaim = db.transaction((c: NewCommand, rejection?: Rejection): Claim => {
      // RETURNING: the new row as inserted; none when the key was there already.
      const inserted = s.insert.get({
        scope: c.scope,
        key: c.key,
        fingerprint: c.fingerprint,
        device: c.device,
        action: c.action,
        position: c.position,
        issued_at: c.issuedAt,
        issued_at_source: c.issuedAtSource,
        ttl_ms: c.ttlMs,
        deadline: c.deadline,
        intake: c.intake,
        accepted_at: c.acceptedAt,
      });
      if (inserted !== undefined) {
        const row = inserted as CommandRow;
        s.eventOf.run(row.id, c.acceptedAt, null, 'accepted', c.intake, 'accepted');
        if (rejection === undefined) return { kind: 'new', record: rowToRecord(row) };
        return {
          kind: 'new',
          record: txSettle({ scope: c.scope, key: c.key }, 'accepted', {
            to: 'rejected',
            code: rejection.code,
            faultCode: null,
            observed: null,
            detail: rejection.detail,
            at: c.acceptedAt,
            intake: c.intake,
          }),
        };
      }
      const row = findRow(c);
      const record = rowToRecord(row);
      const same = record.fingerprint === c.fingerprint;
      s.eventOf.run(
        row.id,
        c.acceptedAt,
        record.state,
        record.state,
        c.intake,
        same ? 'duplicate' : 'key reuse refused: different payload',
      );
      return { kind: same ? 'duplicate' : 'reused', record };
    });

    const txDispatch = db.transaction(
      (
        ref: CommandRef,
        at: number,
        before: Observation,
        intake: string,
        allocate: SeqAllocator,
        detail: string | undefined,
      ): CommandRecord => {
        const row = findRow(ref);
        const current = rowToRecord(row);
        const last =
          (s.getSeq.get(current.device) as { last_seq: number } | undefined)?.last_seq ?? 0;
        const open = new Set(
          (s.openSeqs.all(current.device) as { seq: number }[]).map((row) => row.seq),
        );
        const seq = allocate(last, open);
        s.setSeq.run(current.device, seq);
        const beforeJson = JSON.stringify(before);
        const changed = s.dispatch.run({
          scope: ref.scope,
          key: ref.key,
          seq,
          at,
          before: beforeJson,
        });
        if (changed.changes !== 1) {
          throw new JournalConflictError(`command ${ref.key} is ${current.state}, not accepted`);
        }
        s.eventOf.run(
          row.id,
          at,
          'accepted',
          'dispatched',
          intake,
          detail === undefined ? `seq ${seq}` : `seq ${seq}; ${detail}`,
        );
        // The row as the UPDATE above left it, without reading it again: the columns it set,
        // the observation as read back from its JSON, the rest as read in this transaction.
        return {
          ...current,
          state: 'dispatched',
          seq,
          attempts: 1,
          dispatchedAt: at,
          observedBefore: JSON.parse(beforeJson) as Observation,
        };
      },
    );

    const txRedispatch = db.transaction(
      (ref: CommandRef, at: number, detail: string, intake: string): CommandRecord => {
        const changed = s.redispatch.run(ref.scope, ref.key);
        if (changed.changes !== 1) {
          throw new JournalConflictError(`command ${ref.key} cannot be dispatched again`);
        }
        const row = findRow(ref);
        s.eventOf.run(row.id, at, 'dispatched', 'dispatched', intake, `redispatch: ${detail}`);
        return rowToRecord(row);
      },
    );

    const txSettle = db.transaction(
      (ref: CommandRef, from: OpenState, st: Settlement): CommandRecord => {
        // RETURNING: the row as settled (none when it was not in `from`).
        const settled = s.settle.get({
          scope: ref.scope,
          key: ref.key,
          from,
          to: st.to,
          code: st.code,
          fault: st.faultCode,
          observed: st.observed === null ? null : JSON.stringify(st.observed),
          detail: st.detail,
          at: st.at,
        });
        if (settled === undefined) {
          const now = s.get.get(ref.scope, ref.key) as CommandRow | undefined;
          throw new JournalConflictError(
            `command ${ref.key} is ${now?.state ?? 'missing'}, not ${from}`,
          );
        }
        const row = settled as CommandRow;
        s.eventOf.run(row.id, st.at, from, st.to, st.intake, `${st.code}: ${st.detail}`);
        return rowToRecord(row);
      },
    );

    const txPurge = db.transaction((before: number, limit: number): number => {
      const victims = s.purgeCandidates.all(before, limit) as { scope: string; key: string }[];
      for (const v of victims) {
        s.deleteEvents.run(v.scope, v.key);
        s.deleteCommand.run(v.scope, v.key);
      }
      return victims.length;
    });
    return { db, stmts: s, txClaim, txDispatch, txRedispatch, txSettle, txPurge };
  }

  claim(command: NewCommand, rejection?: Rejection): Claim {
    return this.write('claim', (c) => c.txClaim.immediate(command, rejection));
  }

  get(ref: CommandRef): CommandRecord | undefined {
    try {
      const row = this.connection().stmts.get.get(ref.scope, ref.key) as CommandRow | undefined;
      return row === undefined ? undefined : rowToRecord(row);
    } catch (error) {
      return translate(error, 'read');
    }
  }

  findByKey(key: string): CommandRecord[] {
    try {
      return (this.connection().stmts.byKey.all(key) as CommandRow[]).map(rowToRecord);
    } catch (error) {
      return translate(error, 'read');
    }
  }

  markDispatched(
    ref: CommandRef,
    at: number,
    before: Observation,
    intake: string,
    allocate: SeqAllocator,
    detail?: string,
  ): CommandRecord {
    return this.write('dispatch', (c) =>
      c.txDispatch.immediate(ref, at, before, intake, allocate, detail),
    );
  }

  markRedispatched(ref: CommandRef, at: number, detail: string, intake: string): CommandRecord {
    return this.write('redispatch', (c) => c.txRedispatch.immediate(ref, at, detail, intake));
  }

  settle(ref: CommandRef, from: OpenState, settlement: Settlement): CommandRecord {
    return this.write('settle', (c) => c.txSettle.immediate(ref, from, settlement));
  }

  note(ref: CommandRef, at: number, detail: string, intake: string): void {
    this.write('note', (c) => {
      const row = c.stmts.get.get(ref.scope, ref.key) as CommandRow | undefined;
      if (row === undefined) throw new JournalConflictError(`no command ${ref.key}`);
      c.stmts.eventOf.run(row.id, at, row.state, row.state, intake, detail);
    });
  }

  history(ref: CommandRef): JournalEvent[] {
    try {
      return (this.connection().stmts.history.all(ref.scope, ref.key) as EventRow[]).map((e) => ({
        at: e.at,
        from: e.from_state as CommandState | null,
        to: e.to_state as CommandState,
        intake: e.intake,
        detail: e.detail,
      }));
    } catch (error) {
      return translate(error, 'read');
    }
  }

  listOpen(): CommandRecord[] {
    try {
      return (this.connection().stmts.open.all() as CommandRow[]).map(rowToRecord);
    } catch (error) {
      return translate(error, 'read');
    }
  }

  listOpenRefs(): OpenRef[] {
    try {
      return this.connection().stmts.openRefs.all() as OpenRef[];
    } catch (error) {
      return translate(error, 'read');
    }
  }

  list(filter: ListFilter): CommandRecord[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    if (filter.device !== undefined) {
      where.push('device = ?');
      params.push(filter.device);
    }
    if (filter.state !== undefined) {
      where.push('state = ?');
      params.push(filter.state);
    }
    if (filter.since !== undefined) {
      where.push('accepted_at >= ?');
      params.push(filter.since);
    }
    const sql = `SELECT * FROM commands ${where.length > 0 ? `WHERE ${where.join(' AND ')}` : ''}
      ORDER BY accepted_at DESC LIMIT ?`;
    params.push(filter.limit ?? 1000);
    try {
      return (
        this.connection()
          .db.prepare(sql)
          .all(...params) as CommandRow[]
      ).map(rowToRecord);
    } catch (error) {
      return translate(error, 'read');
    }
  }

  /** How many commands and history events the journal holds now (the metrics' journal rows). */
  rowCounts(): { commands: number; events: number } {
    try {
      const db = this.connection().db;
      const count = (table: 'commands' | 'events'): number =>
        (db.prepare(`SELECT count(*) AS n FROM ${table}`).get() as { n: number }).n;
      return { commands: count('commands'), events: count('events') };
    } catch (error) {
      return translate(error, 'read');
    }
  }

  purgeSettled(before: number, limit: number): number {
    return this.write('purge', (c) => c.txPurge.immediate(before, limit));
  }

  checkWritable(): void {
    // A real write, committed on its own: it fails the way a claim would (full, read-only,
    // locked), at once rather than at the end of a batch.
    this.write('check', (c) => c.stmts.touch.run(new Date().toISOString()), false);
  }

  get syncPending(): boolean {
    return this.unsynced || this.inFlight > 0;
  }

  settledDurably(record: CommandRecord): boolean {
    if (this.options.groupCommit !== true || !this.syncPending) return true;
    // Settlement times are whole milliseconds of the same clock: strictly before the start of
    // a barrier that has completed means committed before it.
    return record.settledAt !== null && record.settledAt < this.syncedBefore;
  }

  /**
   * Group commit (option `groupCommit`): the turn's batch commits with synchronous=NORMAL,
   * which in WAL mode appends to the WAL without an fsync; the barrier then fdatasyncs the WAL
   * file, which carries every earlier commit to disk with it (the WAL is one append-only file,
   * so a crash can only lose a suffix of commits, never one in the middle) — what SQLite's
   * synchronous=FULL does at every commit, once for all of them. The fdatasync runs on libuv's
   * thread pool: the event loop goes on (other valves' reads and writes, the intakes) while the
   * disk works, and nothing waiting for this barrier is answered, published or written before
   * it has returned. Callers that arrive while a barrier is scheduled share it; one that
   * arrives while an fdatasync runs and has nothing new to sync waits for that one; one with
   * writes of its own gets a barrier of its own, begun at once (fdatasyncs of one file may
   * run side by side: each covers what was written before it began). A batch that could not
   * be committed, or an fdatasync that failed, fails the barrier (nothing of it may be
   * acknowledged).
   */
  durable(): Promise<void> {
    if (!this.unsynced && this.batchLost === null) return this.syncing ?? Promise.resolve();
    this.barrier ??= new Promise<void>((resolve, reject) => {
      setImmediate(() => {
        this.barrier = null;
        // The batch of this turn first: its COMMIT is what the fdatasync below carries to disk.
        this.commitBatch();
        const lost = this.batchLost;
        if (lost !== null) {
          this.batchLost = null;
          reject(lost);
          return;
        }
        if (!this.unsynced) {
          // Begun by another caller meanwhile (a graceful stop, a test): wait for that one.
          (this.syncing ?? Promise.resolve()).then(resolve, reject);
          return;
        }
        this.beginSync().then(resolve, reject);
      });
    });
    return this.barrier;
  }

  /** One fdatasync of the WAL for every commit made so far (see durable()). */
  private beginSync(): Promise<void> {
    const startedAt = Date.now();
    let fd: number;
    try {
      fd = this.walFd();
    } catch (error) {
      return Promise.reject(
        new JournalUnavailableError(
          `journal unavailable (sync): the WAL of ${this.options.path} cannot be opened: ${String(error)}`,
          { cause: error },
        ),
      );
    }
    this.unsynced = false;
    this.inFlight++;
    const done = new Promise<void>((resolve, reject) => {
      fdatasync(fd, (error) => {
        this.inFlight--;
        if (this.closed) this.closeWal();
        else this.closeStaleWal();
        if (error !== null) {
          // Its commits may not be on disk: nobody waiting for them is answered, and they count
          // as unsynced again, so that nothing later vouches for them without an fdatasync that
          // succeeded (as a failed fsync of SQLite's own commit would leave them).
          this.unsynced = true;
          reject(
            new JournalUnavailableError(
              `journal unavailable (sync): ${error.code ?? error.message}`,
              {
                cause: error,
              },
            ),
          );
          return;
        }
        this.syncs++;
        this.syncedBefore = Math.max(this.syncedBefore, startedAt);
        resolve();
      });
    });
    this.syncing = done;
    const forget = (): void => {
      if (this.syncing === done) this.syncing = null;
    };
    done.then(forget, forget);
    return done;
  }

  /**
   * The WAL file's descriptor for the barrier's fdatasync. SQLite creates the WAL beside the
   * journal on the first write in WAL mode and keeps that file while the connection is open
   * (it restarts it from the top after a checkpoint, the same file); it deletes it only when
   * its last connection closes. So the descriptor belongs to the connection: opened at the
   * first barrier on it, opened again after the connection was replaced (reopen), when the
   * WAL may be another file. A WAL opened here has its directory synced once, as SQLite does
   * for a file it created, so that the file itself survives a power cut.
   */
  private walFd(): number {
    if (this.wal !== null && this.wal.conn === this.conn) return this.wal.fd;
    // The last connection's descriptor: closed now, or by the fdatasync still using it.
    if (this.wal !== null) this.staleWal.push(this.wal.fd);
    this.wal = null;
    this.closeStaleWal();
    const path = `${this.options.path}-wal`;
    const fd = openSync(path, 'r');
    try {
      const dir = openSync(dirname(path), 'r');
      try {
        fsyncSync(dir);
      } finally {
        closeSync(dir);
      }
    } catch (error) {
      closeSync(fd);
      throw error;
    }
    this.wal = { fd, conn: this.conn };
    return fd;
  }

  private closeWal(): void {
    if (this.wal !== null) this.staleWal.push(this.wal.fd);
    this.wal = null;
    this.closeStaleWal();
  }

  /** Closes the descriptors no connection uses any more, once no fdatasync runs on them. */
  private closeStaleWal(): void {
    if (this.inFlight > 0) return;
    for (const fd of this.staleWal.splice(0)) {
      try {
        closeSync(fd);
      } catch {
        // Closed already.
      }
    }
  }

  /** Durability barriers (fsyncs of group commit) so far: for the benchmark and metrics. */
  get barriers(): number {
    return this.syncs;
  }

  /** Batches (write transactions of group commit) committed so far: for the benchmark. */
  get batchCommits(): number {
    return this.batches;
  }

  close(): void {
    // A batch still open is committed (not fsynced: a graceful stop awaited durable() first).
    this.commitBatch();
    this.closed = true;
    if (this.conn.db.open) this.conn.db.close();
    // An fdatasync still running keeps its descriptor until it returns.
    this.closeWal();
  }

  /**
   * Group commit's batch: the writes of one event-loop turn run inside one transaction (each
   * in a savepoint of its own, so a failed write undoes only itself), committed at the end of
   * the turn. Each page the turn's writes touch — the table's last page, each index's — goes
   * to the WAL once per batch instead of once per write, and one commit's bookkeeping serves
   * them all. The batch is durable only with the barrier's fsync (durable()); nothing is
   * acknowledged before it, as for single commits. If the batch cannot be committed (a full
   * disk), none of its writes happened: the next barrier fails, so that none is acknowledged.
   */
  private commitBatch(): void {
    const db = this.conn.db;
    if (!db.open || !db.inTransaction) return;
    try {
      db.exec('COMMIT');
      this.batches++;
    } catch (error) {
      // A failed COMMIT may leave the transaction open (SQLITE_BUSY) or have rolled it back.
      if (stillInTransaction(db)) {
        try {
          db.exec('ROLLBACK');
        } catch {
          // Rolled back already, or the connection failed: nothing of the batch stays.
        }
      }
      this.loseBatch(error);
    }
  }

  private loseBatch(error: unknown): void {
    const code = (error as { code?: unknown }).code;
    const reason = typeof code === 'string' ? code : String(error);
    this.batchLost = new JournalUnavailableError(
      `journal unavailable (commit): ${reason}; the writes of that moment were not kept`,
      { cause: error },
    );
    if (typeof code === 'string' && code.startsWith('SQLITE_READONLY')) {
      this.readOnlyConnection = true;
    }
  }

  private scheduleCommit(): void {
    if (this.commitScheduled) return;
    this.commitScheduled = true;
    setImmediate(() => {
      this.commitScheduled = false;
      this.commitBatch();
      // A lost batch fails the barrier its writers wait for (scheduled in the same turn, it
      // runs after this); with none waiting, the loss concerns no acknowledgement.
      if (this.barrier === null) this.batchLost = null;
    });
  }

  /**
   * Runs a write on the connection. SQLite opens a file it cannot write (a filesystem mounted
   * read-only when the daemon started) read-only without an error, and such a connection stays
   * read-only after the filesystem is writable again: every write fails SQLITE_READONLY until
   * the file is opened anew. So after such a failure the connection is replaced before the next
   * write (at most once per `reopenIntervalMs`): the intakes refuse while the journal cannot be
   * written (I5) and take commands again once it can, without a restart. Nothing is lost: a
   * failed write committed nothing, and the new connection reads the same file.
   */
  private write<T>(what: string, run: (c: Connection) => T, batch = true): T {
    const batched = batch && this.options.groupCommit === true;
    // A write of its own (a barrier, a check) commits the batch first: on this connection it
    // would run inside it otherwise.
    if (!batched) this.commitBatch();
    const connection = this.connection();
    let inBatch = false;
    try {
      if (batched) {
        if (!connection.db.inTransaction) {
          connection.db.exec('BEGIN IMMEDIATE');
          this.scheduleCommit();
        }
        inBatch = true;
      }
      // Inside the batch, better-sqlite3 runs the write's transaction as a savepoint.
      const result = run(connection);
      if (this.options.groupCommit === true) this.unsynced = true;
      return result;
    } catch (error) {
      // Some errors (a full disk, an I/O error) make SQLite roll the whole batch back.
      if (inBatch && !connection.db.inTransaction) this.loseBatch(error);
      const code = (error as { code?: unknown }).code;
      if (typeof code === 'string' && code.startsWith('SQLITE_READONLY')) {
        this.readOnlyConnection = true;
      }
      return translate(error, what);
    }
  }

  /** The connection, replaced first when it proved read-only or a replacement failed. */
  private connection(): Connection {
    if (this.closed || this.options.readonly === true) return this.conn;
    if (this.readOnlyConnection || !this.conn.db.open) this.reopen();
    if (!this.conn.db.open) {
      throw new JournalUnavailableError(
        `journal unavailable (open): ${this.options.path} could not be opened again`,
      );
    }
    return this.conn;
  }

  private reopen(): void {
    const now = performance.now();
    if (now - this.lastReopen < (this.options.reopenIntervalMs ?? 1_000)) return;
    this.lastReopen = now;
    // Closed first: SQLite shares a file's WAL index among the connections of a process, and a
    // new connection opened beside the old one would join its read-only index.
    if (this.conn.db.open) {
      if (this.conn.db.inTransaction) {
        this.loseBatch(new Error('the connection was replaced with a batch open'));
      }
      this.conn.db.close();
    }
    try {
      this.conn = SqliteJournal.connect(this.options);
      this.readOnlyConnection = false;
    } catch {
      // Left closed: the next use tries again (and refuses meanwhile, as unavailable).
    }
  }
}

/** An open journal file: the connection, its prepared statements and its transactions. */
interface Connection {
  readonly db: Database;
  readonly stmts: Statements;
  readonly txClaim: Transaction<(command: NewCommand, rejection?: Rejection) => Claim>;
  readonly txDispatch: Transaction<
    (
      ref: CommandRef,
      at: number,
      before: Observation,
      intake: string,
      allocate: SeqAllocator,
      detail: string | undefined,
    ) => CommandRecord
  >;
  readonly txRedispatch: Transaction<
    (ref: CommandRef, at: number, detail: string, intake: string) => CommandRecord
  >;
  readonly txSettle: Transaction<
    (ref: CommandRef, from: OpenState, s: Settlement) => CommandRecord
  >;
  readonly txPurge: Transaction<(before: number, limit: number) => number>;
}

type Statements = ReturnType<typeof prepare>;

function migrate(db: Database, from: number): void {
  if (from === 0) {
    db.transaction(() => {
      createLatest(db);
      db.pragma(`user_version = ${LATEST_VERSION}`);
    }).immediate();
    return;
  }
  let applied = 0;
  for (const migration of MIGRATIONS) {
    if (migration.version <= from) continue;
    db.transaction(() => {
      migration.up(db);
      db.pragma(`user_version = ${migration.version}`);
    }).immediate();
    applied++;
  }
  // A migration rewrites tables: move its pages into the database file and empty the WAL, so
  // that the copy does not hold twice the space on a small gateway filesystem.
  if (applied > 0) db.pragma('wal_checkpoint(TRUNCATE)');
}

function prepare(db: Database): {
  insert: Statement;
  get: Statement;
  byKey: Statement;
  eventOf: Statement;
  getSeq: Statement;
  openSeqs: Statement;
  setSeq: Statement;
  dispatch: Statement;
  redispatch: Statement;
  settle: Statement;
  history: Statement;
  open: Statement;
  openRefs: Statement;
  purgeCandidates: Statement;
  deleteEvents: Statement;
  deleteCommand: Statement;
  touch: Statement;
} {
  return {
    insert: db.prepare(`
      INSERT INTO commands (scope, key, fingerprint, device, action, position, issued_at,
        issued_at_source, ttl_ms, deadline, intake, state, accepted_at)
      VALUES (@scope, @key, @fingerprint, @device, @action, @position, @issued_at,
        @issued_at_source, @ttl_ms, @deadline, @intake, 'accepted', @accepted_at)
      ON CONFLICT (key, scope) DO NOTHING
      RETURNING *`),
    get: db.prepare('SELECT * FROM commands WHERE scope = ? AND key = ?'),
    byKey: db.prepare('SELECT * FROM commands WHERE key = ? ORDER BY accepted_at'),
    eventOf: db.prepare(`
      INSERT INTO events (command, at, from_state, to_state, intake, detail)
      VALUES (?, ?, ?, ?, ?, ?)`),
    getSeq: db.prepare('SELECT last_seq FROM device_seq WHERE device = ?'),
    openSeqs: db.prepare(`
      SELECT seq FROM commands
      WHERE state IN ('accepted', 'dispatched') AND device = ? AND seq IS NOT NULL`),
    setSeq: db.prepare(`
      INSERT INTO device_seq (device, last_seq) VALUES (?, ?)
      ON CONFLICT (device) DO UPDATE SET last_seq = excluded.last_seq`),
    dispatch: db.prepare(`
      UPDATE commands SET state = 'dispatched', seq = @seq, attempts = 1,
        dispatched_at = @at, observed_before = @before
      WHERE scope = @scope AND key = @key AND state = 'accepted'`),
    redispatch: db.prepare(`
      UPDATE commands SET attempts = attempts + 1
      WHERE scope = ? AND key = ? AND state = 'dispatched' AND attempts = 1`),
    settle: db.prepare(`
      UPDATE commands SET state = @to, code = @code, fault_code = @fault, observed = @observed,
        detail = @detail, settled_at = @at
      WHERE scope = @scope AND key = @key AND state = @from
      RETURNING *`),
    history: db.prepare(`
      SELECT at, from_state, to_state, intake, detail FROM events
      WHERE command = (SELECT id FROM commands WHERE scope = ? AND key = ?) ORDER BY id`),
    open: db.prepare(
      "SELECT * FROM commands WHERE state IN ('accepted', 'dispatched') ORDER BY accepted_at",
    ),
    openRefs: db.prepare(`
      SELECT scope, key, device, state FROM commands
      WHERE state IN ('accepted', 'dispatched') ORDER BY accepted_at`),
    purgeCandidates: db.prepare(`
      SELECT scope, key FROM commands
      WHERE settled_at IS NOT NULL AND settled_at < ?
        AND state IN ('confirmed', 'rejected', 'failed')
      ORDER BY settled_at LIMIT ?`),
    deleteEvents: db.prepare(
      'DELETE FROM events WHERE command = (SELECT id FROM commands WHERE scope = ? AND key = ?)',
    ),
    deleteCommand: db.prepare('DELETE FROM commands WHERE scope = ? AND key = ?'),
    touch: db.prepare(`
      INSERT INTO meta (key, value) VALUES ('writable-check', ?)
      ON CONFLICT (key) DO UPDATE SET value = excluded.value`),
  };
}
