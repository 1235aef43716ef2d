import { setMaxListeners } from 'node:events';
import {
  checkFreshness,
  fingerprint,
  isTerminal,
  parseIdempotencyKey,
  type CommandRequest,
  type FreshnessPolicy,
} from './command.js';
import type { Clock } from './clock.js';
import { gatewayVerdict } from './clock-policy.js';
import { deviceView, startMonitor, type DeviceView } from './device-monitor.js';
import {
  earlierWriteLostSince,
  earlierWriteSent,
  earlierWriteUnknownSince,
  takeUpWriteBounds,
  withFormerBounds,
} from './earlier-write-bounds.js';
import type { Readback } from './driver.js';
import {
  DeviceQueueFullError,
  InvalidCommandError,
  JournalUnavailableError,
  ShuttingDownError,
  UnknownDeviceError,
} from './errors.js';
import { CommandExecution } from './execution.js';
import {
  claimId,
  claimRef,
  readClaim,
  type Claim,
  type ClaimRef,
  type CommandOf,
  type CommandRecord,
  type CommandRef,
  type Journal,
  type JournalEvent,
  type NewCommand,
  type Rejection,
  type Retry,
} from './journal.js';
import { LateEcho } from './late-echo.js';
import {
  RECOVERY,
  commandLogger,
  freshnessDetail,
  noWrites,
  refId,
  withheldUnsent,
  type ClockPolicy,
  type DeviceBinding,
  type Lane,
} from './lane.js';
import type { Logger } from './logger.js';
import { UNREACHABLE_GRACE_MS, type DeviceTiming, type OpenCommands } from './open-commands.js';
import { OperatorActions } from './operator-actions.js';
import { Outcomes, type SettledListener } from './outcomes.js';
import { Preemption } from './preemption.js';
import { earlierLastWrite, keptSeqs } from './previous-write.js';
import { noReadFailures } from './read-failures.js';
import type { TimedReadback } from './skew.js';
import { deviceTimings, Sweep } from './sweep.js';

/** Who sent a command: keys are scoped to it, and it may command only its devices. */
export interface Identity {
  readonly scope: string;
  readonly devices: ReadonlySet<string> | 'all';
}

export interface Submission {
  readonly key: string;
  readonly identity: Identity;
  /** Which intake carried it: `https`, `mqtt`, `cli`; recorded in the command's history. */
  readonly intake: string;
  readonly request: CommandRequest;
  /**
   * How long the intake held the message before submitting it, ms on the monotonic clock (a
   * command copy that waited for a check of its connection, mqtt-held-copies.ts): a command with
   * no issuedAt is timed from its receipt (SPEC §2), not from its submission.
   */
  readonly heldMs?: number | undefined;
}

/**
 * What submit() made of a submission: the journal's claim. With `unrecorded`, the key was in the
 * journal already and the journal could not be written (another program holding its write
 * lock, a full disk, a read-only filesystem): the claim is the key's command as read, a
 * duplicate or a reuse, and its history has no event for this retry. Nothing this retry
 * acknowledges may rest on a write of its own: there was none.
 */
export type SubmitOutcome = Claim & { readonly unrecorded?: JournalUnavailableError };

export interface PipelineOptions {
  readonly journal: Journal;
  readonly devices: Iterable<DeviceBinding>;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly freshness: FreshnessPolicy;
  /** Controller skew is re-measured before a write when older than this (default 60 s). */
  readonly skewMaxAgeMs?: number;
  /**
   * Taking up an open command keeps trying to reach its device at least this long, even past
   * its deadline, before it ends DEVICE_UNREACHABLE (default 15 s: an OPC UA session may need
   * several seconds to come up after a restart). For the devices whose binding has no grace of
   * its own (DeviceBinding.unreachableGraceMs, from their PLC's configuration).
   */
  readonly unreachableGraceMs?: number;
  /**
   * Monotonic time (this clock) by which every earlier life of the daemon on this journal had
   * ended: when this process took the journal's writer lock (src/journal/writer-lock.ts), which
   * a live daemon holds. A write of an earlier life was sent before it. Default: when the
   * pipeline is made.
   */
  readonly earlierLivesEndedMono?: number;
  /**
   * The ids each configured device had before a rename (by its id): the journal records the
   * valve's commands under those too, and recovery looks up its last write there as well
   * (previous-write.ts, earlierLastWrite). Default: none.
   */
  readonly formerDeviceIds?: Readonly<Record<string, readonly string[]>>;
  /**
   * What the clocks may do to commands (SPEC §6). Default: no gateway clock source, no bound
   * on controller skew, and `reject` as the policy once either is configured.
   */
  readonly clockPolicy?: ClockPolicy;
  /**
   * How many commands a device may have waiting, not yet dispatched (its queue), before a new
   * one is refused at the door (DeviceQueueFullError; default DEFAULT_MAX_QUEUED_PER_DEVICE). A
   * stop is never refused: it supersedes every command queued before it, on the event loop and
   * in its claim's batch, before it is written, and the bound is what keeps that short.
   */
  readonly maxQueuedPerDevice?: number;
}

/**
 * A valve takes one command at a time, and a travel lasts seconds: a few hundred commands
 * waiting on one valve are minutes of travel already, no plant's use. The bound is what a stop
 * may have to supersede before its write (SPEC §2): 256 rejections, each a journal write, a log
 * line and an announcement, held the stop's write 0.15 s on a loaded test machine; twenty
 * thousand held it 4–10 s there, with every device's intake, readbacks and watchdog held
 * meanwhile.
 */
