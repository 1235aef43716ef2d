import { JournalConflictError, JournalUnavailableError } from '../core/errors.js';
import {
  refId,
  type Claim,
  type CommandOf,
  type CommandRecord,
  type CommandRef,
  type DispatchedAfter,
  type DispatchedPage,
  type DispatchedRef,
  type Journal,
  type JournalEvent,
  type ListFilter,
  type NewCommand,
  type Observation,
  type OpenCounts,
  type OpenPage,
  type OpenPageRef,
  type OpenRef,
  type OpenStopRef,
  type PastDeadline,
  type PurgeStep,
  type Rejection,
  type Retry,
  type SeqAllocator,
  type SettledAfter,
  type SettledPage,
  type SettledSince,
  type Settlement,
} from '../core/journal.js';
import { isTerminal, type CommandState, type OpenState } from '../core/command.js';
import {
  lastDispatchKey,
  openConnection,
  otherCommand,
  type Connection,
  type ConnectionOptions,
} from './connection.js';
import { listReadable, openReadable, type ListRead, type OpenRead } from './damaged-lists.js';
import { historyReadable, keyReadable, type HistoryRead, type KeyRead } from './damaged-reads.js';
import { GroupCommit } from './group-commit.js';
import { rowToRecord, translate, type CommandRow, type EventRow } from './rows.js';
import { freeBytes } from './upgrade-room.js';

export interface SqliteJournalOptions extends ConnectionOptions {
  /**
   * How often, at most, a connection that SQLite opened read-only is replaced by a new one
   * (see `write`). Default 1000 ms.
   */
  readonly reopenIntervalMs?: number;
}

/** How many settlements settledDurably() keeps by number before those on disk are dropped. */
const SETTLES_PRUNE_AT = 1024;

/**
 * Pages of the journal checkWritable()'s proof write commits while its filesystem is short of
 * room (CLAIM_ROOM_BELOW_PAGES): as many as a claim commits at the most. A claim writes its row
 * into the commands table and its five indexes and its event into the events table and its
 * index: measured (group commit, a claim in a commit of its own, 50,000 commands retained),
 * 8 pages of the log for most claims, 11 for one refused at the door (its settlement's indexes
 * too), and up to 20 and 23 when the row split pages of several indexes at once. A proof of one
 * page fitted where a claim did not: with 50-70 KB free at a start, /readyz and the status line
 * said the journal writable while every command was refused 503 JOURNAL_UNAVAILABLE.
 */
export const CLAIM_PROOF_PAGES = 24;

/**
 * Free space on the journal's filesystem (for the daemon's user), in pages of the journal, below
 * which the proof write is as large as a claim's (CLAIM_PROOF_PAGES): 1 MiB with pages of 4 KiB.
 * Above it a claim's few pages cannot fail for want of room, and the proof is one page: /readyz
 * may ask for one every second, and a proof of 24 pages each time would write the gateway's
 * flash about 24 times as much while it idles.
 */
export const CLAIM_ROOM_BELOW_PAGES = 256;

