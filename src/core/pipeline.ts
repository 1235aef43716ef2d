import { setMaxListeners } from 'node:events';
import {
  checkFreshness,
  fingerprint,
  isTerminal,
  parseIdempotencyKey,
  type CommandRequest,
  type FreshnessPolicy,
  type OpenState,
} from './command.js';
import type { Clock } from './clock.js';
import type { DeviceDriver, DeviceHealth, Readback } from './driver.js';
import {
  AlreadySettledError,
  InvalidCommandError,
  UnknownCommandError,
  JournalConflictError,
  JournalUnavailableError,
  ShuttingDownError,
  UnknownDeviceError,
} from './errors.js';
import { CommandExecution } from './execution.js';
import {
  ADMIN,
  PIPELINE,
  RECOVERY,
  freshnessDetail,
  type ClockPolicy,
  type Lane,
  type Outcome,
} from './lane.js';
import { gatewayVerdict } from './clock-policy.js';
import { summarizeOpen, type OpenCommands } from './open-commands.js';
import type {
  Claim,
  CommandRecord,
  CommandRef,
  Journal,
  JournalEvent,
  OpenRef,
} from './journal.js';
import type { Logger } from './logger.js';
import type { DeviceProfile } from './profile.js';
import { noReadFailures, type ReadFailure } from './read-failures.js';
import type { SkewEstimate, TimedReadback } from './skew.js';

/** One commandable device: its profile and the driver that reaches it. */
export interface DeviceBinding {
  readonly id: string;
  readonly profile: DeviceProfile;
  readonly driver: DeviceDriver;
}

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
}

export type SubmitOutcome = Claim;

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
   * several seconds to come up after a restart).
   */
  readonly unreachableGraceMs?: number;
  /**
   * What the clocks may do to commands (SPEC §6). Default: no gateway clock source, no bound
   * on controller skew, and `reject` as the policy once either is configured.
   */
  readonly clockPolicy?: ClockPolicy;
}

/** What the rest of the daemon may know about a device, as the pipeline last saw it. */
export interface DeviceView {
  readonly id: string;
  readonly profile: string;
  readonly mirror: Readback | null;
  readonly skew: SkewEstimate | null;
  /** The driver's connection: shared by every device of a Modbus PLC. */
  readonly health: DeviceHealth;
  /**
   * This device's own reads failing in a row (null: the last one succeeded). A connection
   * that is up says nothing about them: a register map that points at registers the PLC
   * does not have fails every read on a healthy connection.
   */
  readonly readError: ReadFailure | null;
  /** Its controller clock reads failing in a row (null: the last one succeeded). */
  readonly clockReadError: ReadFailure | null;
  /** Failed reads since the daemon started: status and controller clock. */
  readonly readErrors: { readonly status: number; readonly clock: number };
  readonly queued: number;
  readonly inFlight: string | null;
  /** A command left open and waiting to be taken up again: the device waits for it. */
  readonly unresolved: string | null;
  /** The controller clock's drift (ppm), when measurements span long enough. */
  readonly driftPpm: number | null;
  /** Set while the controller clock is beyond its allowed skew. */
  readonly clockOff: {
    readonly since: number;
    readonly offsetMs: number;
    readonly maxMs: number;
  } | null;
}

type SettledListener = (record: CommandRecord) => void;
type MirrorListener = (device: string, readback: Readback) => void;

export type { OpenCommands };

/**
 * The command pipeline: where I1–I5 live. submit() journals a command (the claim is durable
 * when it returns, so intakes may acknowledge), and one worker per device takes commands one
 * at a time: freshness → fresh read → state machine → journal `dispatched` → write → readback
 * until confirmed or timed out → journal the outcome.
 */
