import type {
  Action,
  CommandState,
  OpenState,
  RejectCode,
  ResultCode,
  TerminalState,
} from './command.js';

/** How the issuer's time was obtained: given by the issuer, or the gateway's receive time. */
export type IssuedAtSource = 'issuer' | 'gateway';

/** What a readback showed, as journaled with a command. */
export interface Observation {
  readonly state: string;
  readonly position: number | null;
  readonly seq: number | null;
  readonly faultCode: string | null;
  /** Controller source time, RFC 3339, when the controller reported one. */
  readonly sourceTime: string | null;
  /** Gateway time the read was requested, RFC 3339. */
  readonly readAt: string;
}

export interface CommandRef {
  readonly scope: string;
  readonly key: string;
}

/**
 * The command a write is made for (dispatch, re-dispatch, settlement): its ref and, when known,
 * its fingerprint (a record as read). With the fingerprint the write applies only to a row of
 * that command: a key's claim lost with its batch (a COMMIT that failed) leaves its command
 * running from the record read in that batch, and by its next write the key may name another
 * command, claimed since (a QoS 1 redelivery); a write by key alone settled or dispatched that
 * one with the lost command's readbacks (an open "confirmed" on a CLOSED valve, nothing
 * written). Such a write fails JournalConflictError.
 */
export type CommandOf = CommandRef & { readonly fingerprint?: string };

/** A command's identity as a map key: its scope and its key. */
export function refId(ref: CommandRef): string {
  return `${ref.scope}\u0000${ref.key}`;
}

/**
 * One claim of a key: the key's ref and the fingerprint of the command claimed under it (which
 * names its device too). What holds a command by its claim — its device's queue and worker, a
 * stop's preemption, a request waiting for its outcome, an MQTT requester's Response Topic —
 * holds this, not the key alone: a claim lost with its batch (a COMMIT that failed) leaves its
 * ref there, and the key may be claimed again since for another command, on another device
 * perhaps (a reuse of the key sent at QoS 1 and redelivered, a client's own reuse). By key
 * alone, the lost claim's queue entry ran that command on its own device, and its waiter was
 * answered with that command's outcome. Read as a claim (readClaim), the key's row is that
 * command only when it is this claim's.
 */
export type ClaimRef = CommandRef & { readonly fingerprint: string };

/** The claim of a command (or of a claim's ref): its scope, key and fingerprint alone. */
export function claimRef(ref: ClaimRef): ClaimRef {
  return { scope: ref.scope, key: ref.key, fingerprint: ref.fingerprint };
}

/** A claim's identity as a map key: its ref's (refId) and its fingerprint. */
export function claimId(ref: ClaimRef): string {
  return `${refId(ref)}\u0000${ref.fingerprint}`;
}

/**
 * The claim's command as `journal` holds it: undefined when the key names no command (the
 * claim was lost with its batch) or another command (claimed since). Claimed again with the
 * same payload (a retry), the key names the same command: its row is the claim's. A ref
 * without a fingerprint (an operator names a key) reads whatever command the key names.
 */
export function readClaim(
  journal: Pick<Journal, 'get'>,
  claim: CommandOf,
): CommandRecord | undefined {
  const record = journal.get(claim);
  return claim.fingerprint === undefined || record?.fingerprint === claim.fingerprint
    ? record
    : undefined;
}

/**
 * An open command as the sweep needs it: which (its claim), on which device, in which state,
 * doing what.
 */
export interface OpenRef extends ClaimRef {
  readonly device: string;
  readonly state: OpenState;
  /** A stop preempts what was accepted before it, after a restart too (SPEC §2). */
  readonly action: Action;
}

/** An open command with its journal id (Journal.openOfDevice): where the next page begins. */
export interface OpenPageRef extends OpenRef {
  readonly id: number;
}

/** A stop with its journal id (Journal.stopsSince). */
export interface OpenStopRef extends ClaimRef {
  readonly id: number;
  readonly device: string;
}

/**
 * The open commands counted (Journal.openCounts), without reading them: what /metrics, /readyz
 * and the status page show of a backlog of any size.
 */