export const DEFAULT_MAX_QUEUED_PER_DEVICE = 256;

type MirrorListener = (device: string, readback: Readback) => void;

export type { DeviceBinding, DeviceView, OpenCommands };

/**
 * The command pipeline: where I1–I5 live. submit() journals a command (intakes acknowledge
 * once its barrier resolves), and one worker per device takes commands one at a time:
 * freshness → fresh read → state machine → journal `dispatched` → write → readback until
 * confirmed or timed out → journal the outcome. The lanes and their workers are here; the
 * other jobs are beside it: outcomes and their waiters (outcomes.ts), a stop's preemption
 * (preemption.ts), recovery and the sweep (sweep.ts), an operator's actions
 * (operator-actions.ts), the idle devices' reads (device-monitor.ts), and one command's
 * execution (execution.ts).
 */
export class CommandPipeline {
  private readonly journal: Journal;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly freshness: FreshnessPolicy;
  private readonly skewMaxAgeMs: number;
  private readonly clockPolicy: ClockPolicy;
  private readonly lanes = new Map<string, Lane>();
  private readonly mirrorListeners = new Set<MirrorListener>();
  private readonly abort = new AbortController();
  /** Settlements, their announcement after the barrier, and whoever waits for them. */
  private readonly outcomes: Outcomes;
  /** A stop's preemption of what its device has in flight or queued (SPEC §2). */
  private readonly preemption: Preemption;
  /** Recovery at start and the sweep of open commands without a worker. */
  private readonly sweeper: Sweep;
  private readonly operator: OperatorActions;
  private readonly execution: CommandExecution;
  /** Commands ended with their write in doubt, noted when a later readback shows their echo. */
  private readonly lateEcho: LateEcho;
  /**
   * When this process received each open command, on the monotonic clock: the time it has
   * waited since is measured from there (ExecutionHost.deadlineNow). A command timed by its
   * receipt (no issuedAt) has its wall receipt as its deadline's base, and a step of the
   * gateway's wall clock (chrony or ptp4l stepping it at boot, an operator) while it waits
   * would otherwise age it by the step (STALE_COMMAND a moment after it was received), or,
   * stepped back, leave its issuedAt in the future (CLOCK_SKEW, "issuedAt lies … in the
   * future", of a command with no issuedAt). A command with the issuer's issuedAt is judged on
   * the wall clock, but never as younger than the time it has waited here: stepped back while
   * it waits in its device's queue, the wall clock would otherwise let it be written after its
   * deadline (I3).
   */
  private readonly receivedMono = new Map<string, number>();
  private closed = false;
  /**
   * Why recovery could not read the journal (recover()), until a run of the sweep has read it:
   * every command is refused meanwhile (submit). Null when it has, or never failed.
   */
  private recoveryFailure: JournalUnavailableError | null = null;
  /** Cancels the save of this life's own write bounds alone (earlier-write-bounds.ts). */
  private readonly cancelBoundsSave: () => void;
  /** PipelineOptions.formerDeviceIds. */
  private readonly formerDeviceIds: Readonly<Record<string, readonly string[]>>;
  /** PipelineOptions.maxQueuedPerDevice. */
  private readonly maxQueuedPerDevice: number;