export class CommandPipeline {
  private readonly journal: Journal;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly freshness: FreshnessPolicy;
  private readonly skewMaxAgeMs: number;
  private readonly clockPolicy: ClockPolicy;
  private readonly lanes = new Map<string, Lane>();
  private readonly waiters = new Map<string, Set<(settled: CommandRecord) => void>>();
  /** Settled records announced after their barrier: on disk, whatever was written since. */
  private readonly announced = new WeakSet<CommandRecord>();
  private readonly settledListeners = new Set<SettledListener>();
  private readonly mirrorListeners = new Set<MirrorListener>();
  private readonly abort = new AbortController();
  private readonly execution: CommandExecution;
  /** Open commands already reported as beyond reach (device not configured): logged once. */
  private readonly orphansReported = new Set<string>();
  private closed = false;

  constructor(options: PipelineOptions) {
    // Every lane's sleeps and reads, and every HTTPS request waiting for a result, listen on
    // this one signal and remove their listener when done: a hundred at once is no leak, and
    // Node's warning past ten would only mislead whoever reads the log.
    setMaxListeners(0, this.abort.signal);
    this.journal = options.journal;
    this.clock = options.clock;
    this.logger = options.logger;
    this.freshness = options.freshness;
    this.skewMaxAgeMs = options.skewMaxAgeMs ?? 60_000;
    this.clockPolicy = options.clockPolicy ?? {
      onUnsynced: 'reject',
      maxControllerSkewMs: () => null,
      gateway: null,
    };
    for (const binding of options.devices) {
      this.lanes.set(binding.id, {
        binding,
        queue: [],
        running: null,
        inFlight: null,
        settledInFlight: null,
        mirror: null,
        skew: null,
        unresolved: null,
        lastWrite: null,
        skewSamples: [],
        clockOff: null,
        oldImageCheckMono: null,
        statusReads: noReadFailures(),
        clockReads: noReadFailures(),
        signal: this.abort.signal,
        preempt: null,
        interrupted: null,
        superseded: new Set(),
      });
    }
    this.execution = new CommandExecution({
      journal: this.journal,
      clock: this.clock,
      freshness: this.freshness,
      clockPolicy: this.clockPolicy,
      skewMaxAgeMs: this.skewMaxAgeMs,
      unreachableGraceMs: options.unreachableGraceMs ?? 15_000,
      signal: this.abort.signal,
      settle: (log, record, from, outcome) => this.settle(log, record, from, outcome),
      note: (record, detail) => {
        this.safeNote(record, detail);
      },
      mirror: (lane, readback) => {
        this.updateMirror(lane, readback);
      },
    });
  }

  onSettled(listener: SettledListener): () => void {
    this.settledListeners.add(listener);
    return () => this.settledListeners.delete(listener);
  }

  onMirror(listener: MirrorListener): () => void {
    this.mirrorListeners.add(listener);
    return () => this.mirrorListeners.delete(listener);
  }

  hasDevice(id: string): boolean {
    return this.lanes.has(id);
  }

  devices(): DeviceView[] {
    return [...this.lanes.values()].map((lane) => ({
      id: lane.binding.id,
      profile: lane.binding.profile.profile,
      mirror: lane.mirror,
      skew: lane.skew,
      health: lane.binding.driver.health(),
      readError: lane.statusReads.current,
      clockReadError: lane.clockReads.current,
      readErrors: { status: lane.statusReads.total, clock: lane.clockReads.total },
      queued: lane.queue.length,
      inFlight: lane.inFlight?.key ?? null,
      unresolved: lane.unresolved?.key ?? null,
      driftPpm: this.execution.reads.drift(lane),
      clockOff: lane.clockOff,
    }));
  }