export interface OpenCounts {
  readonly accepted: number;
  readonly dispatched: number;
  /** The earliest acceptance among them; null when none is open. */
  readonly oldestAcceptedAt: number | null;
  /** For each time asked, how many of them were accepted at it or after (same order). */
  readonly acceptedSince: readonly number[];
}

/** A page of one device's open commands (Journal.openOfDevice). */
export interface OpenPage {
  readonly refs: readonly OpenPageRef[];
  /** The `afterId` of the next page; null when this one was the last. */
  readonly next: number | null;
}

/** A dispatched command with its sequence number (Journal.dispatchedOfDevice). */
export interface DispatchedRef extends OpenPageRef {
  readonly seq: number;
}

/** Where a page of a device's dispatched commands begins: after this sequence number and id. */
export interface DispatchedAfter {
  readonly seq: number;
  readonly id: number;
}

/** A page of one device's dispatched commands (Journal.dispatchedOfDevice). */
export interface DispatchedPage {
  readonly refs: readonly DispatchedRef[];
  /** Where the next page begins; null when this one was the last. */
  readonly next: DispatchedAfter | null;
}

/** One device's open commands past a deadline (Journal.openPastDeadline). */
export interface PastDeadline {
  /** Those past it (the earliest deadlines, up to the limit asked), and the dispatched ones. */
  readonly records: readonly CommandRecord[];
  /** The device's open commands past it, all of them: counted, not read. */
  readonly total: number;
}

/** A new command, ready to be claimed. */
export interface NewCommand extends CommandRef {
  readonly fingerprint: string;
  readonly device: string;
  readonly action: Action;
  readonly position: number | null;
  readonly issuedAt: number;
  readonly issuedAtSource: IssuedAtSource;
  readonly ttlMs: number;
  readonly deadline: number;
  readonly intake: string;
  readonly acceptedAt: number;
}

export interface CommandRecord extends NewCommand {
  readonly state: CommandState;
  readonly code: ResultCode | null;
  readonly faultCode: string | null;
  /** Controller sequence number used for the write; null until dispatched. */
  readonly seq: number | null;
  /**
   * Number of writes journaled (0, 1, or more after re-dispatches: at most two of them may have
   * left the gateway, redispatch.ts; at most MAX_DISPATCHES in all).
   */
  readonly attempts: number;
  readonly observedBefore: Observation | null;
  readonly observed: Observation | null;
  readonly detail: string | null;
  readonly dispatchedAt: number | null;
  readonly settledAt: number | null;
  /** The result body of a settled command (renderResult of this record): every replay is byte-identical. */
  readonly response: string | null;
}

export interface JournalEvent {
  readonly at: number;
  readonly from: CommandState | null;
  readonly to: CommandState;
  readonly intake: string;
  readonly detail: string;
}

/**
 * The history event of a duplicate claim (same key, same fingerprint) and of a refused key reuse
 * (same key, different fingerprint). A client stuck retrying one key would add one per retry,
 * without bound: repeated hits of one kind over one intake, with nothing else journaled for the
 * command since, are kept as one event, `at` its last hit, its detail carrying how many and when
 * the first was (repeatDetail).
 */
/**
 * The most writes one command is ever journaled for (dispatch and re-dispatches). Two at most may
 * have left the gateway (redispatch.ts); the others were refused unsent by the driver for want of
 * a connection, each followed by a fresh read. A link flapping that often within one deadline is
 * no blip: the command ends `failed` `DEVICE_UNREACHABLE` rather than fill its history.
 */
export const MAX_DISPATCHES = 10;

export const DUPLICATE_DETAIL = 'duplicate';
export const KEY_REUSE_DETAIL = 'key reuse refused: different payload';

/** `duplicate ×12 (first 2026-12-03T23:00:00.000Z)`: the detail of a repeated hit. */
export function repeatDetail(
  base: typeof DUPLICATE_DETAIL | typeof KEY_REUSE_DETAIL,
  count: number,
  firstAt: number,
): string {
  return count === 1 ? base : `${base} ×${count} (first ${new Date(firstAt).toISOString()})`;
}