  constructor(options: PipelineOptions) {
    // The sleeps of lanes without a command in flight (the device monitor's, the sweep's)
    // listen on this one signal and remove their listener when done: a hundred at once is no
    // leak, and Node's warning past ten would only mislead whoever reads the log.
    setMaxListeners(0, this.abort.signal);
    this.journal = options.journal;
    this.clock = options.clock;
    this.logger = options.logger;
    this.freshness = options.freshness;
    this.skewMaxAgeMs = options.skewMaxAgeMs ?? 60_000;
    this.formerDeviceIds = options.formerDeviceIds ?? {};
    this.maxQueuedPerDevice = options.maxQueuedPerDevice ?? DEFAULT_MAX_QUEUED_PER_DEVICE;
    this.clockPolicy = options.clockPolicy ?? {
      onUnsynced: 'reject',
      maxControllerSkewMs: () => null,
      gateway: null,
    };
    const earlierLivesEnded = options.earlierLivesEndedMono ?? this.clock.elapsed();
    const bindings = [...options.devices];
    // Before anything of this life is dispatched: a later life must know its bounds.
    const bounds = takeUpWriteBounds({
      journal: this.journal,
      clock: this.clock,
      logger: this.logger,
      bindings,
      earlierLivesEndedMono: earlierLivesEnded,
    });
    this.cancelBoundsSave = bounds.cancel;
    // A renamed device's former ids wrote to the same valve: their bounds hold for its writes.
    const earlier = withFormerBounds(bounds.earlier, this.formerDeviceIds);
    for (const binding of bindings) {
      this.lanes.set(binding.id, {
        binding,
        unreachableGraceMs:
          binding.unreachableGraceMs ?? options.unreachableGraceMs ?? UNREACHABLE_GRACE_MS,
        earlierWriteUnknownSinceMono: earlierWriteUnknownSince(binding, earlierLivesEnded, earlier),
        earlierWriteLostSinceMono: earlierWriteLostSince(binding, earlierLivesEnded, earlier),
        earlierWriteSentMono: earlierWriteSent(binding, earlierLivesEnded, earlier),
        earlierLivesEndedMono: earlierLivesEnded,
        queue: [],
        running: null,
        inFlight: null,
        settledInFlight: null,
        mirror: null,
        imageSince: null,
        skew: null,
        unresolved: null,
        lastWrite: null,
        formerSeqs: null,
        withheld: new Map(),
        stopsBehind: [],
        ending: null,
        skewSamples: [],
        clockOff: null,
        oldImageCheck: null,
        statusReads: noReadFailures(),
        clockReads: noReadFailures(),
        writes: noWrites(),
        signal: this.abort.signal,
        preempt: null,
        commandAbort: null,
        interrupted: null,
        superseded: new Map(),
      });
    }
    this.outcomes = new Outcomes({
      journal: this.journal,
      clock: this.clock,
      lanes: this.lanes,
      signal: this.abort.signal,
      journaled: (record) => {
        this.lateEcho.journaled(record);
      },
    });
    this.lateEcho = new LateEcho({
      journal: this.journal,
      clock: this.clock,
      logger: this.logger,
      echoed: (device) => this.lanes.get(device)?.mirror?.seq ?? null,
      wrote: (record) => {
        const lane = this.lanes.get(record.device);
        const last = lane?.lastWrite ?? null;
        return (
          lane !== undefined &&
          last !== null &&
          last.scope === record.scope &&
          last.key === record.key &&
          last.seq === record.seq &&
          // Withheld when its dispatch could not be made durable, then taken up with a stand-in
          // for the write (take-up.ts), and no write of it handed to the driver since (a
          // redispatch that is sent writes it for real; one whose own barrier failed does not):
          // never sent.
          !withheldUnsent(lane, record)
        );
      },
    });
    this.outcomes.onSettled((record) => {
      this.receivedMono.delete(refId(record));
      // Settled on disk: its write is never sent now, and nothing asks about it again; a
      // rejection as superseded is no longer to be made again.
      const lane = this.lanes.get(record.device);
      lane?.withheld.delete(refId(record));
      lane?.superseded.delete(claimId(record));
      this.lateEcho.settled(record);
    });
    const startWorker = (lane: Lane): void => {
      this.startWorker(lane);
    };
    this.preemption = new Preemption({
      journal: this.journal,
      clock: this.clock,
      logger: this.logger,
      outcomes: this.outcomes,
      startWorker,
    });
    this.sweeper = new Sweep({
      journal: this.journal,
      clock: this.clock,
      logger: this.logger,
      lanes: this.lanes,
      closed: () => this.closed,
      startWorker,
      stopPreempts: (lane, stop, log) => {
        this.preemption.stopPreempts(lane, stop, log);
      },
      note: (record, detail) => {
        this.safeNote(record, detail);
      },
    });
    this.operator = new OperatorActions({
      journal: this.journal,
      clock: this.clock,
      logger: this.logger,
      lanes: this.lanes,
      outcomes: this.outcomes,
      startWorker,
      closed: () => this.closed,
    });
    this.execution = new CommandExecution({
      journal: this.journal,
      clock: this.clock,
      freshness: this.freshness,
      clockPolicy: this.clockPolicy,
      skewMaxAgeMs: this.skewMaxAgeMs,
      signal: this.abort.signal,
      settle: (log, record, from, outcome) => this.outcomes.settle(log, record, from, outcome),
      note: (record, detail) => {
        this.safeNote(record, detail);
      },
      mirror: (lane, readback) => {
        this.updateMirror(lane, readback);
      },
      deadlineNow: (record) => {
        const received = this.receivedMono.get(refId(record));
        if (received === undefined) return this.clock.now();
        const sinceReceipt = record.acceptedAt + (this.clock.elapsed() - received);
        return record.issuedAtSource === 'gateway'
          ? sinceReceipt
          : Math.max(this.clock.now(), sinceReceipt);
      },
      receivedInThisLife: (record) => this.receivedMono.has(refId(record)),
      dispatched: (record) => {
        this.outcomes.dispatched(record);
        this.lateEcho.dispatched(record);
      },
    });
  }

  onSettled(listener: SettledListener): () => void {
    return this.outcomes.onSettled(listener);
  }

  onMirror(listener: MirrorListener): () => void {
    this.mirrorListeners.add(listener);
    return () => this.mirrorListeners.delete(listener);
  }

  hasDevice(id: string): boolean {
    return this.lanes.has(id);
  }

  devices(): DeviceView[] {
    const nowMono = this.clock.elapsed();
    return [...this.lanes.values()].map((lane) => deviceView(lane, this.execution.reads, nowMono));
  }

  device(id: string): DeviceView | undefined {
    const lane = this.lanes.get(id);
    return lane === undefined
      ? undefined
      : deviceView(lane, this.execution.reads, this.clock.elapsed());
  }