  /**
   * Journals a command and queues it for its device. Synchronous: when it returns, the claim
   * is durable (I5) and the intake may acknowledge. Throws JournalUnavailableError when the
   * journal cannot be written (fail closed), UnknownDeviceError, InvalidCommandError.
   */
  submit(submission: Submission): SubmitOutcome {
    if (this.closed) throw new ShuttingDownError();
    const key = parseIdempotencyKey(submission.key);
    const request = submission.request;
    const lane = this.lanes.get(request.device);
    if (lane === undefined) throw new UnknownDeviceError(request.device);
    const profile = lane.binding.profile;
    if (!profile.actions.includes(request.action)) {
      throw new InvalidCommandError([
        `action: device "${request.device}" (${profile.profile}) has no action "${request.action}"`,
      ]);
    }
    const now = this.clock.now();
    const issuedAt = request.issuedAt === null ? now : Date.parse(request.issuedAt);
    const ttlMs = request.ttlMs ?? profile.timing.defaultTtlMs;
    const devices = submission.identity.devices;
    const forbidden = devices !== 'all' && !devices.has(request.device);
    const claim = this.journal.claim(
      {
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
      },
      // Rejected in the claim's own commit: a forbidden command is never `accepted` on disk,
      // so nothing (recovery after a crash included) can take it up.
      forbidden
        ? {
            code: 'FORBIDDEN_DEVICE',
            detail: `identity "${submission.identity.scope}" may not command device "${request.device}"; nothing was written`,
          }
        : undefined,
    );
    if (claim.kind !== 'new') return claim;

    const record = claim.record;
    const log = this.commandLogger(record);
    if (forbidden) {
      log.warn({ intake: submission.intake, code: record.code }, 'command rejected');
      this.announce(record, log);
      return claim;
    }
    log.info({ intake: submission.intake, action: record.action }, 'command accepted');
    const gateway = gatewayVerdict(this.clockPolicy, record);
    if (gateway.kind === 'reject') {
      const settled = this.settle(log, record, 'accepted', {
        to: 'rejected',
        code: 'CLOCK_SKEW',
        faultCode: null,
        observed: null,
        detail: gateway.detail,
      });
      return { kind: 'new', record: settled ?? record };
    }
    if (gateway.kind === 'warn') log.warn({ gatewayClock: gateway.state }, gateway.detail);
    const verdict = checkFreshness(record, now, this.freshness);
    if (verdict !== 'FRESH') {
      const settled = this.settle(log, record, 'accepted', {
        to: 'rejected',
        code: verdict,
        faultCode: null,
        observed: null,
        detail: freshnessDetail(verdict, record, now, this.freshness),
      });
      return { kind: 'new', record: settled ?? record };
    }
    if (record.action === 'stop') {
      try {
        this.stopPreempts(lane, record, log);
      } catch (error) {
        // The stop is journaled; it still runs (the sweep would find it otherwise).
        log.error({ err: error }, 'stop could not preempt the command in flight');
      }
    }
    this.enqueue(lane, record);
    return claim;
  }

  /**
   * SPEC §2: a stop is not queued behind travel. It goes first on its device; the command in
   * flight (or left open) is preempted — if it was never written it is superseded, if it was
   * written it is judged again once the stop is terminal (INTERRUPTED when the controller took
   * the stop) and never written again; commands accepted before the stop and not yet written
   * end `rejected` `SUPERSEDED`. Commands accepted after the stop queue behind it as usual.
   */
  private stopPreempts(lane: Lane, stop: CommandRecord, log: Logger): void {
    const target = lane.inFlight ?? lane.unresolved;
    const ahead = lane.queue.splice(0, lane.queue.length);
    if (target === null && ahead.length === 0) return;
    for (const ref of ahead) this.supersede(lane, ref, stop, log);
    if (target === null || lane.interrupted !== null) return;
    const current = this.journal.get(target);
    if (current === undefined || isTerminal(current.state) || current.action === 'stop') return;
    log.warn({ preempts: target.key }, 'stop preempts the command in flight');
    lane.interrupted = { target: { scope: target.scope, key: target.key }, stop };
    if (lane.unresolved !== null && refId(lane.unresolved) === refId(target)) {
      // No worker holds it: the stop runs first, then it is judged again.
      lane.unresolved = null;
      if (current.state === 'accepted') this.supersede(lane, target, stop, log);
    }
    lane.preempt?.abort();
  }

