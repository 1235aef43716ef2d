import { mkdirSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import type { Database, Statement, Transaction } from 'better-sqlite3';
import type { Action, CommandState, OpenState, ResultCode } from '../core/command.js';
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
  Rejection,
  SeqAllocator,
  Settlement,
} from '../core/journal.js';
import { LATEST_VERSION, MIGRATIONS } from './migrations.js';

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
}

interface CommandRow {
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
  response: string | null;
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

function translate(error: unknown, what: string): never {
  const code = (error as { code?: unknown }).code;
  if (typeof code === 'string' && UNAVAILABLE.test(code)) {
    throw new JournalUnavailableError(`journal unavailable (${what}): ${code}`, { cause: error });
  }
  throw error;
}

function rowToRecord(row: CommandRow): CommandRecord {
  return {
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
    response: row.response,
  };
}

/**
 * The command journal on SQLite: WAL with synchronous=FULL, so every commit is on disk (fsync)
 * before a method returns. Writes run in IMMEDIATE transactions so that a check and the write
 * that depends on it are atomic, also against other processes sharing the file (the CLI).
 */
export class SqliteJournal implements Journal {
  private readonly db: Database;
  private readonly stmts: ReturnType<typeof prepare>;
  private readonly txClaim: Transaction<(command: NewCommand, rejection?: Rejection) => Claim>;
  private readonly txDispatch: Transaction<
    (
      ref: CommandRef,
      at: number,
      before: Observation,
      intake: string,
      allocate: SeqAllocator,
      detail: string | undefined,
    ) => CommandRecord
  >;
  private readonly txRedispatch: Transaction<
    (ref: CommandRef, at: number, detail: string, intake: string) => CommandRecord
  >;
  private readonly txSettle: Transaction<
    (ref: CommandRef, from: OpenState, s: Settlement) => CommandRecord
  >;
  private readonly txPurge: Transaction<(before: number, limit: number) => number>;

  static open(options: SqliteJournalOptions): SqliteJournal {
    return new SqliteJournal(options);
  }

