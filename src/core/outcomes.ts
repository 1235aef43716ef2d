import { isTerminal, type OpenState } from './command.js';
import { timer, type Clock } from './clock.js';
import { JournalConflictError, JournalUnavailableError } from './errors.js';
import {
  claimId,
  readClaim,
  type ClaimRef,
  type CommandOf,
  type CommandRecord,
  type CommandRef,
  type Journal,
} from './journal.js';
import { PIPELINE, refId, type Lane, type Outcome } from './lane.js';
import type { Logger } from './logger.js';

/**
 * How long a settled command took (the metrics' histograms). Durations are measured on the
 * monotonic clock (SPEC §6) from the moments this process saw — its acceptance, its journaled
 * dispatch, its settlement — so that a step of the gateway's wall clock meanwhile makes them
 * neither negative nor hours long; a moment from an earlier life of the daemon (a command
 * taken up after a restart) has only the journal's wall-clock time, and that span is never
 * counted below zero.
 */
export interface SettledTimes {
  /** From its acceptance to its terminal state, ms. */
  readonly sinceAcceptedMs: number;
  /** From its first journaled dispatch to its terminal state, ms; null: it was never dispatched. */
  readonly sinceDispatchedMs: number | null;
}

export type SettledListener = (record: CommandRecord, times: SettledTimes) => void;

/** A command's moments on the monotonic clock, as this process saw them. */
interface Moments {
  accepted?: number;
  dispatched?: number;
  settled?: number;
}

/**
 * One waiter for a command's outcome: woken with the record, or with nothing. `fingerprint`:
 * the claim it waits for (CommandOf); a settlement of another command under the key (claimed
 * after this one's claim was lost with its batch) is not this one's outcome. Undefined: an
 * operator naming a key waits for whatever command the key names.
 */
interface Waiter {
  readonly fingerprint: string | undefined;
  readonly wake: (settled: CommandRecord | undefined) => void;
}

/** Whether `waiter` waits for the claim `claim`. */
function waitsFor(waiter: Waiter, claim: ClaimRef): boolean {
  return waiter.fingerprint === undefined || waiter.fingerprint === claim.fingerprint;
}

/** How soon a settlement whose barrier failed asks for the next one (announceOnceSynced). */
const ANNOUNCE_RETRY_MS = 1_000;

/** What the outcomes need from the pipeline they serve. */
export interface OutcomesHost {
  readonly journal: Journal;
  readonly clock: Clock;
  readonly lanes: ReadonlyMap<string, Lane>;
  /** The pipeline's stop: waiters give up when it aborts. */
  readonly signal: AbortSignal;
  /**
   * Told of a settlement as soon as it is journaled, in the same turn, before its barrier
   * (announce): what the settlement follows from is as it stood then, not once the disk has
   * answered (the watch for a late echo, late-echo.ts).
   */
  readonly journaled?: (settled: CommandRecord) => void;
}

/**
 * Commands' outcomes, from the journal to whoever waits for them: a settlement is journaled,
 * then announced — to the waiters (an HTTPS request with `Prefer: wait`, an operator's
 * reverify, READY=1 after recovery) and the listeners (result publication, metrics) — once it is
 * on disk (group commit, I5). The intakes' barriers (durable, durableFor) are here too: what an
 * intake answers with must be on disk before the answer.
 */
export class Outcomes {
  private readonly host: OutcomesHost;
  /** Who waits for which command, by key (refId): woken with the record, or with nothing. */
  private readonly waiters = new Map<string, Set<Waiter>>();
  /** Settled records announced after their barrier: on disk, whatever was written since. */
  private readonly announced = new WeakSet<CommandRecord>();
  private readonly listeners = new Set<SettledListener>();
  /**
   * Open commands' moments (SettledTimes), by claim (claimId), until their settlement is
   * announced.
   */
  private readonly moments = new Map<string, Moments>();

  constructor(host: OutcomesHost) {
    this.host = host;
    // The pipeline's stop wakes every waiter: one listener for all of them (an EventTarget
    // walks its listeners on every add and remove, at a hundred waiting requests a cost per
    // command larger than the wait's own).
    host.signal.addEventListener(
      'abort',
      () => {
        for (const set of this.waiters.values()) for (const w of set) w.wake(undefined);
      },
      { once: true },
    );
  }