  /** A command accepted before a stop and never written: rejected SUPERSEDED. */
  private supersede(lane: Lane, ref: CommandRef, stop: CommandRef, log: Logger): void {
    const record = this.journal.get(ref);
    if (record === undefined || record.state !== 'accepted') return;
    lane.superseded.add(refId(ref));
    const settled = this.settle(this.commandLogger(record), record, 'accepted', {
      to: 'rejected',
      code: 'SUPERSEDED',
      faultCode: null,
      observed: null,
      detail: `superseded by the stop ${stop.key}, accepted before it was written; nothing was written`,
    });
    if (settled !== null) lane.superseded.delete(refId(ref));
    else {
      // Journal unavailable: it stays marked and is rejected when the device comes to it.
      lane.queue.push({ scope: ref.scope, key: ref.key });
      log.warn({ superseded: ref.key }, 'superseded command not yet journaled as such');
    }
  }

  /** The command as journaled now. */
  get(ref: CommandRef): CommandRecord | undefined {
    return this.journal.get(ref);
  }

  /** Every scope's command with this key (the operator names keys, not scopes). */
  findByKey(key: string): CommandRecord[] {
    return this.journal.findByKey(key);
  }

  /**
   * An operator ends an open command `failed` `RESOLVED_BY_OPERATOR` (SPEC §2, §7): nothing is
   * written to the controller; who and why are in the outcome's detail and the history, and the
   * outcome is published like any other. A worker still holding the command is preempted; its
   * own outcome, should it come, finds the command settled and keeps the operator's.
   */
  resolve(ref: CommandRef, by: string, reason: string): CommandRecord {
    const record = this.journal.get(ref);
    if (record === undefined) throw new UnknownCommandError(ref.key);
    if (isTerminal(record.state)) throw new AlreadySettledError(record);
    const log = this.commandLogger(record);
    const settled = this.journal.settle(record, record.state, {
      to: 'failed',
      code: 'RESOLVED_BY_OPERATOR',
      faultCode: null,
      observed: record.observed,
      detail: `resolved by ${by}: ${reason}; the operator's action wrote nothing to the controller`,
      at: this.clock.now(),
      intake: ADMIN,
    });
    log.warn({ by, from: record.state }, 'command resolved by an operator');
    const lane = this.lanes.get(record.device);
    if (
      lane?.inFlight !== null &&
      lane?.inFlight !== undefined &&
      refId(lane.inFlight) === refId(ref)
    ) {
      lane.preempt?.abort();
    }
    if (
      lane?.unresolved !== null &&
      lane?.unresolved !== undefined &&
      refId(lane.unresolved) === refId(ref)
    ) {
      lane.unresolved = null;
      this.startWorker(lane);
    }
    this.announce(settled, log);
    return settled;
  }

  /**
   * An operator asks for an open command to be judged again now (SPEC §7): a note in its
   * history, and a worker takes it up at once if none holds it — a fresh readback, judged as
   * recovery judges (never a blind write). Resolves when it is terminal, or as it stands after
   * `waitMs`.
   */
  async reverify(
    ref: CommandRef,
    by: string,
    waitMs: number,
  ): Promise<{ readonly record: CommandRecord; readonly detail: string }> {
    const record = this.journal.get(ref);
    if (record === undefined) throw new UnknownCommandError(ref.key);
    if (isTerminal(record.state)) throw new AlreadySettledError(record);
    this.journal.note(record, this.clock.now(), `reverify requested by ${by}`, ADMIN);
    const lane = this.lanes.get(record.device);
    if (lane === undefined) {
      return {
        record,
        detail: `its device "${record.device}" is not in the configuration: no readback can settle it; resolve it`,
      };
    }
    const id = refId(ref);
    const held =
      (lane.inFlight !== null && refId(lane.inFlight) === id) ||
      lane.queue.some((q) => refId(q) === id) ||
      (lane.interrupted !== null && refId(lane.interrupted.target) === id);
    if (!held) {
      if (lane.unresolved !== null && refId(lane.unresolved) !== id) lane.queue.unshift(ref);
      else lane.unresolved = { scope: ref.scope, key: ref.key };
    }
    this.startWorker(lane);
    const after = (await this.waitForSettled(ref, waitMs)) ?? record;
    const detail = isTerminal(after.state)
      ? `settled: ${after.state} ${after.code ?? ''}`.trim()
      : lane.inFlight !== null && refId(lane.inFlight) === id
        ? `still ${after.state}: the daemon is reading the device (${lane.binding.driver.health().lastError ?? 'no error'})`
        : `still ${after.state}: waiting for the device's command in flight`;
    return { record: after, detail };
  }