  private constructor(options: SqliteJournalOptions) {
    const readonly = options.readonly ?? false;
    try {
      if (!readonly) mkdirSync(dirname(options.path), { recursive: true });
      this.db = new BetterSqlite3(options.path, {
        readonly,
        fileMustExist: readonly,
        timeout: options.busyTimeoutMs ?? 2000,
      });
    } catch (error) {
      translate(error, 'open');
    }
    try {
      const version = this.db.pragma('user_version', { simple: true }) as number;
      if (version > LATEST_VERSION) {
        this.db.close();
        throw new JournalVersionError(
          `journal ${options.path} has schema version ${version}, newer than this Sluice's ${LATEST_VERSION}; refusing to open it`,
        );
      }
      if (!readonly) {
        this.db.pragma('journal_mode = WAL');
        // FULL: the WAL is fsynced at every commit, so an acknowledged command survives power loss.
        this.db.pragma('synchronous = FULL');
        this.migrate(version);
      }
    } catch (error) {
      if (error instanceof JournalVersionError) throw error;
      if (this.db.open) this.db.close();
      translate(error, 'open');
    }
    this.stmts = prepare(this.db);
    const s = this.stmts;

    this.txClaim = this.db.transaction((c: NewCommand, rejection?: Rejection): Claim => {
      const inserted = s.insert.run({
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
      const row = s.get.get(c.scope, c.key) as CommandRow;
      if (inserted.changes === 1) {
        s.event.run(c.scope, c.key, c.acceptedAt, null, 'accepted', c.intake, 'accepted');
        if (rejection === undefined) return { kind: 'new', record: rowToRecord(row) };
        return {
          kind: 'new',
          record: this.txSettle({ scope: c.scope, key: c.key }, 'accepted', {
            to: 'rejected',
            code: rejection.code,
            faultCode: null,
            observed: null,
            detail: rejection.detail,
            at: c.acceptedAt,
            intake: c.intake,
            render: rejection.render,
          }),
        };
      }
      const record = rowToRecord(row);
      const same = record.fingerprint === c.fingerprint;
      s.event.run(
        c.scope,
        c.key,
        c.acceptedAt,
        record.state,
        record.state,
        c.intake,
        same ? 'duplicate' : 'key reuse refused: different payload',
      );
      return { kind: same ? 'duplicate' : 'reused', record };
    });

    this.txDispatch = this.db.transaction(
      (
        ref: CommandRef,
        at: number,
        before: Observation,
        intake: string,
        allocate: SeqAllocator,
        detail: string | undefined,
      ): CommandRecord => {
        const current = this.require(ref);
        const last =
          (s.getSeq.get(current.device) as { last_seq: number } | undefined)?.last_seq ?? 0;
        const open = new Set(
          (s.openSeqs.all(current.device) as { seq: number }[]).map((row) => row.seq),
        );
        const seq = allocate(last, open);
        s.setSeq.run(current.device, seq);
        const changed = s.dispatch.run({
          scope: ref.scope,
          key: ref.key,
          seq,
          at,
          before: JSON.stringify(before),
        });
        if (changed.changes !== 1) {
          throw new JournalConflictError(`command ${ref.key} is ${current.state}, not accepted`);
        }
        s.event.run(
          ref.scope,
          ref.key,
          at,
          'accepted',
          'dispatched',
          intake,
          detail === undefined ? `seq ${seq}` : `seq ${seq}; ${detail}`,
        );
        return this.require(ref);
      },
    );

    this.txRedispatch = this.db.transaction(
      (ref: CommandRef, at: number, detail: string, intake: string): CommandRecord => {
        const changed = s.redispatch.run(ref.scope, ref.key);
        if (changed.changes !== 1) {
          throw new JournalConflictError(`command ${ref.key} cannot be dispatched again`);
        }
        s.event.run(
          ref.scope,
          ref.key,
          at,
          'dispatched',
          'dispatched',
          intake,
          `redispatch: ${detail}`,
        );
        return this.require(ref);
      },
    );

    this.txSettle = this.db.transaction(
      (ref: CommandRef, from: OpenState, st: Settlement): CommandRecord => {
        const changed = s.settle.run({
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
        if (changed.changes !== 1) {
          const now = s.get.get(ref.scope, ref.key) as CommandRow | undefined;
          throw new JournalConflictError(
            `command ${ref.key} is ${now?.state ?? 'missing'}, not ${from}`,
          );
        }
        const settled = this.require(ref);
        const response = st.render(settled);
        s.respond.run(response, ref.scope, ref.key);
        s.event.run(ref.scope, ref.key, st.at, from, st.to, st.intake, `${st.code}: ${st.detail}`);
        return { ...settled, response };
      },
    );

    this.txPurge = this.db.transaction((before: number, limit: number): number => {
      const victims = s.purgeCandidates.all(before, limit) as { scope: string; key: string }[];
      for (const v of victims) {
        s.deleteEvents.run(v.scope, v.key);
        s.deleteCommand.run(v.scope, v.key);
      }
      return victims.length;
    });
  }

  claim(command: NewCommand, rejection?: Rejection): Claim {
    try {
      return this.txClaim.immediate(command, rejection);
    } catch (error) {
      return translate(error, 'claim');
    }
  }

  get(ref: CommandRef): CommandRecord | undefined {
    try {
      const row = this.stmts.get.get(ref.scope, ref.key) as CommandRow | undefined;
      return row === undefined ? undefined : rowToRecord(row);
    } catch (error) {
      return translate(error, 'read');
    }
  }

  findByKey(key: string): CommandRecord[] {
    try {
      return (this.stmts.byKey.all(key) as CommandRow[]).map(rowToRecord);
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
    try {
      return this.txDispatch.immediate(ref, at, before, intake, allocate, detail);
    } catch (error) {
      return translate(error, 'dispatch');
    }
  }

  markRedispatched(ref: CommandRef, at: number, detail: string, intake: string): CommandRecord {
    try {
      return this.txRedispatch.immediate(ref, at, detail, intake);
    } catch (error) {
      return translate(error, 'redispatch');
    }
  }

  settle(ref: CommandRef, from: OpenState, settlement: Settlement): CommandRecord {
    try {
      return this.txSettle.immediate(ref, from, settlement);
    } catch (error) {
      return translate(error, 'settle');
    }
  }

  note(ref: CommandRef, at: number, detail: string, intake: string): void {
    try {
      const current = this.require(ref);
      this.stmts.event.run(ref.scope, ref.key, at, current.state, current.state, intake, detail);
    } catch (error) {
      translate(error, 'note');
    }
  }

  history(ref: CommandRef): JournalEvent[] {
    try {
      return (this.stmts.history.all(ref.scope, ref.key) as EventRow[]).map((e) => ({
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
      return (this.stmts.open.all() as CommandRow[]).map(rowToRecord);
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
      return (this.db.prepare(sql).all(...params) as CommandRow[]).map(rowToRecord);
    } catch (error) {
      return translate(error, 'read');
    }
  }

  purgeSettled(before: number, limit: number): number {
    try {
      return this.txPurge.immediate(before, limit);
    } catch (error) {
      return translate(error, 'purge');
    }
  }

  checkWritable(): void {
    try {
      // A real durable write: it fails the way a claim would (full, read-only, locked).
      this.stmts.touch.run(new Date().toISOString());
    } catch (error) {
      translate(error, 'check');
    }
  }

  close(): void {
    if (this.db.open) this.db.close();
  }

  private require(ref: CommandRef): CommandRecord {
    const row = this.stmts.get.get(ref.scope, ref.key) as CommandRow | undefined;
    if (row === undefined) throw new JournalConflictError(`no command ${ref.key}`);
    return rowToRecord(row);
  }

  private migrate(from: number): void {
    for (const migration of MIGRATIONS) {
      if (migration.version <= from) continue;
      this.db
        .transaction(() => {
          migration.up(this.db);
          this.db.pragma(`user_version = ${migration.version}`);
        })
        .immediate();
    }
  }
}

function prepare(db: Database): {
  insert: Statement;
  get: Statement;
  byKey: Statement;
  event: Statement;
  getSeq: Statement;
  openSeqs: Statement;
  setSeq: Statement;
  dispatch: Statement;
  redispatch: Statement;
  settle: Statement;
  respond: Statement;
  history: Statement;
  open: Statement;
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
      ON CONFLICT (scope, key) DO NOTHING`),
    get: db.prepare('SELECT * FROM commands WHERE scope = ? AND key = ?'),
    byKey: db.prepare('SELECT * FROM commands WHERE key = ? ORDER BY accepted_at'),
    event: db.prepare(`
      INSERT INTO events (scope, key, at, from_state, to_state, intake, detail)
      VALUES (?, ?, ?, ?, ?, ?, ?)`),
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
      WHERE scope = @scope AND key = @key AND state = @from`),
    respond: db.prepare('UPDATE commands SET response = ? WHERE scope = ? AND key = ?'),
    history: db.prepare(
      'SELECT at, from_state, to_state, intake, detail FROM events WHERE scope = ? AND key = ? ORDER BY id',
    ),
    open: db.prepare(
      "SELECT * FROM commands WHERE state IN ('accepted', 'dispatched') ORDER BY accepted_at",
    ),
    purgeCandidates: db.prepare(`
      SELECT scope, key FROM commands
      WHERE settled_at IS NOT NULL AND settled_at < ?
        AND state IN ('confirmed', 'rejected', 'failed')
      ORDER BY settled_at LIMIT ?`),
    deleteEvents: db.prepare('DELETE FROM events WHERE scope = ? AND key = ?'),
    deleteCommand: db.prepare('DELETE FROM commands WHERE scope = ? AND key = ?'),
    touch: db.prepare(`
      INSERT INTO meta (key, value) VALUES ('writable-check', ?)
      ON CONFLICT (key) DO UPDATE SET value = excluded.value`),
  };
}