  /**
   * Journals a command and queues it for its device. Synchronous: when it returns, the claim
   * is journaled, and durable once durable() (or durableFor) resolves — what an intake awaits
   * before it acknowledges (I5, group commit). Throws JournalUnavailableError when the journal
   * cannot be written, or while recovery could not read it (recoverOpen): fail closed;
   * UnknownDeviceError, InvalidCommandError; DeviceQueueFullError when the device has
   * maxQueuedPerDevice commands waiting (never for a stop, nor for a key already journaled).
   */
  submit(submission: Submission): SubmitOutcome {
    if (this.closed) throw new ShuttingDownError();
    const key = parseIdempotencyKey(submission.key);
    const request = submission.request;
    const lane = this.lanes.get(request.device);
    const now = this.clock.now();
    if (lane === undefined || !lane.binding.profile.actions.includes(request.action)) {
      // A retry of a key accepted before its device left the configuration (or its profile
      // lost the action) gets that command's outcome, as every replay does (SPEC §2: a
      // terminal outcome is final): refused, its client would take it for never accepted.
      const retry: Retry = {
        scope: submission.identity.scope,
        key,
        fingerprint: fingerprint(request),
        intake: submission.intake,
        acceptedAt: now,
      };
      const earlier = this.orJournaled(retry, () => this.journal.retry(retry));
      if (earlier !== null) return earlier;
      if (lane === undefined) throw new UnknownDeviceError(request.device);
      throw new InvalidCommandError([
        `action: device "${request.device}" (${lane.binding.profile.profile}) has no action "${request.action}"`,
      ]);
    }
    const profile = lane.binding.profile;
    const nowMono = this.clock.elapsed();
    const receivedAt = now - Math.max(0, submission.heldMs ?? 0);
    const issuedAt = request.issuedAt === null ? receivedAt : Date.parse(request.issuedAt);
    const ttlMs = request.ttlMs ?? profile.timing.defaultTtlMs;
    const devices = submission.identity.devices;
    const forbidden = devices !== 'all' && !devices.has(request.device);
    const command: NewCommand = {
      scope: submission.identity.scope,
      key,
      fingerprint: fingerprint(request),
      device: request.device,
      action: request.action,
      position: request.position,
      issuedAt,
      issuedAtSource: request.issuedAt === null ? 'gateway' : 'issuer',
      ttlMs,
      deadline: issuedAt + ttlMs,
      intake: submission.intake,
      acceptedAt: now,
    };
    // Received now: a command timed by its receipt is young by construction.
    const gateway = gatewayVerdict(this.clockPolicy, command, true);
    const fresh = checkFreshness(command, now, this.freshness);
    // Refused at the door — the identity may not command the device, the gateway clock cannot
    // judge a timestamped command (SPEC §6), the command is stale or issued in the future
    // (I3) — it is rejected in the claim's own commit: never `accepted` on disk, so nothing
    // (recovery after a crash included) can take it up, and a stop refused so is known on disk
    // as one that preempted nothing (settled when accepted, never dispatched: Journal.stopsAfter
    // passes over it). A duplicate of a journaled key is answered as that command, whatever
    // these say now.
    const rejection: Rejection | undefined = forbidden
      ? {
          code: 'FORBIDDEN_DEVICE',
          detail: `identity "${submission.identity.scope}" may not command device "${request.device}"; nothing was written`,
        }
      : gateway.kind === 'reject'
        ? { code: 'CLOCK_SKEW', detail: gateway.detail }
        : fresh !== 'FRESH'
          ? { code: fresh, detail: freshnessDetail(fresh, command, now, this.freshness) }
          : undefined;
    // A command that would queue on a device whose queue is full is refused before it is
    // journaled: nothing of it is kept, and a later submission of its key is a new command. A
    // stop is never refused (SPEC §2), and a retry of a key already journaled is answered as
    // that command, as the claim would. Commands taken up from the journal (recovery, the
    // sweep) queue without this door.
    if (
      rejection === undefined &&
      request.action !== 'stop' &&
      lane.queue.length >= this.maxQueuedPerDevice
    ) {
      const earlier = this.orJournaled(command, () => this.journal.retry(command));
      if (earlier !== null) return earlier;
      const retryAfterS = Math.max(1, Math.ceil(profile.timing.confirmTimeoutMs / 1000));
      throw new DeviceQueueFullError(request.device, lane.queue.length, retryAfterS);
    }
    const claim = this.orJournaled(command, () => {
      // As when the journal cannot be written: a retry of a key it holds is answered from it.
      if (this.recoveryFailure !== null) throw this.recoveryFailure;
      return this.journal.claim(command, rejection);
    });
    if (claim.kind !== 'new') return claim;

    const record = claim.record;
    this.outcomes.accepted(record, nowMono);
    const log = commandLogger(this.logger, record);
    if (rejection !== undefined) {
      log.warn({ intake: submission.intake, code: record.code }, 'command rejected');
      this.outcomes.announce(record, log);
      return claim;
    }
    log.info({ intake: submission.intake, action: record.action }, 'command accepted');
    if (gateway.kind === 'warn') log.warn({ gatewayClock: gateway.state }, gateway.detail);
    if (record.action === 'stop') {
      try {
        this.preemption.stopPreempts(lane, record, log);
      } catch (error) {
        // The stop is journaled; it still runs (the sweep would find it otherwise).
        log.error({ err: error }, 'stop could not preempt the command in flight');
      }
    }
    this.receivedMono.set(refId(record), nowMono);
    this.enqueue(lane, record);
    return claim;
  }

  /**
   * The journal's claim (or retry) of a submission, made by `write`; when the journal cannot be
   * written, a retry of a key it holds is answered from the key's command as read (see
   * SubmitOutcome.unrecorded): a duplicate or a reuse, as the claim would have found it. Reads
   * go on under WAL while another program holds the write lock (a sqlite3 shell, a backup), on
   * a full disk and on a read-only filesystem. Refused as unavailable, a retry of a command
   * accepted, perhaps written or confirmed, read "nothing was accepted", and its client could
   * send it again under a new key: a second actuation. A key not journaled, or not readable
   * either, is refused with the write's error.
   */
  private orJournaled<T extends Claim | null>(retry: Retry, write: () => T): T | SubmitOutcome {
    try {
      return write();
    } catch (error) {
      if (!(error instanceof JournalUnavailableError)) throw error;
      let record: CommandRecord | undefined;
      try {
        record = this.journal.get(retry);
      } catch {
        throw error;
      }
      if (record === undefined) throw error;
      commandLogger(this.logger, record).warn(
        { err: error, intake: retry.intake, state: record.state },
        'journal unavailable: a retry of a journaled key is answered from the journal as read, and its history does not record it',
      );
      return {
        kind: record.fingerprint === retry.fingerprint ? 'duplicate' : 'reused',
        record,
        unrecorded: error,
      };
    }
  }