  /** The command's journaled history: every transition and every duplicate hit. */
  history(ref: CommandRef): JournalEvent[] {
    return this.journal.history(ref);
  }

  /** Throws JournalUnavailableError when the journal cannot take a durable write now. */
  checkJournal(): void {
    this.journal.checkWritable();
  }

  device(id: string): DeviceView | undefined {
    return this.devices().find((d) => d.id === id);
  }

  /**
   * Reads every idle device every `intervalMs`, so that the mirror — what operators and the
   * retained state topic see — stays current between commands. Commands never act on it:
   * they take their own fresh read.
   */
  startMonitor(intervalMs: number): void {
    const lanes = [...this.lanes.values()];
    lanes.forEach((lane, i) => {
      const log = this.logger.child({ device: lane.binding.id });
      void (async () => {
        // Spread over the interval, on a fixed grid: started together (or drifting back
        // together by the time each pass takes), every device of a PLC would be read in one
        // burst each period, and a command's fresh read or readback would queue behind all of
        // them on the PLC's one connection.
        let next = this.clock.elapsed() + (intervalMs * i) / lanes.length;
        for (;;) {
          await this.clock.sleep(Math.max(0, next - this.clock.elapsed()), this.abort.signal);
          if (this.aborted()) return;
          if (lane.inFlight === null && lane.queue.length === 0) {
            await this.execution.reads.tryRead(lane, log);
            // The controller clock is watched between commands too (drift, bound: SPEC §6), and
            // an estimate too coarse to place readbacks is measured again, at this pace.
            const { reads } = this.execution;
            if (reads.usableSkew(lane) === null || reads.coarseSkew(lane)) {
              await reads.measureSkew(lane, log);
            }
          }
          // The next slot of the grid; slots a slow pass ran over are skipped, not caught up.
          next += intervalMs;
          const now = this.clock.elapsed();
          if (next < now) next += Math.ceil((now - next) / intervalMs) * intervalMs;
        }
      })();
    });
  }

  /** Resolves with the command once it is terminal, or as it stands after `timeoutMs`. */
  async waitForSettled(ref: CommandRef, timeoutMs: number): Promise<CommandRecord | undefined> {
    const current = this.journal.get(ref);
    if (current === undefined || isTerminal(current.state) || timeoutMs <= 0) {
      // What the caller answers with must be on disk (group commit).
      await this.durable();
      return current;
    }
    const id = refId(ref);
    const done = new AbortController();
    let settled: CommandRecord | undefined;
    const wake = (record: CommandRecord): void => {
      settled = record;
      done.abort(WOKEN);
    };
    let set = this.waiters.get(id);
    if (set === undefined) {
      set = new Set();
      this.waiters.set(id, set);
    }
    set.add(wake);
    const stop = (): void => {
      done.abort(WOKEN);
    };
    this.abort.signal.addEventListener('abort', stop, { once: true });
    try {
      await this.clock.sleep(timeoutMs, done.signal);
    } finally {
      this.abort.signal.removeEventListener('abort', stop);
      set.delete(wake);
      if (set.size === 0) this.waiters.delete(id);
    }
    // Woken by the settlement's announcement: on disk already, and the record is at hand.
    if (settled !== undefined) return settled;
    await this.durable();
    return this.journal.get(ref);
  }