/** A hit event's kind, count and first time (its `at` is the last); null for any other event. */
export function repeatOf(event: Pick<JournalEvent, 'at' | 'detail'>): {
  readonly base: typeof DUPLICATE_DETAIL | typeof KEY_REUSE_DETAIL;
  readonly count: number;
  readonly firstAt: number;
} | null {
  for (const base of [DUPLICATE_DETAIL, KEY_REUSE_DETAIL] as const) {
    if (event.detail === base) return { base, count: 1, firstAt: event.at };
    if (!event.detail.startsWith(`${base} ×`)) continue;
    const m = /^ ×(\d+) \(first ([^)]+)\)$/.exec(event.detail.slice(base.length));
    const firstAt = m === null ? Number.NaN : Date.parse(m[2] ?? '');
    if (m === null || Number.isNaN(firstAt)) return null;
    return { base, count: Number(m[1]), firstAt };
  }
  return null;
}

/** What a retry of a key is judged by (Journal.retry): the submission's fingerprint, its intake and time. */
export type Retry = Pick<NewCommand, 'scope' | 'key' | 'fingerprint' | 'intake' | 'acceptedAt'>;

export type Claim =
  | { readonly kind: 'new'; readonly record: CommandRecord }
  | { readonly kind: 'duplicate'; readonly record: CommandRecord }
  | { readonly kind: 'reused'; readonly record: CommandRecord };

export interface Settlement {
  readonly to: TerminalState;
  readonly code: ResultCode;
  readonly faultCode: string | null;
  readonly observed: Observation | null;
  readonly detail: string;
  readonly at: number;
  readonly intake: string;
}

/**
 * A rejection decided at the door (the identity may not command the device), journaled in the
 * same commit as the claim: there is never a moment where the command sits `accepted` and
 * could be taken up, e.g. by recovery after a crash.
 */
export interface Rejection {
  readonly code: RejectCode;
  readonly detail: string;
}

/**
 * Chooses a command's sequence number inside the dispatch commit: from the device's last
 * allocated number (0 when none yet) and the numbers of its other open commands.
 */
export type SeqAllocator = (last: number, open: ReadonlySet<number>) => number;

export interface ListFilter {
  readonly device?: string;
  readonly state?: CommandState;
  readonly since?: number;
  readonly limit?: number;
}

/**
 * The journal port. Every method is synchronous and durable when it returns (fsync): an intake
 * may acknowledge a command as soon as `claim` returns. A method that cannot write throws
 * JournalUnavailableError; a guarded transition that finds another state throws
 * JournalConflictError.
 */
/** One step of the retention purge (Journal.purgeSettled). */
export interface PurgeStep {
  /** Commands deleted with their history. */
  readonly purged: number;
  /** The step ended on its limit or its time budget: more may be due. */
  readonly more: boolean;
}

/** The settlements journaled after a point of the journal's order (Journal.settledSince). */
export interface SettledSince {
  /** The journal's last event now: where to ask from next time (0 when it has none). */
  readonly mark: number;
  /** The lowest settlement time (wall clock) among the events after the point; null when none. */
  readonly lowestSettledAt: number | null;
}

/** Where a page of settled commands in settlement order begins (SqliteJournal.settledAfter). */
export interface SettledAfter {
  /** Wall-clock settlement time of the last command read (its settledAt). */
  readonly settledAt: number;
  /** Its journal id (0: from the first command settled at `settledAt`). */
  readonly id: number;
}

/** A page of settled commands, in the order of (settledAt, journal id). */
export interface SettledPage {
  readonly records: readonly CommandRecord[];
  /** The last command of the page: where the next one begins; null when the page is empty. */
  readonly last: SettledAfter | null;
}