  /** The command as journaled now. */
  get(ref: CommandRef): CommandRecord | undefined {
    return this.journal.get(ref);
  }

  /**
   * The claim's command as journaled now: undefined when its key names no command (the claim
   * was lost with its batch) or another one, claimed since (readClaim).
   */
  claimed(claim: ClaimRef): CommandRecord | undefined {
    return readClaim(this.journal, claim);
  }

  /** Every scope's command with this key (the operator names keys, not scopes). */
  findByKey(key: string): CommandRecord[] {
    return this.journal.findByKey(key);
  }

  /**
   * An operator ends an open command `failed` `RESOLVED_BY_OPERATOR` (operator-actions.ts); a
   * stop that preempted it says so when its write may still land (preemption.ts).
   */
  resolve(ref: CommandRef, by: string, reason: string): CommandRecord {
    const settled = this.operator.resolve(ref, by, reason);
    const lane = this.lanes.get(settled.device);
    if (lane !== undefined) this.preemption.resolvedUnderStop(lane, settled);
    return settled;
  }

  /**
   * An operator has an open command judged again now (operator-actions.ts). Refused while
   * recovery has not read the journal (recover()): taken up then, a command ran as submit()
   * would have it.
   */
  reverify(
    ref: CommandRef,
    by: string,
    waitMs: number,
  ): Promise<{ readonly record: CommandRecord; readonly detail: string }> {
    if (this.recoveryFailure !== null) return Promise.reject(this.recoveryFailure);
    return this.operator.reverify(ref, by, waitMs);
  }

  /** The command's journaled history: every transition and every duplicate hit. */
  history(ref: CommandRef): JournalEvent[] {
    return this.journal.history(ref);
  }

  /** Throws JournalUnavailableError when the journal cannot take a durable write now. */
  checkJournal(): void {
    this.journal.checkWritable();
  }

  /** Reads every idle device every `intervalMs`: the mirror stays current (device-monitor.ts). */
  startMonitor(intervalMs: number): void {
    startMonitor(
      {
        lanes: [...this.lanes.values()],
        reads: this.execution.reads,
        clock: this.clock,
        logger: this.logger,
        signal: this.abort.signal,
      },
      intervalMs,
    );
  }

  /**
   * Resolves with the claim's command once it is terminal, or as it stands after `timeoutMs`;
   * undefined when the key names no command of this claim (readClaim). Without a fingerprint
   * (an operator names a key), whatever command the key names.
   */
  waitForSettled(claim: CommandOf, timeoutMs: number): Promise<CommandRecord | undefined> {
    return this.outcomes.waitForSettled(claim, timeoutMs);
  }

  /**
   * Resolves with how many of `refs` are still open once every one of them is terminal on
   * disk, after `timeoutMs`, or when the pipeline stops (outcomes.ts).
   */
  waitForAllSettled(refs: readonly CommandRef[], timeoutMs: number): Promise<number> {
    return this.outcomes.waitForAllSettled(refs, timeoutMs);
  }

  /**
   * Resolves once every journal write so far is on disk: with group commit, the intakes await
   * it before they acknowledge, answer or replay (I5), sharing one fsync among the commands
   * that arrived together. Rejects with JournalUnavailableError when the journal cannot sync.
   */
  durable(): Promise<void> {
    return this.outcomes.durable();
  }

  /**
   * For a replay of a settled command: resolves at once when its settlement is on disk
   * already (the duplicate's own history event then rides on a later barrier: an audit line,
   * not an acknowledgement), otherwise as durable().
   */
  durableReplay(record: CommandRecord): Promise<void> {
    return this.outcomes.durableFor(record);
  }

  /**
   * Resolves once what `record` reports is on disk: at once for a settlement already announced
   * (announcements follow their barrier) or synced, otherwise as durable(). An answer with a
   * settled command then waits for no barrier of commands that came after it.
   */
  durableFor(record: CommandRecord): Promise<void> {
    return this.outcomes.durableFor(record);
  }

  /** Whether a settled command's settlement is on disk already (see durableReplay). */
  settledDurably(record: CommandRecord): boolean {
    return this.outcomes.settledDurably(record);
  }

  /** True while a journal write is not yet on disk (group commit): see durable(). */
  get syncPending(): boolean {
    return this.journal.syncPending;
  }

  /**
   * Recovery at start (I5): every non-terminal command is taken up. Accepted commands were
   * never written (dispatch is journaled before the write) and take their normal course;
   * dispatched ones are settled by reading the controller — confirmed, re-dispatched once when
   * provably not applied, or ended with what the readbacks prove — never by a blind re-write.
   * Returns how many open commands the journal held (0 when it could not be read: see
   * recoverOpen).
   */
  recover(): number {
    for (const device of this.lanes.keys()) {
      try {
        this.lateEcho.takeUp([device]);
      } catch (error) {
        // Only a note is missed (late-echo.ts): what the device's commands are decided on is
        // read by recoverOpen, from the same journal, and fails closed.
        this.logger.error(
          { err: error, device },
          "the device's last dispatch cannot be read from the journal: a late echo of its write is not watched for",
        );
      }
    }
    return this.recoverOpen();
  }