  /**
   * Resolves with how many of `refs` are still open once every one of them is terminal on
   * disk, after `timeoutMs`, or when the pipeline stops: one listener for all of them (a
   * restart may recover thousands), the journal read once at the start and once more for
   * those still pending at the end (a settlement whose barrier failed is not announced).
   * Throws when the journal cannot be read.
   */
  async waitForAllSettled(refs: readonly CommandRef[], timeoutMs: number): Promise<number> {
    const pending = new Set(refs.map(refId));
    const done = new AbortController();
    const wake = (): void => {
      done.abort(WOKEN);
    };
    const off = this.onSettled((record) => {
      if (pending.delete(refId(record)) && pending.size === 0) wake();
    });
    this.abort.signal.addEventListener('abort', wake, { once: true });
    try {
      const open = new Set(this.journal.listOpenRefs().map(refId));
      for (const id of pending) if (!open.has(id)) pending.delete(id);
      if (pending.size > 0 && timeoutMs > 0 && !this.aborted()) {
        await this.clock.sleep(timeoutMs, done.signal);
      }
    } finally {
      off();
      this.abort.signal.removeEventListener('abort', wake);
    }
    if (pending.size > 0) {
      const open = new Set(this.journal.listOpenRefs().map(refId));
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
    return this.journal.syncPending ? this.journal.durable() : Promise.resolve();
  }

  /**
   * For a replay of a settled command: resolves at once when its settlement is on disk
   * already (the duplicate's own history event then rides on a later barrier: an audit line,
   * not an acknowledgement), otherwise as durable().
   */
  durableReplay(record: CommandRecord): Promise<void> {
    return this.durableFor(record);
  }

  /**
   * Resolves once what `record` reports is on disk: at once for a settlement already announced
   * (announcements follow their barrier) or synced, otherwise as durable(). An answer with a
   * settled command then waits for no barrier of commands that came after it.
   */
  durableFor(record: CommandRecord): Promise<void> {
    return this.settledDurably(record) ? Promise.resolve() : this.durable();
  }

  /** Whether a settled command's settlement is on disk already (see durableReplay). */
  settledDurably(record: CommandRecord): boolean {
    return this.announced.has(record) || this.journal.settledDurably(record);
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
   * Returns how many open commands the journal held.
   */
  recover(): number {
    return this.sweep();
  }

  /**
   * Takes up every open command that has no live worker: a command left open by a journal
   * stall, by a failure, or by an earlier life of the daemon. Dispatched commands go first on
   * their device (the device's queue never moves past one, I1). Idempotent: commands queued or
   * in flight are left alone. Returns how many open commands the journal holds.
   */
  sweep(): number {
    let open: OpenRef[];
    try {
      open = this.journal.listOpenRefs();
    } catch (error) {
      this.logger.warn({ err: error }, 'sweep: the journal cannot be read; trying again later');
      return 0;
    }
    const live = new Set<string>();
    for (const lane of this.lanes.values()) {
      for (const ref of lane.queue) live.add(refId(ref));
      if (lane.inFlight !== null) live.add(refId(lane.inFlight));
      if (lane.unresolved !== null) live.add(refId(lane.unresolved));
      // Preempted by a stop: taken up again once the stop is terminal.
      if (lane.interrupted !== null) live.add(refId(lane.interrupted.target));
    }
    // Dispatched first, then accepted in the order they were accepted (listOpen's order).
    const ordered = [
      ...open.filter((r) => r.state === 'dispatched'),
      ...open.filter((r) => r.state === 'accepted'),
    ];
    for (const record of ordered) {
      if (live.has(refId(record))) continue;
      const lane = this.lanes.get(record.device);
      if (lane === undefined) {
        this.reportOrphan(record);
        continue;
      }
      const ref = { scope: record.scope, key: record.key };
      if (record.state === 'dispatched' && lane.unresolved === null && lane.inFlight === null) {
        lane.unresolved = ref;
      } else if (record.state === 'dispatched') {
        lane.queue.unshift(ref);
      } else {
        lane.queue.push(ref);
      }
      live.add(refId(record));
    }
    if (!this.closed) {
      for (const lane of this.lanes.values()) {
        if (lane.unresolved !== null || lane.queue.length > 0) this.startWorker(lane);
      }
    }
    return open.length;
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
    const confirmTimeouts = new Map<string, number>();
    for (const [id, lane] of this.lanes) {
      confirmTimeouts.set(id, lane.binding.profile.timing.confirmTimeoutMs);
    }
    return summarizeOpen(this.journal.listOpen(), this.clock.now(), confirmTimeouts);
  }

  private reportOrphan(record: OpenRef): void {
    const id = refId(record);
    if (this.orphansReported.has(id)) return;
    this.orphansReported.add(id);
    this.logger.warn(
      { key: record.key, device: record.device },
      'open command for a device no longer configured; stuck until an operator resolves it',
    );
    this.safeNote(
      record,
      'recovery: the device is not in the configuration; stuck until an operator resolves it',
    );
  }

  /**
   * Graceful stop: no new commands; in-flight commands get `boundMs` to settle, then their
   * workers are abandoned and the commands stay journaled for recovery.
   */
  async stop(boundMs: number): Promise<void> {
    this.closed = true;
    for (const lane of this.lanes.values()) {
      lane.queue.length = 0;
      lane.unresolved = null;
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
    await Promise.allSettled(running());
    // Results settled during the drain are announced once on disk (group commit): wait for
    // that barrier, so that the intakes publish them before they close.
    await this.durable().catch(() => undefined);
  }

  /** A method, not a property read: the flag changes across awaits. */
  private aborted(): boolean {
    return this.abort.signal.aborted;
  }

  private enqueue(lane: Lane, ref: CommandRef): void {
    if (this.closed) return;
    lane.queue.push({ scope: ref.scope, key: ref.key });
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
        record = this.journal.get(ref);
      } catch (error) {
        this.leftOpen(lane, ref, this.logger.child({ key: ref.key }), error);
        return;
      }
      if (record === undefined || isTerminal(record.state)) {
        lane.superseded.delete(refId(ref));
        this.afterStop(lane, ref);
        continue;
      }
      const log = this.commandLogger(record);
      if (lane.superseded.has(refId(ref))) {
        const stop = lane.interrupted?.stop ?? { scope: ref.scope, key: '(a stop)' };
        lane.superseded.delete(refId(ref));
        this.supersede(lane, ref, stop, log);
        continue;
      }
      lane.inFlight = ref;
      lane.settledInFlight = null;
      // The command's signal: aborted by a preempting stop or an operator, and by the
      // pipeline's stop. One listener, removed when the command is done (AbortSignal.any would
      // cost a signal, a weak reference and their garbage per command).
      const preempt = new AbortController();
      const stopped = (): void => {
        preempt.abort(this.abort.signal.reason);
      };
      this.abort.signal.addEventListener('abort', stopped, { once: true });
      lane.preempt = preempt;
      lane.signal = preempt.signal;
      let failure: unknown = null;
      try {
        if (record.state === 'accepted') await this.execution.handleAccepted(lane, record, log);
        else await this.execution.takeUpDispatched(lane, record, log);
      } catch (error) {
        failure = error;
      } finally {
        this.abort.signal.removeEventListener('abort', stopped);
        lane.inFlight = null;
        lane.preempt = null;
        lane.signal = this.abort.signal;
      }
      if (this.aborted()) return;
      // Whatever happened, the device moves on only once the command is terminal — or a stop
      // preempted it (SPEC §2) — on disk: a settlement that a failed group commit lost leaves
      // the command open, and the device stays on it.
      let after: CommandRecord | undefined;
      try {
        await this.durable();
        // A settlement announced is on disk (see Lane.settledInFlight); otherwise read back.
        const settled = settledInFlight(lane);
        after = settled !== null && this.announced.has(settled) ? settled : this.journal.get(ref);
      } catch (error) {
        this.leftOpen(lane, ref, log, failure ?? error);
        return;
      }
      if (preempt.signal.aborted && lane.interrupted?.target.key === ref.key) {
        if (after?.state === 'accepted') {
          this.supersede(lane, ref, lane.interrupted.stop, log);
        }
        // A written command is judged again once the stop is terminal (afterStop).
        continue;
      }
      if (after !== undefined && !isTerminal(after.state)) {
        this.leftOpen(lane, ref, log, failure);
        return;
      }
      this.afterStop(lane, ref);
    }
  }

  /**
   * Once a stop that preempted a written command is terminal, that command is taken up again,
   * first: its readbacks decide — INTERRUPTED when the controller took the stop, its own
   * outcome when the stop never reached it. It is never written again (confirmation.ts).
   */
  private afterStop(lane: Lane, ref: CommandRef): void {
    const interrupted = lane.interrupted;
    if (interrupted === null || refId(interrupted.stop) !== refId(ref)) return;
    lane.interrupted = null;
    const target = this.journal.get(interrupted.target);
    if (target !== undefined && !isTerminal(target.state)) lane.unresolved = interrupted.target;
  }

  /**
   * A command is still open after its worker finished: the journal failed under it (or a bug
   * surfaced). Nothing is written without a journal entry, so it stays as journaled; it stays
   * the device's command (the queue does not move past it), and the sweep takes it up again —
   * as `accepted` it takes its normal course, as `dispatched` it is settled by reading the
   * controller, never by a blind re-write.
   */
  private leftOpen(lane: Lane, ref: CommandRef, log: Logger, error: unknown): void {
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
    const previous = lane.mirror;
    lane.mirror = readback;
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

  /** Journals the outcome (with its stored result) and tells listeners and waiters. */
  private settle(
    log: Logger,
    record: CommandRecord,
    from: OpenState,
    outcome: Outcome,
  ): CommandRecord | null {
    let settled: CommandRecord;
    try {
      settled = this.journal.settle(record, from, {
        ...outcome,
        at: this.clock.now(),
        intake: PIPELINE,
      });
    } catch (error) {
      if (error instanceof JournalConflictError) {
        log.warn({}, 'command was settled elsewhere (operator); keeping that outcome');
        return null;
      }
      if (error instanceof JournalUnavailableError) {
        log.error({ err: error }, 'outcome could not be journaled; command left open');
        return null;
      }
      throw error;
    }
    const lane = this.lanes.get(settled.device);
    if (lane !== undefined && lane.inFlight !== null && refId(lane.inFlight) === refId(settled)) {
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
  private announce(settled: CommandRecord, log: Logger): void {
    if (!this.journal.syncPending) {
      this.announceNow(settled, log);
      return;
    }
    this.journal.durable().then(
      () => {
        this.announceNow(settled, log);
      },
      (error: unknown) => {
        log.error({ err: error }, 'journal sync failed: the result is not published (fail closed)');
      },
    );
  }

  private announceNow(settled: CommandRecord, log: Logger): void {
    this.announced.add(settled);
    const waiting = this.waiters.get(refId(settled));
    if (waiting !== undefined) for (const wake of waiting) wake(settled);
    for (const listener of this.settledListeners) {
      try {
        listener(settled);
      } catch (error) {
        log.error({ err: error }, 'settled listener failed');
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

  private commandLogger(record: CommandRecord): Logger {
    return this.logger.child({ key: record.key, device: record.device, scope: record.scope });
  }
}

/**
 * The reason a waiter's sleep is cut short. A reason given avoids the DOMException (and its
 * stack trace) that abort() makes without one: once per waiting request, on the answer's path.
 */
const WOKEN = Object.freeze(new Error('woken'));

/** A function, not a property read: set by settle() across the worker's awaits. */
function settledInFlight(lane: Lane): CommandRecord | null {
  return lane.settledInFlight;
}

function refId(ref: CommandRef): string {
  return `${ref.scope}\u0000${ref.key}`;
}