  onSettled(listener: SettledListener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** A new command was journaled at `nowMono` (the monotonic clock). */
  accepted(ref: ClaimRef, nowMono: number): void {
    this.moment(ref).accepted = nowMono;
  }

  /**
   * A command's dispatch was journaled now (`attempts`: its dispatches so far). A re-dispatch
   * (a command going round again after its write found no connection, execution.ts) leaves the
   * first one's moment, as the journal's dispatchedAt (the first dispatch's) that times a
   * command of an earlier life: the dispatch-to-settled time counts every round. Moved to each
   * round's, it left out the wait for the connection and timed a command settled 20 s after its
   * first dispatch as one of a second. A command first dispatched by an earlier life has no
   * moment of this process, and a re-dispatch in this one gives it none: it is timed from the
   * journal's dispatchedAt (timesOf), its earlier life and the time the daemon was down
   * included, where taking the re-dispatch's moment timed it from this life's round alone.
   */
  dispatched(ref: ClaimRef & { readonly attempts: number }): void {
    if (ref.attempts <= 1) this.moment(ref).dispatched = this.host.clock.elapsed();
  }

  private moment(ref: ClaimRef): Moments {
    const id = claimId(ref);
    let moments = this.moments.get(id);
    if (moments === undefined) {
      moments = {};
      this.moments.set(id, moments);
    }
    return moments;
  }

  /** The durations of a settled command, and its moments forgotten (SettledTimes). */
  private timesOf(settled: CommandRecord): SettledTimes {
    const id = claimId(settled);
    const moments = this.moments.get(id) ?? {};
    this.moments.delete(id);
    const end = moments.settled ?? this.host.clock.elapsed();
    const wall = (from: number): number => Math.max(0, (settled.settledAt ?? from) - from);
    return {
      sinceAcceptedMs:
        moments.accepted === undefined ? wall(settled.acceptedAt) : end - moments.accepted,
      sinceDispatchedMs:
        settled.dispatchedAt === null
          ? null
          : moments.dispatched === undefined
            ? wall(settled.dispatchedAt)
            : end - moments.dispatched,
    };
  }

  /** Journals the outcome (with its stored result) and tells listeners and waiters. */
  settle(
    log: Logger,
    record: CommandRecord,
    from: OpenState,
    outcome: Outcome,
  ): CommandRecord | null {
    let settled: CommandRecord;
    try {
      settled = this.host.journal.settle(record, from, {
        ...outcome,
        at: this.host.clock.now(),
        intake: PIPELINE,
      });
    } catch (error) {
      if (error instanceof JournalConflictError) {
        // Settled elsewhere (an operator), or its key names another command now: its claim
        // was lost with its batch (CommandOf). The journal keeps what it holds.
        log.warn(
          { err: error },
          'outcome not journaled: the command was settled elsewhere, or its claim was lost and its key names another command; the journal keeps what it holds',
        );
        return null;
      }
      if (error instanceof JournalUnavailableError) {
        log.error({ err: error }, 'outcome could not be journaled; command left open');
        return null;
      }
      throw error;
    }
    this.moment(settled).settled = this.host.clock.elapsed();
    const lane = this.host.lanes.get(settled.device);
    if (
      lane !== undefined &&
      lane.inFlight !== null &&
      claimId(lane.inFlight) === claimId(settled)
    ) {
      lane.settledInFlight = settled;
    }
    const level = outcome.to === 'confirmed' ? 'info' : 'warn';
    log[level](
      {
        state: settled.state,
        code: settled.code,
        faultCode: settled.faultCode,
        detail: settled.detail,
      },
      `command ${settled.state}`,
    );
    this.announce(settled, log);
    return settled;
  }

  /**
   * Tells waiters and listeners (result publication, metrics) that a command settled — once its
   * settlement is on disk: a published result must never be lost to a power cut (group commit).
   */
  announce(settled: CommandRecord, log: Logger): void {
    this.host.journaled?.(settled);
    this.announceWhenDurable(settled, log);
  }

  /** announce, without telling `journaled` again (a settlement whose barrier failed). */
  private announceWhenDurable(settled: CommandRecord, log: Logger): void {
    const { journal } = this.host;
    if (!journal.syncPending) {
      this.announceNow(settled, log);
      return;
    }
    journal.durable().then(
      () => {
        this.announceNow(settled, log);
      },
      (error: unknown) => {
        log.error(
          { err: error },
          'journal sync failed: the result is not published until the journal has recovered and synced it (fail closed)',
        );
        this.announceOnceSynced(settled, log);
      },
    );
  }

  /**
   * A settlement whose barrier failed stays in the journal, but a later fdatasync that succeeds
   * does not prove it on disk (Linux reports a writeback error once and may drop the failed
   * pages' dirty state): group commit fails every barrier until the journal has recovered —
   * written its log anew and synced it (group-commit.ts, recover()) — and the first barrier that
   * succeeds after that covers the settlement: it is announced then. Without this its result
   * was never published (SPEC §5: every terminal outcome) and no waiter was woken, although the
   * command is terminal and every later replay returns it. Asked again at a pace (each ask is a
   * barrier, which tries the recovery when it is due) until one succeeds, the pipeline stops, or
   * the settlement is found gone (its batch was lost: the command is open again, and its new
   * outcome is announced in its turn; or its claim was lost with it, and the key may name
   * another command since, claimed and settled alike, whose record is not this one's: read by
   * claim, readClaim).
   */
  private announceOnceSynced(settled: CommandRecord, log: Logger): void {
    const { clock, journal, signal } = this.host;
    void clock.sleep(ANNOUNCE_RETRY_MS, signal).then(() => {
      if (signal.aborted) return;
      let current: CommandRecord | undefined;
      try {
        current = readClaim(journal, settled);
      } catch {
        this.announceOnceSynced(settled, log);
        return;
      }
      if (current?.state !== settled.state || current.settledAt !== settled.settledAt) {
        log.warn({}, 'the settlement was lost with its batch: not published; the command goes on');
        return;
      }
      this.announceWhenDurable(settled, log);
    });
  }

  /**
   * A command whose claim is not in the journal when its device takes it up: the batch that
   * held the claim was lost at its COMMIT (a full disk), so it will never settle. Its waiters
   * (an HTTPS request with `Prefer: wait`) are woken now: they find it gone and answer 503 at
   * once, not at the end of their wait (up to the wait policy's maximum). Those of the claim:
   * its key may name another command now, claimed since, whose waiters wait on — as does one
   * naming the key alone (an operator, a test), which waits for whatever command it names.
   */
  lost(ref: ClaimRef): void {
    this.moments.delete(claimId(ref));
    const waiting = this.waiters.get(refId(ref));
    if (waiting === undefined) return;
    let namesNone: boolean | undefined;
    for (const w of [...waiting]) {
      if (w.fingerprint === undefined) {
        namesNone ??= this.namesNone(ref);
        if (!namesNone) continue;
      } else if (w.fingerprint !== ref.fingerprint) continue;
      w.wake(undefined);
    }
  }

  /** Whether the key names no command now; true when the journal cannot say (woken, it reads). */
  private namesNone(ref: CommandRef): boolean {
    try {
      return this.host.journal.get(ref) === undefined;
    } catch {
      return true;
    }
  }

  /** Whether this record was announced: its settlement's own barrier succeeded. */
  wasAnnounced(record: CommandRecord): boolean {
    return this.announced.has(record);
  }

  private announceNow(settled: CommandRecord, log: Logger): void {
    this.announced.add(settled);
    const times = this.timesOf(settled);
    const waiting = this.waiters.get(refId(settled));
    if (waiting !== undefined) {
      for (const w of [...waiting]) if (waitsFor(w, settled)) w.wake(settled);
    }
    for (const listener of this.listeners) {
      try {
        listener(settled, times);
      } catch (error) {
        log.error({ err: error }, 'settled listener failed');
      }
    }
  }

  /**
   * Resolves with the claim's command once it is terminal, or as it stands after `timeoutMs`:
   * undefined when its key names no command of the claim (readClaim: lost with its batch, the
   * key claimed again since for another command). Without a fingerprint, whatever command the
   * key names.
   */
  async waitForSettled(ref: CommandOf, timeoutMs: number): Promise<CommandRecord | undefined> {
    const { journal, clock, signal } = this.host;
    const current = readClaim(journal, ref);
    if (current === undefined || isTerminal(current.state) || timeoutMs <= 0 || signal.aborted) {
      // What the caller answers with must be on disk (group commit).
      await this.durable();
      return current;
    }
    const id = refId(ref);
    let set = this.waiters.get(id);
    if (set === undefined) {
      set = new Set();
      this.waiters.set(id, set);
    }
    const waiting = set;
    // Woken with the record by its announcement, with nothing by the pipeline's stop, or by
    // the timer after `timeoutMs`: whichever comes first.
    const settled = await new Promise<CommandRecord | undefined>((resolve) => {
      const waiter: Waiter = {
        fingerprint: ref.fingerprint,
        wake: (record) => {
          cancel();
          waiting.delete(waiter);
          if (waiting.size === 0 && this.waiters.get(id) === waiting) this.waiters.delete(id);
          resolve(record);
        },
      };
      const cancel = timer(clock, timeoutMs, () => {
        waiter.wake(undefined);
      });
      waiting.add(waiter);
    });
    // Woken by the settlement's announcement: on disk already, and the record is at hand.
    if (settled !== undefined) return settled;
    await this.durable();
    return readClaim(journal, ref);
  }

  /**
   * Resolves with how many of `refs` are still open once every one of them is terminal on
   * disk, after `timeoutMs`, or when the pipeline stops: one listener for all of them (a
   * restart may recover thousands), the journal read once at the start and once more for
   * those still pending at the end (a settlement whose barrier failed is not announced).
   * Throws when the journal cannot be read.
   */
  async waitForAllSettled(refs: readonly CommandRef[], timeoutMs: number): Promise<number> {
    const { journal, clock, signal } = this.host;
    const pending = new Set(refs.map(refId));
    const done = new AbortController();
    const wake = (): void => {
      done.abort(WOKEN);
    };
    const off = this.onSettled((record) => {
      if (pending.delete(refId(record)) && pending.size === 0) wake();
    });
    signal.addEventListener('abort', wake, { once: true });
    try {
      const open = new Set(journal.listOpenRefs().map(refId));
      for (const id of pending) if (!open.has(id)) pending.delete(id);
      if (pending.size > 0 && timeoutMs > 0 && !signal.aborted) {
        await clock.sleep(timeoutMs, done.signal);
      }
    } finally {
      off();
      signal.removeEventListener('abort', wake);
    }
    if (pending.size > 0) {
      const open = new Set(journal.listOpenRefs().map(refId));
      for (const id of pending) if (!open.has(id)) pending.delete(id);
    }
    // What the count says must be on disk (group commit).
    await this.durable();
    return pending.size;
  }

  /**
   * Resolves once every journal write so far is on disk: with group commit, the intakes await
   * it before they acknowledge, answer or replay (I5), sharing one fsync among the commands
   * that arrived together. Rejects with JournalUnavailableError when the journal cannot sync.
   */
  durable(): Promise<void> {
    const { journal } = this.host;
    return journal.syncPending ? journal.durable() : Promise.resolve();
  }

  /**
   * Resolves once what `record` reports is on disk: at once for a settlement already announced
   * (announcements follow their barrier) or synced, otherwise as durable(). An answer with a
   * settled command then waits for no barrier of commands that came after it.
   */
  durableFor(record: CommandRecord): Promise<void> {
    return this.settledDurably(record) ? Promise.resolve() : this.durable();
  }

  /** Whether a settled command's settlement is on disk already (see durableFor). */
  settledDurably(record: CommandRecord): boolean {
    return this.announced.has(record) || this.host.journal.settledDurably(record);
  }
}

/**
 * The reason a waiter's sleep is cut short. A reason given avoids the DOMException (and its
 * stack trace) that abort() makes without one: once per waiting request, on the answer's path.
 */
const WOKEN = Object.freeze(new Error('woken'));