  /**
   * Recovery's reads: each device's last write an earlier life ended with its fate open, which
   * the controller may still take (the next command waits for it as it would have in that
   * life), then every open command (Sweep.run). Fails closed: should a read fail, nothing is
   * taken up and every command is refused as when the journal cannot be written (submit:
   * JournalUnavailableError, HTTPS 503, no MQTT PUBACK) until a run of the sweep has made them
   * all. Taken meanwhile, a new command ran ahead of an earlier life's dispatched command
   * whose write could still land (a close confirmed a no-op at CLOSED, then the open landed:
   * I2), and of the stops that supersede the commands accepted before them (SPEC §2).
   */
  private recoverOpen(): number {
    try {
      for (const lane of this.lanes.values()) {
        const id = lane.binding.id;
        const former = Object.hasOwn(this.formerDeviceIds, id) ? this.formerDeviceIds[id] : [];
        lane.lastWrite ??= earlierLastWrite(this.journal, lane, former);
        if (former !== undefined && former.length > 0) lane.formerSeqs = keptSeqs(lane.lastWrite);
      }
      const open = this.sweeper.run();
      if (this.recoveryFailure !== null) {
        this.logger.warn({ open }, 'recovery read the journal: commands are taken again');
      }
      this.recoveryFailure = null;
      return open;
    } catch (error) {
      if (this.recoveryFailure === null) {
        // Kept until recovery succeeds: readiness says it in the same words all along.
        this.recoveryFailure = new JournalUnavailableError(
          `journal unavailable (recovery): recovery could not read the journal at start (${error instanceof Error ? error.message : String(error)}); every command is refused until it has, tried again at each run of the sweep`,
          { cause: error },
        );
        this.logger.error({ err: error }, this.recoveryFailure.message);
      }
      return 0;
    }
  }

  /**
   * Why recovery could not read the journal (recoverOpen), while a run of the sweep has not
   * read it since: every command is refused meanwhile. Null when recovery read it.
   */
  recoveryFailed(): JournalUnavailableError | null {
    return this.recoveryFailure;
  }

  /**
   * Takes up the open commands that have no live worker, a bounded part of the journal's at a
   * time (sweep.ts, Sweep.step): the sweep's periodic run. While recovery could not read the
   * journal, recovery's reads again (recoverOpen). Returns how many open commands it read.
   */
  sweep(): number {
    return this.recoveryFailure === null ? this.sweeper.step() : this.recoverOpen();
  }

  /** Runs the sweep every `intervalMs` until the pipeline stops. */
  startSweep(intervalMs: number): void {
    void (async () => {
      for (;;) {
        await this.clock.sleep(intervalMs, this.abort.signal);
        if (this.aborted() || this.closed) return;
        this.sweep();
      }
    })();
  }

  /** Open commands by state and age, and the stuck ones (SPEC §2), for metrics and readiness. */
  openCommands(): OpenCommands {
    return this.sweeper.openCommands();
  }

  /**
   * Each device's confirm timeout and unreachable grace, for the stuck rule of the readers
   * beside the pipeline (the status page): the lengths its workers use.
   */
  deviceTimings(): Map<string, DeviceTiming> {
    return deviceTimings(this.lanes);
  }

  /**
   * Graceful stop: no new commands; in-flight commands get `boundMs` to settle, then their
   * workers are abandoned and the commands stay journaled for recovery. An accepted stop is a
   * command in flight (SPEC §2: it is dispatched at once), also while it waits in its device's
   * queue for the worker to come to it — the worker of the command it preempted, which waits
   * for the stop's claim to be on disk and a turn, or one making the end of the command before
   * it durable: it keeps its place and runs within the bound (stopsToRun), and the command it
   * preempted is judged after it (INTERRUPTED when the controller took the stop). A stop left
   * to the sweep (lane.unresolved), which runs no more, gets a worker. Emptied with the queue,
   * a stop acknowledged a moment before SIGTERM was never written, and the travel it had
   * preempted went on to its end. Other queued commands stay journaled for the next start.
   */
  async stop(boundMs: number): Promise<void> {
    this.closed = true;
    this.cancelBoundsSave();
    for (const lane of this.lanes.values()) {
      const stops = this.stopsToRun(lane);
      lane.queue.splice(0, lane.queue.length, ...stops);
      // The device's command left open goes first, as the sweep would take it: the queue never
      // moves past it (I1). With no stop to run, it stays journaled for recovery.
      if (stops.length === 0 && !this.isStop(lane.unresolved)) lane.unresolved = null;
      // Waiting for the sweep, which runs no more, the device has no worker.
      else this.startWorker(lane);
    }
    const running = (): Promise<void>[] =>
      [...this.lanes.values()].flatMap((lane) => (lane.running === null ? [] : [lane.running]));
    const timeout = new AbortController();
    await Promise.race([
      Promise.allSettled(running()).then(() => {
        timeout.abort();
      }),
      this.clock.sleep(boundMs, timeout.signal),
    ]);
    this.abort.abort();
    // Each lane's command in flight has its own signal (drain): aborted with the pipeline's.
    for (const lane of this.lanes.values()) lane.preempt?.abort(this.abort.signal.reason);
    await Promise.allSettled(running());
    // Results settled during the drain are announced once on disk (group commit): wait for
    // that barrier, so that the intakes publish them before they close.
    await this.durable().catch(() => undefined);
  }