export interface Journal {
  /**
   * Inserts the command once. An existing key is returned as a duplicate (same fingerprint)
   * or a reuse (different fingerprint); either hit is recorded in its history, repeated hits
   * of one kind over one intake as one event with their count (repeatDetail). With a
   * `rejection`, a new command is inserted and rejected in one commit.
   */
  claim(command: NewCommand, rejection?: Rejection): Claim;
  /**
   * A submission of a key already journaled, answered and recorded as claim() answers and
   * records it (a duplicate or a reuse); null, with nothing written, when the key is not
   * journaled. For a submission that cannot become a command (its device no longer configured,
   * or no longer given the action by its profile): a retry of a key accepted before the change
   * still gets that command's outcome, as every replay does, not a refusal its client could
   * take for "never accepted".
   */
  retry(command: Retry): Claim | null;
  get(ref: CommandRef): CommandRecord | undefined;
  /** Every scope's command with this key (the operator names keys, not scopes). */
  findByKey(key: string): CommandRecord[];
  /**
   * accepted → dispatched, with the sequence number `allocate` chooses in the same commit
   * from the device's last one and those of its commands still open (the rule is the core's:
   * src/core/sequence.ts).
   */
  markDispatched(
    ref: CommandOf,
    at: number,
    observedBefore: Observation,
    intake: string,
    allocate: SeqAllocator,
    /** Appended to the history event ("seq 7; …"): what the dispatch was judged on. */
    detail?: string,
  ): CommandRecord;
  /**
   * Another write of the command, after its latest was proven not applied (once per command:
   * the core's rule, redispatch.ts) or never sent (as often as its deadline allows). Made only
   * from the record as read, `ref.attempts` (JournalConflictError when the command was
   * re-dispatched meanwhile: two workers never both dispatch one write again), and at most
   * MAX_DISPATCHES writes in all. With `observedBefore`, the write is decided on that newer
   * read (the latest was never sent), and it replaces the one the dispatch was judged on.
   */
  markRedispatched(
    ref: CommandOf & { readonly attempts: number },
    at: number,
    detail: string,
    intake: string,
    observedBefore?: Observation,
  ): CommandRecord;
  settle(ref: CommandOf, from: OpenState, settlement: Settlement): CommandRecord;
  /**
   * An event without a transition (recovery findings, operator notes). With a fingerprint
   * (CommandOf) it goes only to a row of that command: a command whose claim was lost with its
   * batch says nothing in the history of the command its key names since.
   */
  note(ref: CommandOf, at: number, detail: string, intake: string): void;
  history(ref: CommandRef): JournalEvent[];
  /** Non-terminal commands, in the journal's order (its ids: the order they were claimed in). */
  listOpen(): CommandRecord[];
  /**
   * The same commands, only what the sweep needs of them: a backlog of thousands is read every
   * second while it is worked off, and whole records (histories of JSON, rendered results)
   * would cost the event loop tens of milliseconds each time. In the order they were claimed
   * (not by acceptedAt, which a step of the gateway's clock can reorder).
   */
  listOpenRefs(): OpenPageRef[];
  /**
   * The stops claimed after the row `afterId` (an OpenPageRef's id), in the journal's order,
   * open or terminal, except those refused at the door (see stopsAfter). Reads the rows
   * claimed since: asked once at a start, from the oldest open command.
   */
  stopsSince(afterId: number): OpenStopRef[];
  /**
   * The open commands of `ref`'s device claimed before it, in the journal's order; none when
   * `ref` is not open. Reads that device's open commands only: a stop asks it at its claim
   * (preemption.ts), and a list of every open command of the gateway cost it tens of
   * milliseconds a stop at ten thousand open commands.
   */
  openBefore(ref: CommandRef): OpenRef[];
  /**
   * One device's open commands, a page at a time, for the periodic sweep (sweep.ts): those
   * never given a sequence number (accepted: what a backlog is made of) with a journal id above
   * `afterId`, in the journal's order, at most `limit` (all of them with -1); with the first
   * page (`afterId` 0) also those given one (dispatched: one or two a device), all in the
   * journal's order. `next` is the `afterId` of the next page, null after the last. A page
   * costs its own rows, however many the device holds.
   */
  openOfDevice(device: string, afterId: number, limit: number): OpenPage;
  /**
   * One device's dispatched commands (those given a sequence number: a dispatch's commit gives
   * it, and only that commit makes a command dispatched), a page at a time, for the periodic
   * sweep's pass over the commands whose write may be on the wire (sweep.ts): in the order of
   * their sequence numbers, after `after` (from the first with null), at most `limit`. A seek
   * of the device's range of the open commands' index and the page's rows, however large the
   * device's backlog of commands never dispatched.
   */
  dispatchedOfDevice(device: string, after: DispatchedAfter | null, limit: number): DispatchedPage;
  /** The devices that have open commands (the sweep looks for those no longer configured). */
  openDevices(): string[];
  /**
   * The open commands by state, the earliest acceptance among them, and how many were accepted
   * at or after each of `acceptedSince`: counted by SQLite through the partial index of the open
   * commands, no row handed over (Sweep.openCommands: a backlog of ten thousand read whole and
   * summed in JavaScript cost the event loop 0.1 s a call).
   */
  openCounts(acceptedSince: readonly number[]): OpenCounts;
  /**
   * One device's open commands whose deadline is before `before`, at most `limit` of them (-1:
   * all), the earliest deadlines first, with every dispatched one of the device (one or two),
   * whole, in the journal's order; and how many open commands of the device are past `before`
   * (`total`, counted by SQLite). What the stuck rule judges (open-commands.ts: a command is
   * stuck only past its deadline, and its device's dispatched commands give the windows that
   * hold it), not the backlog still within its deadline, nor all of a backlog past it.
   */
  openPastDeadline(device: string, before: number, limit: number): PastDeadline;
  list(filter: ListFilter): CommandRecord[];
  /**
   * The stops on `ref`'s device claimed after it, newest first, at most `limit`: in the
   * journal's order, not by acceptedAt, which a step of the gateway's clock can reorder (a
   * stop accepted after a step back would look older than the command it interrupted). A stop
   * refused at the door (rejected in its claim's own commit: forbidden to its identity, stale,
   * issued in the future, the gateway clock unsynced) preempted nothing and is not one of
   * them: another identity's refused stop must not keep a command from its second write.
   */
  stopsAfter(ref: CommandRef, limit: number): CommandRecord[];
  /**
   * The command of the device's last dispatch: the one the dispatch's own commit named, with
   * the sequence number it gave (its `device_seq` row); for a dispatch journaled before commits
   * named it, the one given that number among the device's `window` newest commands. Undefined
   * when never dispatched, purged, or (such an older dispatch) more than `window` commands of
   * the device came after it without a dispatch. By what the journal recorded of the
   * dispatches, not by dispatchedAt, which a step of the gateway's clock reorders.
   */
  lastDispatched(device: string, window: number): CommandRecord | undefined;
  /**
   * Deletes, with their history, at most `limit` settled commands settled before `before`,
   * in one transaction that ends once it has taken `budgetMs` (default: no bound), possibly
   * part way through one command's history (the command and the rest stay until a later call).
   */
  purgeSettled(before: number, limit: number, budgetMs?: number): PurgeStep;
  /**
   * The settlements journaled after event `after` of the journal's order (its mark from an
   * earlier call), and the mark to ask from next: the retention sweep learns from it how the
   * wall clock read when keys settled, whatever it read at its own sweeps (RetentionSweeper).
   */
  settledSince(after: number): SettledSince;
  /** A value the journal keeps for a part of the daemon across restarts (null: none saved). */
  readMeta(key: string): string | null;
  /** Saves `value` under `key` (readMeta), in a commit of its own. */
  writeMeta(key: string, value: string): void;
  /** Throws JournalUnavailableError when a write would fail now (readiness). */
  checkWritable(): void;
  /**
   * Group commit: a journal may return from a write before it is on disk, and make every
   * write so far durable with one fsync here. Nothing may be acknowledged, published or
   * written to a controller on the strength of a write before this resolved. Rejects with
   * JournalUnavailableError when the fsync fails (fail closed).
   */
  durable(): Promise<void>;
  /** True while a write returned is not yet on disk (durable() has work to do). */
  readonly syncPending: boolean;
  /**
   * Whether this settled record's settlement is on disk already (it committed before the
   * last durability barrier began): a replay of it then needs no barrier of its own. Always
   * true without group commit.
   */
  settledDurably(record: CommandRecord): boolean;
  close(): void;
}