/**
 * The command journal on SQLite, in WAL mode. Without `groupCommit`, synchronous=FULL: every
 * commit is on disk (fsync) before its method returns. With it (the daemon), the writes of a
 * turn share one transaction and durable() makes them durable together (group-commit.ts).
 * Writes run in IMMEDIATE transactions (savepoints inside a batch) so that a check and
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
  /** What the last write met when it could not be made; null once a write succeeds. */
  private writeFailure: JournalUnavailableError | null = null;
  private closed = false;
  /** The batch of this turn's writes and the durability barriers (option `groupCommit`). */
  private readonly group: GroupCommit;
  /** The number of the last write (GroupCommit.wrote()). */
  private lastWrite = 0;
  /**
   * Settlements made by this process, by command: the number of the write that made each
   * (settledDurably()). Pruned of those a barrier has covered once it holds SETTLES_PRUNE_AT.
   */
  private readonly settles = new Map<string, number>();
  private settlesPruneAt = SETTLES_PRUNE_AT;
  /** checkWritable()'s proof writes so far: each one's value differs from the last's. */
  private proofs = 0;
  /**
   * The page size of the journal's file, read once per connection (checkWritable()). A journal
   * is not necessarily of 4 KiB pages: one created beforehand with another page size keeps it.
   */
  private readonly pageSizes = new WeakMap<Connection, number>();

  static open(options: SqliteJournalOptions): SqliteJournal {
    return new SqliteJournal(options);
  }

  private constructor(options: SqliteJournalOptions) {
    this.options = options;
    this.conn = openConnection(options);
    this.group = new GroupCommit({
      path: options.path,
      current: () => this.conn,
      closed: () => this.closed,
      readOnly: () => {
        this.readOnlyConnection = true;
      },
    });
  }

  claim(command: NewCommand, rejection?: Rejection): Claim {
    const claim = this.write('claim', (c) => c.txClaim.immediate(command, rejection));
    // Rejected at the door: settled in its claim's own write, which settledDurably() must
    // know as such (not taken for a settlement of an earlier life, on disk already).
    if (claim.kind === 'new' && isTerminal(claim.record.state)) this.settled(claim.record);
    return claim;
  }

  retry(command: Retry): Claim | null {
    return this.write('retry', (c) => c.txRetry.immediate(command));
  }

  get(ref: CommandRef): CommandRecord | undefined {
    try {
      const row = this.connection().stmts.get.get(ref.scope, ref.key) as CommandRow | undefined;
      return row === undefined ? undefined : rowToRecord(row);
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  findByKey(key: string): CommandRecord[] {
    try {
      return (this.connection().stmts.byKey.all(key) as CommandRow[]).map(rowToRecord);
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  markDispatched(
    ref: CommandOf,
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

  markRedispatched(
    ref: CommandOf & { readonly attempts: number },
    at: number,
    detail: string,
    intake: string,
    observedBefore?: Observation,
  ): CommandRecord {
    return this.write('redispatch', (c) =>
      c.txRedispatch.immediate(ref, at, detail, intake, observedBefore),
    );
  }

  settle(ref: CommandOf, from: OpenState, settlement: Settlement): CommandRecord {
    const record = this.write('settle', (c) => c.txSettle.immediate(ref, from, settlement));
    this.settled(record);
    return record;
  }

  /** The write that settled `record` was the last one (settledDurably() goes by it). */
  private settled(record: CommandRecord): void {
    if (this.options.groupCommit === true) {
      // settledDurably() goes by the write's number; a settlement a barrier has covered
      // needs no entry (its number is at most syncedThrough, as 0 is).
      if (this.settles.size >= this.settlesPruneAt) {
        for (const [id, write] of this.settles)
          if (this.group.synced(write)) this.settles.delete(id);
        // While no barrier completes (a failed fdatasync) nothing goes: prune again only at
        // twice the size, not at every settlement.
        this.settlesPruneAt = Math.max(SETTLES_PRUNE_AT, 2 * this.settles.size);
      }
      this.settles.set(refId(record), this.lastWrite);
    }
  }

  note(ref: CommandOf, at: number, detail: string, intake: string): void {
    this.write('note', (c) => {
      const row = c.stmts.get.get(ref.scope, ref.key) as CommandRow | undefined;
      if (row === undefined) throw new JournalConflictError(`no command ${ref.key}`);
      const other = otherCommand(ref, row);
      if (other !== null) throw other;
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
      return translate(error, 'read', this.options.path);
    }
  }

  listOpen(): CommandRecord[] {
    try {
      return (this.connection().stmts.open.all() as CommandRow[]).map(rowToRecord);
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  /**
   * The open commands, as listOpen, from a journal whose damaged pages a read may meet: for
   * sluicectl stuck, whose answer an operator needs most when the gateway's storage is failing
   * (which valves had a command in flight). A damaged page of the commands table ends listOpen's
   * statement there, and nothing could be listed; then the open commands' ids are read from
   * their index alone and each row on its own, and the rows that cannot be read are named; when
   * that index is damaged, through the other index of the open commands, else the table read
   * whole (damaged-lists.ts). Damage met by every way (or any other error) is thrown as listOpen
   * throws it.
   */
  listOpenReadable(): OpenRead {
    try {
      const { stmts, db } = this.connection();
      return openReadable(db, () => stmts.open.all() as CommandRow[]);
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  /**
   * The commands of a key, as findByKey, from a journal whose damaged pages a read may meet
   * (sluicectl show): those whose row can be read, with their row ids, and those whose row
   * cannot, named by the key index (damaged-reads.ts).
   */
  findByKeyReadable(key: string): KeyRead {
    try {
      return keyReadable(this.connection().db, key);
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  /** A command's history by its row id (findByKeyReadable), the entries that can be read. */
  historyReadable(id: number): HistoryRead {
    try {
      return historyReadable(this.connection().db, id);
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  listOpenRefs(): OpenPageRef[] {
    try {
      return this.connection().stmts.openRefs.all() as OpenPageRef[];
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  stopsSince(afterId: number): OpenStopRef[] {
    try {
      return this.connection().stmts.stopsSince.all(afterId) as OpenStopRef[];
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  openBefore(ref: CommandRef): OpenRef[] {
    try {
      return this.connection().stmts.openBefore.all(ref.scope, ref.key) as OpenRef[];
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  openOfDevice(device: string, afterId: number, limit: number): OpenPage {
    try {
      const { stmts } = this.connection();
      const page = stmts.openPage.all(device, afterId, limit) as OpenPageRef[];
      const last = page.at(-1);
      const next = limit >= 0 && page.length === limit && last !== undefined ? last.id : null;
      if (afterId !== 0) return { refs: page, next };
      const withSeq = stmts.openWithSeq.all(device) as OpenPageRef[];
      if (withSeq.length === 0) return { refs: page, next };
      // In the journal's order, as a single read would give them.
      const refs = [...page, ...withSeq].sort((x, y) => x.id - y.id);
      return { refs, next };
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  dispatchedOfDevice(device: string, after: DispatchedAfter | null, limit: number): DispatchedPage {
    try {
      // Sequence numbers are 0 or more: from (-1, 0), the first page.
      const from = after ?? { seq: -1, id: 0 };
      const refs = this.connection().stmts.dispatchedPage.all(
        device,
        from.seq,
        from.id,
        limit,
      ) as DispatchedRef[];
      const last = refs.at(-1);
      const next =
        limit >= 0 && refs.length === limit && last !== undefined
          ? { seq: last.seq, id: last.id }
          : null;
      return { refs, next };
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  openDevices(): string[] {
    try {
      const next = this.connection().stmts.nextOpenDevice.pluck();
      const devices: string[] = [];
      for (
        let d = next.get('') as string | undefined;
        d !== undefined;
        d = next.get(d) as string | undefined
      ) {
        devices.push(d);
      }
      return devices;
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  openCounts(acceptedSince: readonly number[]): OpenCounts {
    try {
      const { stmts } = this.connection();
      const all = stmts.openCounts.get() as { n: number; oldest: number | null };
      const dispatched = (stmts.openDispatched.get() as { n: number }).n;
      const since = stmts.openSince.pluck();
      return {
        accepted: all.n - dispatched,
        dispatched,
        oldestAcceptedAt: all.oldest,
        acceptedSince: acceptedSince.map((at) => since.get(at) as number),
      };
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  openPastDeadline(device: string, before: number, limit: number): PastDeadline {
    try {
      const { stmts } = this.connection();
      const total = (stmts.pastDeadlineCount.get(device, before) as { n: number }).n;
      const accepted = stmts.pastDeadlinePage.all(device, before, limit) as CommandRow[];
      const dispatched = stmts.dispatchedOf.all(device) as CommandRow[];
      // In the journal's order, as a single read would give them.
      const records = [...accepted, ...dispatched].sort((x, y) => x.id - y.id).map(rowToRecord);
      return { records, total };
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  stopsAfter(ref: CommandRef, limit: number): CommandRecord[] {
    try {
      return (
        this.connection().stmts.stopsAfter.all(ref.scope, ref.key, limit) as CommandRow[]
      ).map(rowToRecord);
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  lastDispatched(device: string, window: number): CommandRecord | undefined {
    try {
      const row = this.connection().stmts.lastDispatched.get({
        device,
        window,
        named: lastDispatchKey(device),
      }) as CommandRow | undefined;
      return row === undefined ? undefined : rowToRecord(row);
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  list(filter: ListFilter): CommandRecord[] {
    const where: string[] = [];
    const params: (string | number)[] = [];
    // An open state is read through the index of the open commands (commands_open): SQLite
    // takes a partial index only for a query whose WHERE names its own condition (not a bound
    // state), and with the device's index (commands_device) at hand it prefers that one, so the
    // device is compared unindexed (`+device`). Otherwise `list --state dispatched` went
    // through every retained command by time, and `--device D` through all of D's, reading
    // the table whole for a handful of rows (a million commands: 3.8 s from a cold cache).
    // A command that ended rejected or failed is read through the indexes of those states
    // (commands_unsuccessful, by state and time; commands_unsuccessful_device, by device, state
    // and time), named by their condition for the same reason: through the index of every
    // command by time, `list --state failed` (and the status page's list filtered to it, on the
    // daemon's main thread at every command change) read every retained row when few had
    // failed. Either way the rows come newest first, the newer row first at the same time, as
    // through commands_accepted.
    const open = filter.state === 'accepted' || filter.state === 'dispatched';
    const unsuccessful = filter.state === 'rejected' || filter.state === 'failed';
    if (filter.device !== undefined) {
      where.push(open ? '+device = ?' : 'device = ?');
      params.push(filter.device);
    }
    if (filter.state !== undefined) {
      where.push('state = ?');
      params.push(filter.state);
    }
    if (open) where.push("state IN ('accepted', 'dispatched')");
    if (unsuccessful) where.push("state IN ('rejected', 'failed')");
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
      return translate(error, 'read', this.options.path);
    }
  }

  /**
   * The commands list gives, from a journal whose damaged pages a read may meet (sluicectl list):
   * those that can be read, the others named, through another way when the index the listing
   * reads is damaged (damaged-lists.ts).
   */
  listReadable(filter: ListFilter): ListRead {
    try {
      return listReadable(this.connection().db, filter, (f) => this.list(f));
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  purgeSettled(before: number, limit: number, budgetMs = Number.POSITIVE_INFINITY): PurgeStep {
    // Committed on its own, not in the batch of the moment's claims: a purge writes many pages,
    // and on a filesystem with room for the claims and not for it, its failure at the batch's
    // COMMIT took them down with it (refused, 503 / no PUBACK) while the purge, its error
    // unseen, counted as done. On its own it fails here, alone, and says so.
    return this.write('purge', (c) => c.txPurge.immediate(before, limit, budgetMs), false);
  }

  settledSince(after: number): SettledSince {
    try {
      const s = this.connection().stmts;
      const lowest = (s.lowestSettled.get(after) as { lowest: number | null }).lowest;
      const mark = (s.lastEvent.get() as { id: number | null }).id ?? 0;
      return { mark, lowestSettledAt: lowest };
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  /**
   * Settled commands in the order of their settlement time, then journal id, after `after`
   * (inclusive of `after.settledAt` when `after.id` is 0), at most `limit`: a seek of the
   * index of settled commands (commands_settled) and the page's rows. The MQTT intake's
   * re-sending of results the broker may not have acknowledged (mqtt-result-delivery.ts).
   */
  settledAfter(after: SettledAfter, limit: number): SettledPage {
    try {
      const rows = this.connection()
        .db.prepare(
          `SELECT * FROM commands
           WHERE settled_at >= ? AND (settled_at > ? OR id > ?)
           ORDER BY settled_at, id LIMIT ?`,
        )
        .all(after.settledAt, after.settledAt, after.id, limit) as CommandRow[];
      const last = rows.at(-1);
      return {
        records: rows.map(rowToRecord),
        last:
          last === undefined || last.settled_at === null
            ? null
            : { settledAt: last.settled_at, id: last.id },
      };
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  /**
   * The commands the journal holds under `scope`: how many, how many of them open, and when the
   * last of them settled (null while none has). A read of the whole table (no index is by
   * scope): for a start, and rarely after it (identity-renames.ts), never per request.
   */
  scopeKeys(scope: string): { count: number; open: number; lastSettledAt: number | null } {
    try {
      const row = this.connection()
        .db.prepare(
          `SELECT count(*) AS count,
             coalesce(sum(state IN ('accepted', 'dispatched')), 0) AS open,
             max(settled_at) AS lastSettledAt
           FROM commands WHERE scope = ?`,
        )
        .get(scope) as { count: number; open: number; lastSettledAt: number | null };
      return row;
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  readMeta(key: string): string | null {
    try {
      const row = this.connection().stmts.readMeta.get(key) as { value: string } | undefined;
      return row?.value ?? null;
    } catch (error) {
      return translate(error, 'read', this.options.path);
    }
  }

  writeMeta(key: string, value: string): void {
    // On its own, like a purge: a failure here must not take the moment's claims down with it.
    this.write('meta', (c) => c.stmts.writeMeta.run(key, value), false);
  }

  checkWritable(): void {
    // After a failed fdatasync every barrier fails until the journal has written its log anew
    // (group-commit.ts, recover()), so every intake refuses; a write still succeeds meanwhile
    // (it only reaches the page cache), and the check below would call the journal writable.
    const failure = this.group.syncFailure;
    if (failure !== null) {
      // A barrier asked for here carries the recovery when it is due: an idle journal, which no
      // command asks for one, becomes writable again without waiting for a command to fail.
      this.group.durable().catch(() => undefined);
      throw failure;
    }
    // A real write, committed on its own: it fails the way a claim would (full, read-only,
    // locked), at once rather than at the end of a batch. Short of room, it commits as many
    // pages as a claim (CLAIM_PROOF_PAGES), of the journal's own page size: a value that spans
    // them, different on every page from the last proof's (SQLite writes no page whose bytes
    // are unchanged).
    const free = freeBytes(this.options.path);
    const mark = `${new Date().toISOString()} ${++this.proofs} `;
    this.write(
      'check',
      (c) => {
        const pageSize = this.pageSize(c);
        const pages =
          free !== null && free >= CLAIM_ROOM_BELOW_PAGES * pageSize ? 1 : CLAIM_PROOF_PAGES;
        // An overflow page of a value holds all of its page but the 4 bytes that link it.
        const length = (pages - 1) * (pageSize - 4);
        const value =
          pages === 1 ? mark : mark.repeat(Math.ceil(length / mark.length)).slice(0, length);
        return c.stmts.touch.run(value);
      },
      false,
    );
  }

  /** The page size of the journal's file, as `connection` reads it (once). */
  private pageSize(connection: Connection): number {
    let size = this.pageSizes.get(connection);
    if (size === undefined) {
      size = connection.db.pragma('page_size', { simple: true }) as number;
      this.pageSizes.set(connection, size);
    }
    return size;
  }

  /**
   * What the journal met at its last write, or since its last failed fdatasync, without writing
   * anything (the status line asks every second; checkWritable() proves it with a write). Null
   * while the last write succeeded and no flush has failed since the log was written anew.
   */
  knownFailure(): JournalUnavailableError | null {
    return this.group.syncFailure ?? this.group.commitFailure ?? this.writeFailure;
  }

  get syncPending(): boolean {
    return this.group.pending;
  }

  /**
   * Whether `record`'s settlement is on disk: at once without group commit or with nothing
   * pending; otherwise when the write that settled it (in this process; one made before it
   * opened the journal counts as write 0) came before a barrier that has completed.
   */
  settledDurably(record: CommandRecord): boolean {
    if (this.options.groupCommit !== true || !this.group.pending) return true;
    if (record.settledAt === null) return false;
    return this.group.synced(this.settles.get(refId(record)) ?? 0);
  }

  /** Resolves once every write made so far is on disk (GroupCommit); without group commit, at once. */
  durable(): Promise<void> {
    return this.group.durable();
  }

  /** Durability barriers (fsyncs of group commit) completed so far (the tests count them). */
  get barriers(): number {
    return this.group.barriers;
  }

  /** Batches (write transactions of group commit) committed so far (the tests count them). */
  get batchCommits(): number {
    return this.group.batchCommits;
  }

  /** Recoveries from a failed fdatasync completed so far (the tests count them). */
  get recoveries(): number {
    return this.group.recoveries;
  }

  close(): void {
    // A batch still open is committed (not fsynced: a graceful stop awaited durable() first).
    this.group.commitBatch();
    // A failed fdatasync outstanding: the WAL is written anew before SQLite's checkpoint at
    // close copies it into the database file (group-commit.ts, recover()).
    this.group.recoverAtClose();
    this.closed = true;
    if (this.conn.db.open) this.conn.db.close();
    // An fdatasync still running keeps its descriptor until it returns.
    this.group.closeWal();
    // With no connection open: closing it releases no lock in use.
    this.group.closeShm();
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
    if (!batched) this.group.commitBatch();
    let connection: Connection;
    try {
      connection = this.connection();
    } catch (error) {
      if (error instanceof JournalUnavailableError) this.writeFailure = error;
      throw error;
    }
    let inBatch = false;
    try {
      if (batched) {
        this.group.begin(connection.db);
        inBatch = true;
      }
      // Inside the batch, better-sqlite3 runs the write's transaction as a savepoint.
      const result = run(connection);
      if (this.options.groupCommit === true) this.lastWrite = this.group.wrote();
      this.writeFailure = null;
      return result;
    } catch (error) {
      // Some errors (a full disk, an I/O error) make SQLite roll the whole batch back.
      if (inBatch && !connection.db.inTransaction) this.group.lose(error);
      const code = (error as { code?: unknown }).code;
      if (typeof code === 'string' && code.startsWith('SQLITE_READONLY')) {
        this.readOnlyConnection = true;
      }
      try {
        return translate(error, what, this.options.path);
      } catch (translated) {
        if (translated instanceof JournalUnavailableError) this.writeFailure = translated;
        throw translated;
      }
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
    // After a failed fdatasync, SQLite's checkpoint at the close below would copy the WAL past
    // the commits whose writeback failed into the database file (group-commit.ts, recover()):
    // the WAL is written anew first, and while that cannot be done the connection is kept (a
    // read-only one fails its writes: the journal stays unavailable, as it is anyway until the
    // recovery). A filesystem remounted read-only after an I/O error is the usual case.
    if (!this.group.recoverAtClose()) return;
    // Closed first: SQLite shares a file's WAL index among the connections of a process, and a
    // new connection opened beside the old one would join its read-only index.
    if (this.conn.db.open) {
      if (this.conn.db.inTransaction) {
        this.group.lose(new Error('the connection was replaced with a batch open'));
      }
      this.conn.db.close();
    }
    // Between the two connections: closing it releases no lock in use (GroupCommit.shm).
    this.group.closeShm();
    try {
      this.conn = openConnection(this.options);
      this.readOnlyConnection = false;
    } catch {
      // Left closed: the next use tries again (and refuses meanwhile, as unavailable).
    }
  }
}