  /**
   * The stops at the head of the lane's queue, in order: a stop takes every command queued
   * before it off the queue (preemption.ts, stopPreempts), so the stops still to run stand
   * there — the one that preempted the command in flight (lane.interrupted), those queued
   * behind it (lane.stopsBehind), one queued while the worker finished the command before it.
   * A command a stop superseded whose rejection is not on disk (lane.superseded) is passed over:
   * it stays `accepted` in the journal, and the next start rejects it. The first other command
   * ends them: the commands from there on, stops included, stay journaled for recovery, in
   * their order.
   */
  private stopsToRun(lane: Lane): ClaimRef[] {
    const stops: ClaimRef[] = [];
    for (const ref of lane.queue) {
      if (this.isStop(ref)) stops.push(ref);
      else if (!lane.superseded.has(claimId(ref))) break;
    }
    return stops;
  }

  /**
   * Whether `ref` is a stop claimed; false when the journal cannot say now (it stays
   * journaled), or holds no command of that claim.
   */
  private isStop(ref: ClaimRef | null): boolean {
    if (ref === null) return false;
    try {
      return readClaim(this.journal, ref)?.action === 'stop';
    } catch {
      return false;
    }
  }

  /** A method, not a property read: the flag changes across awaits. */
  private aborted(): boolean {
    return this.abort.signal.aborted;
  }

  private enqueue(lane: Lane, ref: ClaimRef): void {
    if (this.closed) return;
    lane.queue.push(claimRef(ref));
    // A device waiting for an unresolved command is restarted by the sweep, at its pace.
    if (lane.unresolved === null) this.startWorker(lane);
  }

  private startWorker(lane: Lane): void {
    if (lane.running !== null) return;
    lane.running = this.drain(lane).finally(() => {
      lane.running = null;
      // A command queued while the worker was finishing must not wait for the next submit.
      if (lane.unresolved === null && lane.queue.length > 0 && !this.closed) {
        this.startWorker(lane);
      }
    });
  }

  private async drain(lane: Lane): Promise<void> {
    for (let taken = 0; ; taken++) {
      // Between two commands the event loop runs: a backlog (recovery's thousands of expired
      // commands, settled without a controller read) must not hold up the intakes' sockets.
      if (taken > 0) await new Promise<void>((resolve) => setImmediate(resolve));
      if (this.aborted()) return;
      const ref = lane.unresolved ?? lane.queue.shift();
      if (ref === undefined) return;
      lane.unresolved = null;
      let record: CommandRecord | undefined;
      try {
        // By its claim: a claim lost with its batch names no command of its own, also once its
        // key is claimed again for another command (on another device perhaps), which its own
        // claim queued on its own device. Read by key, that command ran here, on this device's
        // driver (an audit of 2026-12-07: v1 closed by a close claimed for v2).
        record = readClaim(this.journal, ref);
      } catch (error) {
        this.leftOpen(lane, ref, this.logger.child({ key: ref.key }), error);
        return;
      }
      if (record === undefined || isTerminal(record.state)) {
        if (record === undefined) this.claimLost(ref, this.logger.child({ key: ref.key }), null);
        lane.superseded.delete(claimId(ref));
        this.preemption.afterStop(lane, ref);
        continue;
      }
      const log = commandLogger(this.logger, record);
      const supersededBy = lane.superseded.get(claimId(ref));
      if (supersededBy !== undefined) {
        lane.superseded.delete(claimId(ref));
        this.preemption.supersede(lane, ref, supersededBy, log);
        continue;
      }
      lane.inFlight = ref;
      lane.settledInFlight = null;
      // The command's signal: aborted by a preempting stop or an operator, and by the
      // pipeline's stop, which aborts every lane's (stop()): no listener on the pipeline's
      // signal per command (an EventTarget walks its listeners on every add and remove, and
      // a hundred valves' commands would each walk a hundred), and no AbortSignal.any (a
      // signal, a weak reference and their garbage per command). The lane's next command
      // takes the same controller while nothing aborted it (what listens to it — the pauses
      // between readbacks — stops listening when done): only an abort uses one up.
      const preempt =
        lane.commandAbort === null || lane.commandAbort.signal.aborted
          ? new AbortController()
          : lane.commandAbort;
      lane.commandAbort = preempt;
      lane.preempt = preempt;
      lane.signal = preempt.signal;
      let failure: unknown = null;
      try {
        if (record.state === 'accepted') await this.execution.handleAccepted(lane, record, log);
        else await this.execution.takeUpDispatched(lane, record, log);
      } catch (error) {
        failure = error;
      } finally {
        lane.inFlight = null;
        lane.preempt = null;
        lane.signal = this.abort.signal;
      }
      if (this.aborted()) return;
      // Whatever happened, the device moves on only once the command is terminal — or a stop
      // preempted it (SPEC §2) — on disk: a settlement that a failed group commit lost leaves
      // the command open, and the device stays on it. Until then a stop accepted meanwhile
      // preempts it, and the sweep leaves it alone (lane.ending). Taken by neither, a command
      // left open — its write withheld, or the journal failing under its readbacks — had the
      // stop queue behind its take-up, which reads until its deadline while the valve may
      // travel, and the sweep took it up beside the worker still deciding.
      lane.ending = ref;
      let after: CommandRecord | undefined;
      try {
        await this.durable();
        // A settlement announced is on disk (see Lane.settledInFlight); otherwise read back. By
        // its claim: the key may name another command now, claimed after this one's claim was
        // lost with its batch (a QoS 1 redelivery of a reuse); none of this one's writes went to
        // that command's row (CommandOf), which its own claim queued and is taken up in turn.
        const settled = settledInFlight(lane);
        after =
          settled !== null && this.outcomes.wasAnnounced(settled)
            ? settled
            : readClaim(this.journal, ref);
      } catch (error) {
        lane.ending = null;
        failure ??= error;
        // The claim itself was in the batch lost at its COMMIT (with the command's settlement:
        // a no-op decided before the batch was committed, an fdatasync running meanwhile): it
        // never was, and there is nothing to take up. The device moves on now and its waiters
        // are woken (claimLost below), rather than at the sweep's next run (up to a second in
        // the daemon) with every command of the device behind it.
        if (!this.claimGone(ref)) {
          // Preempted by a stop, and whether it was written cannot be read now: taken up again,
          // it must not run as a command of its own ahead of the stop (written after it).
          // Marked, it is rejected SUPERSEDED if it is still `accepted`, judged after the stop
          // if not.
          const stop = lane.interrupted;
          if (stop !== null && claimId(stop.target) === claimId(ref)) {
            lane.superseded.set(claimId(ref), stop.stop);
          }
          this.leftOpen(lane, ref, log, failure);
          return;
        }
      }
      lane.ending = null;
      // Preempted by a stop while it ran (its handling aborted) or while its end was being made
      // durable: the interruption names it.
      if (lane.interrupted !== null && claimId(lane.interrupted.target) === claimId(ref)) {
        if (after?.state === 'accepted') {
          this.preemption.supersede(lane, ref, lane.interrupted.stop, log);
        }
        // A written command is judged again once the stop is terminal (afterStop).
        continue;
      }
      if (after !== undefined && !isTerminal(after.state)) {
        this.leftOpen(lane, ref, log, failure);
        return;
      }
      if (after === undefined) this.claimLost(ref, log, failure);
      this.preemption.afterStop(lane, ref);
    }
  }

