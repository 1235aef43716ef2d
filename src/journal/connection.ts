import { existsSync, mkdirSync, statSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import type { Database, Statement, Transaction } from 'better-sqlite3';
import type { OpenState } from '../core/command.js';
import {
  JournalConflictError,
  JournalUnavailableError,
  JournalVersionError,
} from '../core/errors.js';
import {
  DUPLICATE_DETAIL,
  KEY_REUSE_DETAIL,
  MAX_DISPATCHES,
  repeatDetail,
  repeatOf,
  type Claim,
  type CommandOf,
  type CommandRecord,
  type CommandRef,
  type NewCommand,
  type Observation,
  type PurgeStep,
  type Rejection,
  type Retry,
  type SeqAllocator,
  type Settlement,
} from '../core/journal.js';
import { LATEST_VERSION } from './migrations.js';
import { openFailed } from './open-errors.js';
import { rowToRecord, type CommandRow } from './rows.js';
import { migrate, refuseUpgradeWithoutRoom } from './schema-upgrade.js';
import { unwritable } from './writer-lock.js';

// The start's reads of the journal's schema, for src/daemon/daemon.ts, which imports them here.
export { checkUpgradeRoom, schemaVersion } from './schema-upgrade.js';

/** How a journal file is opened. */
export interface ConnectionOptions {
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
   * Group commit: the writes of one event-loop turn run in one transaction, committed at the
   * turn's end; they return before their fsync, and durable() makes all of them durable with
   * one (the daemon awaits it before any acknowledgement, publication or controller write).
   * Off: every write is its own transaction, fsynced before its method returns.
   */
  readonly groupCommit?: boolean;
}

/** The dispatch's transaction (Journal.markDispatched). */
type Dispatch = (
  ref: CommandOf,
  at: number,
  before: Observation,
  intake: string,
  allocate: SeqAllocator,
  detail: string | undefined,
) => CommandRecord;

/** An open journal file: the connection, its prepared statements and its transactions. */
export interface Connection {
  readonly db: Database;
  readonly stmts: Statements;
  readonly txClaim: Transaction<(command: NewCommand, rejection?: Rejection) => Claim>;
  readonly txRetry: Transaction<(retry: Retry) => Claim | null>;
  readonly txDispatch: Transaction<Dispatch>;
  readonly txRedispatch: Transaction<
    (
      ref: CommandOf & { readonly attempts: number },
      at: number,
      detail: string,
      intake: string,
      observedBefore: Observation | undefined,
    ) => CommandRecord
  >;
  readonly txSettle: Transaction<(ref: CommandOf, from: OpenState, s: Settlement) => CommandRecord>;
  readonly txPurge: Transaction<(before: number, limit: number, budgetMs: number) => PurgeStep>;
}

type Statements = ReturnType<typeof prepare>;

/** Events of one command deleted by one statement of the purge (txPurge). */
const EVENTS_PER_STEP = 500;

/** An event that settled its command (an open state to a terminal one). */
const SETTLEMENT = `from_state IN ('accepted', 'dispatched')
  AND to_state IN ('confirmed', 'rejected', 'failed')`;

/**
 * The conflict of a write for `ref` (CommandOf) with the row its key names, when that row is
 * another command's: claimed after this command's claim was lost with its batch. Null when the
 * row is this command's, or the write carries no fingerprint.
 */
export function otherCommand(ref: CommandOf, row: CommandRow): JournalConflictError | null {
  if (ref.fingerprint === undefined || row.fingerprint === ref.fingerprint) return null;
  return new JournalConflictError(
    `key ${ref.key} names another command now (${row.action} on ${row.device}, ${row.state}): this command's claim was lost with its batch, and nothing of it is journaled`,
  );
}

/** Opens the file, migrates it, and prepares every statement and transaction on it. */
export function openConnection(options: ConnectionOptions): Connection {
  const readonly = options.readonly ?? false;
  let db: Database;
  if (!readonly) refuseOrphanLog(options.path);
  try {
    if (!readonly) mkdirSync(dirname(options.path), { recursive: true });
    db = new BetterSqlite3(options.path, {
      readonly,
      fileMustExist: readonly,
      timeout: options.busyTimeoutMs ?? 2000,
    });
  } catch (error) {
    if (!readonly && !existsSync(options.path)) {
      // A new journal that cannot be created: SQLite's "unable to open database file" (or
      // Node's ENOENT for its folder on a read-only filesystem) named no cause.
      const why = unwritable(options.path);
      if (why !== null) {
        throw new JournalUnavailableError(
          `journal unavailable (open): ${options.path} cannot be created: ${why.what}; ${why.todo}`,
          { cause: error },
        );
      }
    }
    openFailed(error, options.path);
  }
  try {
    const version = db.pragma('user_version', { simple: true }) as number;
    if (version > LATEST_VERSION) {
      db.close();
      throw new JournalVersionError(
        `journal ${options.path} has schema version ${version}, newer than this Sluice's ${LATEST_VERSION}; refusing to open it`,
      );
    }
    if (readonly && version !== LATEST_VERSION) {
      // A reader does not migrate: the statements it prepares are the latest schema's.
      db.close();
      throw new JournalVersionError(
        version === 0
          ? `${options.path} is not a Sluice journal (it has no schema version: another program's database, or one being created)`
          : `journal ${options.path} has schema version ${version}, older than this Sluice's ${LATEST_VERSION}: sluiced upgrades it when it next starts; until then read it with the Sluice that wrote it`,
      );
    }
    if (
      !readonly &&
      version === 0 &&
      db.prepare('SELECT 1 FROM sqlite_schema').get() !== undefined
    ) {
      // No schema version, yet tables: another program's database (journal.path mistyped, or
      // pointed at the wrong file). A Sluice journal has had a version since its first schema,
      // and a new one gets its tables and its version in one transaction (migrate), so a start
      // that died creating it leaves no table behind. Creating the journal's tables in it, and
      // switching it to WAL (a change of its header every later user of the file meets), wrote
      // into a file that is not ours; it is left as it is.
      db.close();
      throw new JournalVersionError(
        `${options.path} is not a Sluice journal (it has no schema version, yet holds tables: another program's database); refusing to write it: check journal.path and stateDir`,
      );
    }
    if (!readonly) {
      // Before anything is written (the switch to WAL of a journal not in it is a write).
      if (version > 0 && version < LATEST_VERSION) refuseUpgradeWithoutRoom(options.path, version);
      db.pragma('journal_mode = WAL');
      // FULL: the WAL is fsynced at every commit, so an acknowledged command survives power
      // loss. With group commit, NORMAL: commits append to the WAL and durable() fsyncs it
      // once for all of them before anything is acknowledged.
      db.pragma(options.groupCommit === true ? 'synchronous = NORMAL' : 'synchronous = FULL');
      migrate(db, version, options.path);
    }
  } catch (error) {
    if (error instanceof JournalVersionError) throw error;
    if (error instanceof JournalUnavailableError) {
      // Said already, with the path (an upgrade with no room for it).
      if (db.open) db.close();
      throw error;
    }
    if (db.open) db.close();
    openFailed(error, options.path);
  }
  const s = prepare(db);
  const findRow = (ref: CommandRef): CommandRow => {
    const row = s.get.get(ref.scope, ref.key) as CommandRow | undefined;
    if (row === undefined) throw new JournalConflictError(`no command ${ref.key}`);
    return row;
  };

  /**
   * Why a write for `ref` changed no row: the key names another command now (see CommandOf),
   * or else what `otherwise` says of the row as it is.
   */
  const conflict = (
    ref: CommandOf,
    otherwise: (now: CommandRow | undefined) => string,
  ): JournalConflictError => {
    const now = s.get.get(ref.scope, ref.key) as CommandRow | undefined;
    return (
      (now === undefined ? null : otherCommand(ref, now)) ??
      new JournalConflictError(otherwise(now))
    );
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
    return hit(findRow(c), c);
  });

  // A hit of a key already journaled: a duplicate or a reuse, recorded in its history.
  const hit = (row: CommandRow, c: Retry): Claim => {
    const record = rowToRecord(row);
    const same = record.fingerprint === c.fingerprint;
    const base = same ? DUPLICATE_DETAIL : KEY_REUSE_DETAIL;
    // A client stuck retrying one key (a loop, a QoS 1 redelivery storm) added one event per
    // retry, without bound. Hits of one kind over one intake since the command's last other
    // event are one event: the earlier one goes, and one counting it goes at the end (the
    // history stays in journal order, its `at` the last hit). At most two such events per intake
    // (a duplicate, a reuse) follow the command's last other event, whatever the retries.
    const last = s.lastHit.get({
      command: row.id,
      intake: c.intake,
      state: record.state,
      base,
      repeated: `${base} ×*`,
    }) as { id: number; at: number; detail: string } | undefined;
    let count = 1;
    let firstAt = c.acceptedAt;
    const earlier = last === undefined ? null : repeatOf(last);
    if (last !== undefined && earlier !== null) {
      s.deleteEvent.run(last.id);
      count = earlier.count + 1;
      firstAt = earlier.firstAt;
    }
    s.eventOf.run(
      row.id,
      c.acceptedAt,
      record.state,
      record.state,
      c.intake,
      repeatDetail(base, count, firstAt),
    );
    return { kind: same ? 'duplicate' : 'reused', record };
  };

  const txRetry = db.transaction((c: Retry): Claim | null => {
    const row = s.get.get(c.scope, c.key) as CommandRow | undefined;
    return row === undefined ? null : hit(row, c);
  });

  const txDispatch = db.transaction<Dispatch>(
    (ref, at, before, intake, allocate, detail): CommandRecord => {
      const row = findRow(ref);
      const current = rowToRecord(row);
      const last =
        (s.getSeq.get(current.device) as { last_seq: number } | undefined)?.last_seq ?? 0;
      const open = new Set(
        (s.openSeqs.all(current.device) as { seq: number }[]).map((row) => row.seq),
      );
      const seq = allocate(last, open);
      s.setSeq.run(current.device, seq);
      s.writeMeta.run(lastDispatchKey(current.device), String(row.id));
      const beforeJson = JSON.stringify(before);
      const changed = s.dispatch.run({
        scope: ref.scope,
        key: ref.key,
        fingerprint: ref.fingerprint ?? null,
        seq,
        at,
        before: beforeJson,
      });
      if (changed.changes !== 1) {
        throw conflict(ref, () => `command ${ref.key} is ${current.state}, not accepted`);
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
    (
      ref: CommandOf & { readonly attempts: number },
      at: number,
      detail: string,
      intake: string,
      observedBefore: Observation | undefined,
    ): CommandRecord => {
      const before = observedBefore === undefined ? null : JSON.stringify(observedBefore);
      const changed = s.redispatch.run({
        before,
        scope: ref.scope,
        key: ref.key,
        fingerprint: ref.fingerprint ?? null,
        attempts: ref.attempts,
        max: MAX_DISPATCHES,
      });
      if (changed.changes !== 1) {
        throw conflict(ref, () => `command ${ref.key} cannot be dispatched again`);
      }
      const row = findRow(ref);
      s.eventOf.run(row.id, at, 'dispatched', 'dispatched', intake, `redispatch: ${detail}`);
      return rowToRecord(row);
    },
  );

  const txSettle = db.transaction(
    (ref: CommandOf, from: OpenState, st: Settlement): CommandRecord => {
      // RETURNING: the row as settled (none when it was not in `from`, or is another command's).
      const settled = s.settle.get({
        scope: ref.scope,
        key: ref.key,
        fingerprint: ref.fingerprint ?? null,
        from,
        to: st.to,
        code: st.code,
        fault: st.faultCode,
        observed: st.observed === null ? null : JSON.stringify(st.observed),
        detail: st.detail,
        at: st.at,
      });
      if (settled === undefined) {
        throw conflict(
          ref,
          (now) => `command ${ref.key} is ${now?.state ?? 'missing'}, not ${from}`,
        );
      }
      const row = settled as CommandRow;
      s.eventOf.run(row.id, st.at, from, st.to, st.intake, `${st.code}: ${st.detail}`);
      return rowToRecord(row);
    },
  );

  // Bounded by time as well as by count: a command's history had one event per duplicate
  // (a client that retried for hours left thousands; journals written before hits were
  // counted in one event still hold them), and a batch of them at a time held the
  // event loop — and the write lock — for hundreds of milliseconds on a journal of a million
  // commands. A history is deleted in steps of EVENTS_PER_STEP events, and its command only once
  // none is left; past the budget the transaction ends where it stands, and the next one goes
  // on. A command whose purge the budget cut keeps the rest of its history meanwhile (its result
  // is its row, replayed unchanged), and its row with its id: a history without its command
  // could be joined by a new command given the same id (the largest id is given again once
  // deleted).
  const txPurge = db.transaction((before: number, limit: number, budgetMs: number): PurgeStep => {
    const started = performance.now();
    const spent = (): boolean => performance.now() - started >= budgetMs;
    const victims = s.purgeCandidates.all(before, limit) as { id: number }[];
    let purged = 0;
    for (const v of victims) {
      while (s.deleteEvents.run(v.id, EVENTS_PER_STEP).changes === EVENTS_PER_STEP) {
        if (spent()) return { purged, more: true };
      }
      s.deleteCommand.run(v.id);
      purged++;
      if (purged < victims.length && spent()) return { purged, more: true };
    }
    return { purged, more: victims.length === limit };
  });
  return { db, stmts: s, txClaim, txRetry, txDispatch, txRedispatch, txSettle, txPurge };
}

/**
 * A journal's log (`-wal`) with no journal beside it: the journal was removed or moved away and
 * its log left (a daemon killed with commits not yet checkpointed leaves them there). SQLite
 * would create an empty journal and discard the log — the commands it holds, acknowledged and
 * perhaps written to a controller — and the keys would be free again (I1). Refused, and said,
 * so that the journal can be put back (or the log moved away, to start anew on purpose).
 */
function refuseOrphanLog(path: string): void {
  let log: { size: number };
  try {
    log = statSync(`${path}-wal`);
  } catch {
    return; // No log: nothing to lose.
  }
  if (log.size === 0 || existsSync(path)) return;
  throw new JournalUnavailableError(
    `journal unavailable (open): ${path} is missing, but its log ${path}-wal (${log.size} bytes) is there: the journal was removed or moved away, and a new one would discard the commands its log holds; put the journal back, or move the log away to start a new journal`,
  );
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
  openBefore: Statement;
  openPage: Statement;
  openWithSeq: Statement;
  dispatchedPage: Statement;
  nextOpenDevice: Statement;
  openCounts: Statement;
  openDispatched: Statement;
  openSince: Statement;
  pastDeadlineCount: Statement;
  pastDeadlinePage: Statement;
  dispatchedOf: Statement;
  stopsAfter: Statement;
  stopsSince: Statement;
  lastDispatched: Statement;
  purgeCandidates: Statement;
  deleteEvents: Statement;
  deleteCommand: Statement;
  lastHit: Statement;
  deleteEvent: Statement;
  lowestSettled: Statement;
  lastEvent: Statement;
  touch: Statement;
  readMeta: Statement;
  writeMeta: Statement;
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
      WHERE scope = @scope AND key = @key AND state = 'accepted'
        AND (@fingerprint IS NULL OR fingerprint = @fingerprint)`),
    redispatch: db.prepare(`
      UPDATE commands SET attempts = attempts + 1,
        observed_before = coalesce(@before, observed_before)
      WHERE scope = @scope AND key = @key AND state = 'dispatched'
        AND (@fingerprint IS NULL OR fingerprint = @fingerprint)
        AND attempts = @attempts AND attempts >= 1 AND attempts < @max`),
    settle: db.prepare(`
      UPDATE commands SET state = @to, code = @code, fault_code = @fault, observed = @observed,
        detail = @detail, settled_at = @at
      WHERE scope = @scope AND key = @key AND state = @from
        AND (@fingerprint IS NULL OR fingerprint = @fingerprint)
      RETURNING *`),
    history: db.prepare(`
      SELECT at, from_state, to_state, intake, detail FROM events
      WHERE command = (SELECT id FROM commands WHERE scope = ? AND key = ?) ORDER BY id`),
    // In the journal's order, as openRefs below (the order the daemon runs a device's commands
    // in): what the operator's tools say a command waits behind follows it.
    open: db.prepare(`
      SELECT * FROM commands INDEXED BY commands_open
      WHERE state IN ('accepted', 'dispatched') ORDER BY id`),
    // The journal's own order (claims get increasing ids; retention never deletes an open row,
    // so a new one always gets a larger id): the order the commands came in even when the
    // gateway's clock stepped back between two claims, which accepted_at would reverse. The
    // sweep relies on it: a stop preempts what came before it (SPEC §2).
    // INDEXED BY: ordered by id, SQLite's planner chose to walk the whole table in id order
    // rather than the partial index of the open commands and a sort of the few it holds. The
    // sweep runs this every second: at a million retained commands that walk held the event loop
    // for 0.4–0.7 s each time (2–3 s the first time after a start).
    openRefs: db.prepare(`
      SELECT id, scope, key, fingerprint, device, state, action FROM commands
      INDEXED BY commands_open WHERE state IN ('accepted', 'dispatched') ORDER BY id`),
    // The stops claimed after a row (Journal.stopsSince), in the journal's order: a range of
    // the rowid from there on, the rows claimed since (at a start, since the oldest open
    // command). Those refused at the door preempted nothing (as in stopsAfter).
    stopsSince: db.prepare(`
      SELECT id, scope, key, fingerprint, device FROM commands
      WHERE id > ? AND action = 'stop'
        AND NOT (state = 'rejected' AND dispatched_at IS NULL AND settled_at = accepted_at)
      ORDER BY id`),
    // The open commands of a stop's device claimed before it (Journal.openBefore): through the
    // partial index of the open commands by device, the few of that device, not every open
    // command of the gateway (a stop is the path that must not wait).
    openBefore: db.prepare(`
      SELECT c.scope, c.key, c.fingerprint, c.device, c.state, c.action
      FROM commands s, commands c INDEXED BY commands_open_device
      WHERE s.scope = ? AND s.key = ? AND s.state IN ('accepted', 'dispatched')
        AND c.device = s.device AND c.state IN ('accepted', 'dispatched') AND c.id < s.id
      ORDER BY c.id`),
    // One device's open commands by pages (Journal.openOfDevice, the periodic sweep), through
    // the partial index of the open commands by device. Those with no sequence number (never
    // dispatched: a backlog is of those) are one range of the index, ordered by rowid: a page
    // is a seek and its rows, however many the device holds. Those with one (dispatched, one
    // or two a device) are read whole.
    openPage: db.prepare(`
      SELECT id, scope, key, fingerprint, device, state, action
      FROM commands INDEXED BY commands_open_device
      WHERE device = ? AND seq IS NULL AND state IN ('accepted', 'dispatched') AND id > ?
      ORDER BY id LIMIT ?`),
    openWithSeq: db.prepare(`
      SELECT id, scope, key, fingerprint, device, state, action
      FROM commands INDEXED BY commands_open_device
      WHERE device = ? AND seq IS NOT NULL AND state IN ('accepted', 'dispatched')
      ORDER BY id`),
    // One device's dispatched commands by pages (Journal.dispatchedOfDevice, the sweep's pass
    // over the commands in doubt): the range of the device's index entries with a sequence
    // number, after the page before it, in the index's order (seq, then rowid): a seek and the
    // page's rows, never the device's backlog (its entries without a number sort before them).
    dispatchedPage: db.prepare(`
      SELECT id, scope, key, fingerprint, device, state, action, seq
      FROM commands INDEXED BY commands_open_device
      WHERE device = ? AND state IN ('accepted', 'dispatched') AND (seq, id) > (?, ?)
      ORDER BY seq, id LIMIT ?`),
    // The next device with open commands after the one given (Journal.openDevices): a seek.
    nextOpenDevice: db.prepare(`
      SELECT device FROM commands INDEXED BY commands_open_device
      WHERE state IN ('accepted', 'dispatched') AND device > ?
      ORDER BY device LIMIT 1`),
    // The open commands counted (Journal.openCounts) through their partial indexes, without
    // reading their rows: all of them and the earliest acceptance from commands_open alone (the
    // counts by acceptance are ranges of it); the dispatched ones among those commands_open_device
    // gives a sequence number, the only rows read (one or two a device). A dispatched command
    // always has its number: the dispatch's commit gives it (txDispatch), and only that commit
    // makes a command dispatched.
    // (The earliest acceptance apart: in one aggregate with the count SQLite reads the rows;
    // alone it is a seek.)
    openCounts: db.prepare(`
      SELECT
        (SELECT count(*) FROM commands INDEXED BY commands_open
          WHERE state IN ('accepted', 'dispatched')) AS n,
        (SELECT min(accepted_at) FROM commands INDEXED BY commands_open
          WHERE state IN ('accepted', 'dispatched')) AS oldest`),
    openDispatched: db.prepare(`
      SELECT count(*) AS n FROM commands INDEXED BY commands_open_device
      WHERE state IN ('accepted', 'dispatched') AND seq IS NOT NULL AND state = 'dispatched'`),
    openSince: db.prepare(`
      SELECT count(*) AS n FROM commands INDEXED BY commands_open
      WHERE state IN ('accepted', 'dispatched') AND accepted_at >= ?`),
    // What the stuck rule judges (Journal.openPastDeadline), one device at a time, through
    // commands_open_device (its entries of a device in rowid order for the backlog, seq NULL:
    // the rows are read in the table's order, page after page; through commands_open, by
    // acceptance, the same rows took 6–30 ms at ten thousand, here 2 ms): how many of its open
    // commands are past a deadline, counted; the first of them by deadline, at most a limit,
    // whole; and its dispatched ones (a seek to the entries with a sequence number), whole. A
    // backlog of a device no longer configured, thousands past their deadline, is counted, not
    // handed over at every /metrics scrape and /readyz probe.
    pastDeadlineCount: db.prepare(`
      SELECT count(*) AS n FROM commands INDEXED BY commands_open_device
      WHERE device = ? AND state IN ('accepted', 'dispatched') AND deadline < ?`),
    pastDeadlinePage: db.prepare(`
      SELECT * FROM commands INDEXED BY commands_open_device
      WHERE device = ? AND state IN ('accepted', 'dispatched') AND state = 'accepted'
        AND deadline < ?
      ORDER BY deadline, id LIMIT ?`),
    dispatchedOf: db.prepare(`
      SELECT * FROM commands INDEXED BY commands_open_device
      WHERE device = ? AND seq IS NOT NULL AND state IN ('accepted', 'dispatched')
        AND state = 'dispatched'
      ORDER BY id`),
    // A rare path (a readback shows another command's echo). The rows claimed since the
    // command, newest first (`+c.device` keeps the planner off the device index, whose scan
    // would cover every retained command of the device): few for a command in flight. A stop
    // refused at the door (rejected in its claim's own commit: settled when accepted, never
    // dispatched) preempted nothing and is passed over.
    stopsAfter: db.prepare(`
      SELECT c.* FROM commands c, commands after
      WHERE after.scope = ? AND after.key = ? AND +c.device = after.device
        AND c.action = 'stop' AND c.id > after.id
        AND NOT (c.state = 'rejected' AND c.dispatched_at IS NULL
                 AND c.settled_at = c.accepted_at)
      ORDER BY c.id DESC LIMIT ?`),
    // The device's last dispatch (Journal.lastDispatched): the command its dispatch's commit
    // named (meta, lastDispatchKey), when it still has the sequence number that commit gave
    // (device_seq). Else — a journal whose last dispatch of the device was made before the
    // commit named it, or by a Sluice that did not — the number looked for among the device's
    // newest rows (commands_device, newest first; the inner LIMIT bounds the rows read whatever
    // the journal holds), the first that has it. One such row at most: a number is given again
    // only after 65,535 dispatches of the device, each a row. Past the window the last dispatch
    // was not found: a device whose newest 1,000 commands were never dispatched (rejected at
    // the door, stale, superseded) had its last write forgotten at start, the write an earlier
    // life ended with its fate open (previous-write.ts) among them. Read once per device at
    // start.
    lastDispatched: db.prepare(`
      SELECT * FROM commands WHERE id = coalesce(
        (SELECT c.id FROM meta m, commands c
          WHERE m.key = @named AND c.id = CAST(m.value AS INTEGER) AND c.device = @device
            AND c.seq = (SELECT last_seq FROM device_seq WHERE device = @device)
            AND c.dispatched_at IS NOT NULL),
        (SELECT id FROM (
          SELECT id, seq, dispatched_at FROM commands INDEXED BY commands_device
          WHERE device = @device ORDER BY accepted_at DESC LIMIT @window)
        WHERE seq = (SELECT last_seq FROM device_seq WHERE device = @device)
          AND dispatched_at IS NOT NULL
        LIMIT 1))`),
    purgeCandidates: db.prepare(`
      SELECT id FROM commands
      WHERE settled_at IS NOT NULL AND settled_at < ?
        AND state IN ('confirmed', 'rejected', 'failed')
      ORDER BY settled_at LIMIT ?`),
    // The oldest events of a command first (events_command: command, id).
    deleteEvents: db.prepare(`
      DELETE FROM events WHERE id IN
        (SELECT id FROM events WHERE command = ? ORDER BY id LIMIT ?)`),
    deleteCommand: db.prepare('DELETE FROM commands WHERE id = ?'),
    // The command's latest hit of this kind over this intake in this state, provided no other
    // event followed it but hits (events_command: a few rows from the end of its history).
    lastHit: db.prepare(`
      SELECT id, at, detail FROM events
      WHERE command = @command AND intake = @intake
        AND from_state = @state AND to_state = @state
        AND (detail = @base OR detail GLOB @repeated)
        AND id > coalesce((SELECT max(id) FROM events WHERE command = @command
          AND NOT (detail IN ('${DUPLICATE_DETAIL}', '${KEY_REUSE_DETAIL}')
            OR detail GLOB '${DUPLICATE_DETAIL} ×*' OR detail GLOB '${KEY_REUSE_DETAIL} ×*')), 0)
      ORDER BY id DESC LIMIT 1`),
    deleteEvent: db.prepare('DELETE FROM events WHERE id = ?'),
    // The retention sweep's view of settlements (Journal.settledSince): by the events' order,
    // which a step of the wall clock does not change.
    lowestSettled: db.prepare(`
      SELECT min(at) AS lowest FROM events
      WHERE id > ? AND ${SETTLEMENT}`),
    lastEvent: db.prepare('SELECT max(id) AS id FROM events'),
    touch: db.prepare(`
      INSERT INTO meta (key, value) VALUES ('writable-check', ?)
      ON CONFLICT (key) DO UPDATE SET value = excluded.value`),
    readMeta: db.prepare('SELECT value FROM meta WHERE key = ?'),
    writeMeta: db.prepare(`
      INSERT INTO meta (key, value) VALUES (?, ?)
      ON CONFLICT (key) DO UPDATE SET value = excluded.value`),
  };
}

/**
 * The meta key under which a dispatch's commit names its command (its id) as the device's last
 * dispatch (lastDispatched). In meta, not a column of device_seq: no schema change, and a journal
 * written by a Sluice before it (or after, by one that ignores it) is read as before.
 */
export function lastDispatchKey(device: string): string {
  return `last-dispatch ${device}`;
}