  /**
   * Whether the command's claim is not in the journal (read as committed: a batch lost at its
   * COMMIT was rolled back), its key naming no command or another one claimed since. False
   * when it is there, or when the journal cannot be read: the sweep takes it up.
   */
  private claimGone(ref: ClaimRef): boolean {
    try {
      return readClaim(this.journal, ref) === undefined;
    } catch {
      return false;
    }
  }

  /**
   * The command's claim is not in the journal: the batch that held it was lost at its COMMIT (a
   * full disk), after its device had taken it up, or before. Its key may name another command
   * now, claimed since: that one is not this one (readClaim), and its own claim queued it on its
   * device. Nothing was written for this one (its dispatch finds no row of it), no intake
   * acknowledged it (the claim's barrier fails, and an HTTPS request that waited for its outcome
   * answers 503 on finding it gone), and it will never settle: its waiters — those of this claim,
   * not those of the key's command now — are woken now rather than at the end of their wait.
   */
  private claimLost(ref: ClaimRef, log: Logger, failure: unknown): void {
    log.warn(
      { err: failure ?? undefined },
      'the claim was lost with its batch (its commit failed): the command was never accepted, and nothing was written for it (its key may name another command claimed since)',
    );
    this.outcomes.lost(ref);
  }

  /**
   * A command is still open after its worker finished: the journal failed under it (or a bug
   * surfaced). Nothing is written without a journal entry, so it stays as journaled; it stays
   * the device's command (the queue does not move past it), and the sweep takes it up again —
   * as `accepted` it takes its normal course, as `dispatched` it is settled by reading the
   * controller, never by a blind re-write.
   */
  private leftOpen(lane: Lane, ref: ClaimRef, log: Logger, error: unknown): void {
    lane.unresolved = ref;
    if (error === null || error instanceof JournalUnavailableError) {
      log.warn(
        { err: error ?? undefined },
        'command left open (journal unavailable); the device waits until it is taken up again',
      );
    } else {
      log.error(
        { err: error },
        'command handling failed; the device waits until it is taken up again',
      );
    }
  }

  private updateMirror(lane: Lane, readback: TimedReadback): void {
    this.lateEcho.readback(lane.binding.id, readback);
    const previous = lane.mirror;
    lane.mirror = readback;
    if (readback.sourceIsScan !== true || readback.sourceTime === null) lane.imageSince = null;
    else if (lane.imageSince?.sourceTime !== readback.sourceTime) {
      lane.imageSince = { sourceTime: readback.sourceTime, mono: readback.receivedMono };
    }
    // A stop queued behind a stop in flight takes it over once this shows it did not take effect.
    this.preemption.stopBehindRejudged(lane);
    const changed =
      previous === null ||
      previous.state !== readback.state ||
      previous.position !== readback.position ||
      previous.faultCode !== readback.faultCode ||
      previous.seq !== readback.seq;
    if (!changed) return;
    for (const listener of this.mirrorListeners) {
      try {
        listener(lane.binding.id, readback);
      } catch (error) {
        this.logger.error({ err: error, device: lane.binding.id }, 'mirror listener failed');
      }
    }
  }

  private safeNote(record: CommandRef & { readonly device: string }, detail: string): void {
    try {
      this.journal.note(record, this.clock.now(), detail, RECOVERY);
    } catch (error) {
      this.logger.error(
        { err: error, key: record.key, device: record.device },
        'note not journaled',
      );
    }
  }
}

/** A function, not a property read: set by the settlement across the worker's awaits. */
function settledInFlight(lane: Lane): CommandRecord | null {
  return lane.settledInFlight;
}
