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
import type { DeviceDriver, DeviceHealth, Readback, SkewEstimate } from './driver.js';
import {
  InvalidCommandError,
  JournalConflictError,
  JournalUnavailableError,
  ShuttingDownError,
  UnknownDeviceError,
} from './errors.js';
import {
  CommandExecution,
  PIPELINE,
  RECOVERY,
  freshnessDetail,
  type Lane,
  type Outcome,
} from './execution.js';
import type { Claim, CommandRecord, CommandRef, Journal, JournalEvent } from './journal.js';
import type { Logger } from './logger.js';
import type { DeviceProfile } from './profile.js';
import { renderResult } from './result.js';

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
}

/** What the rest of the daemon may know about a device, as the pipeline last saw it. */
export interface DeviceView {
  readonly id: string;
  readonly profile: string;
  readonly mirror: Readback | null;
  readonly skew: SkewEstimate | null;
  readonly health: DeviceHealth;
  readonly queued: number;
  readonly inFlight: string | null;
}

type SettledListener = (record: CommandRecord) => void;
type MirrorListener = (device: string, readback: Readback) => void;

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
  private readonly lanes = new Map<string, Lane>();
  private readonly waiters = new Map<string, Set<() => void>>();
  private readonly settledListeners = new Set<SettledListener>();
  private readonly mirrorListeners = new Set<MirrorListener>();
  private readonly abort = new AbortController();
  private readonly execution: CommandExecution;
  /** Journal-unavailable retries per command, for their growing pauses. */
  private readonly retries = new Map<string, number>();
  private closed = false;

  constructor(options: PipelineOptions) {
    this.journal = options.journal;
    this.clock = options.clock;
    this.logger = options.logger;
    this.freshness = options.freshness;
    this.skewMaxAgeMs = options.skewMaxAgeMs ?? 60_000;
    for (const binding of options.devices) {
      this.lanes.set(binding.id, {
        binding,
        queue: [],
        running: null,
        inFlight: null,
        mirror: null,
        skew: null,
      });
    }
    this.execution = new CommandExecution({
      journal: this.journal,
      clock: this.clock,
      freshness: this.freshness,
      skewMaxAgeMs: this.skewMaxAgeMs,
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
      queued: lane.queue.length,
      inFlight: lane.inFlight?.key ?? null,
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
            render: renderResult,
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
    this.enqueue(lane, record);
    return claim;
  }

  /** The command as journaled now. */
  get(ref: CommandRef): CommandRecord | undefined {
    return this.journal.get(ref);
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
    for (const lane of this.lanes.values()) {
      const log = this.logger.child({ device: lane.binding.id });
      void (async () => {
        while (!this.aborted()) {
          if (lane.inFlight === null && lane.queue.length === 0)
            await this.execution.tryRead(lane, log);
          await this.clock.sleep(intervalMs, this.abort.signal);
        }
      })();
    }
  }

  /** Resolves with the command once it is terminal, or as it stands after `timeoutMs`. */
  async waitForSettled(ref: CommandRef, timeoutMs: number): Promise<CommandRecord | undefined> {
    const current = this.journal.get(ref);
    if (current === undefined || isTerminal(current.state) || timeoutMs <= 0) return current;
    const id = refId(ref);
    const done = new AbortController();
    const wake = (): void => {
      done.abort();
    };
    let set = this.waiters.get(id);
    if (set === undefined) {
      set = new Set();
      this.waiters.set(id, set);
    }
    set.add(wake);
    const stop = (): void => {
      done.abort();
    };
    this.abort.signal.addEventListener('abort', stop, { once: true });
    try {
      await this.clock.sleep(timeoutMs, done.signal);
    } finally {
      this.abort.signal.removeEventListener('abort', stop);
      set.delete(wake);
      if (set.size === 0) this.waiters.delete(id);
    }
    return this.journal.get(ref);
  }

  /**
   * Recovery at start (I5): every non-terminal command is settled by reading its controller.
   * Accepted commands were never written (dispatch is journaled before the write) and take
   * their normal course; dispatched ones are confirmed, re-dispatched once when provably not
   * applied, or left open for an operator. Never a blind re-write.
   */
  recover(): number {
    const open = this.journal.listOpen();
    for (const record of open) {
      const lane = this.lanes.get(record.device);
      if (lane === undefined) {
        this.logger.warn(
          { key: record.key, device: record.device },
          'open command for a device no longer configured; left for an operator',
        );
        this.safeNote(
          record,
          'recovery: the device is not in the configuration; left open for an operator',
        );
        continue;
      }
      this.enqueue(lane, record);
    }
    return open.length;
  }

  /**
   * Graceful stop: no new commands; in-flight commands get `boundMs` to settle, then their
   * workers are abandoned and the commands stay journaled for recovery.
   */
  async stop(boundMs: number): Promise<void> {
    this.closed = true;
    for (const lane of this.lanes.values()) lane.queue.length = 0;
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
  }

  /** A method, not a property read: the flag changes across awaits. */
  private aborted(): boolean {
    return this.abort.signal.aborted;
  }

  private enqueue(lane: Lane, ref: CommandRef): void {
    if (this.closed) return;
    lane.queue.push({ scope: ref.scope, key: ref.key });
    this.startWorker(lane);
  }

  private startWorker(lane: Lane): void {
    if (lane.running !== null) return;
    lane.running = this.drain(lane).finally(() => {
      lane.running = null;
      // A command queued while the worker was finishing must not wait for the next submit.
      if (lane.queue.length > 0 && !this.closed) this.startWorker(lane);
    });
  }

  private async drain(lane: Lane): Promise<void> {
    for (;;) {
      const ref = lane.queue.shift();
      if (ref === undefined || this.aborted()) return;
      let record: CommandRecord | undefined;
      try {
        record = this.journal.get(ref);
      } catch (error) {
        this.failedMidFlight(lane, ref, this.logger.child({ key: ref.key }), error);
        continue;
      }
      if (record === undefined || isTerminal(record.state)) continue;
      lane.inFlight = ref;
      const log = this.commandLogger(record);
      try {
        if (record.state === 'accepted') await this.execution.handleAccepted(lane, record, log);
        else await this.execution.recoverDispatched(lane, record, log);
      } catch (error) {
        this.failedMidFlight(lane, ref, log, error);
      } finally {
        lane.inFlight = null;
      }
    }
  }

  /**
   * The journal failed under a command (or a bug surfaced). Nothing is written without a
   * journal entry, so the command stays journaled as it was. When the journal is only
   * unavailable for now (locked, full), the command is taken up again later, with growing
   * pauses: as `accepted` it takes its normal course, as `dispatched` it is settled by reading
   * the controller — the recovery path, never a blind re-write.
   */
  private failedMidFlight(lane: Lane, ref: CommandRef, log: Logger, error: unknown): void {
    if (!(error instanceof JournalUnavailableError)) {
      log.error({ err: error }, 'command handling failed; left journaled for an operator');
      return;
    }
    this.retryLater(lane, ref, log);
  }

  private retryLater(lane: Lane, ref: CommandRef, log: Logger): void {
    if (this.closed || this.aborted()) return;
    const id = refId(ref);
    const attempt = (this.retries.get(id) ?? 0) + 1;
    this.retries.set(id, attempt);
    const delay = Math.min(1_000 * 2 ** (attempt - 1), 30_000);
    log.warn(
      { retryInMs: delay, attempt },
      'journal unavailable: the command stays as journaled and is taken up again',
    );
    void this.clock.sleep(delay, this.abort.signal).then(() => {
      if (!this.closed && !this.aborted()) this.enqueue(lane, ref);
    });
  }

  private updateMirror(lane: Lane, readback: Readback): void {
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
        render: renderResult,
      });
    } catch (error) {
      if (error instanceof JournalConflictError) {
        log.warn({}, 'command was settled elsewhere (operator); keeping that outcome');
        return null;
      }
      if (error instanceof JournalUnavailableError) {
        log.error({ err: error }, 'outcome could not be journaled; command left open');
        const lane = this.lanes.get(record.device);
        if (lane !== undefined) this.retryLater(lane, record, log);
        return null;
      }
      throw error;
    }
    this.retries.delete(refId(settled));
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

  /** Tells waiters and listeners (result publication, metrics) that a command settled. */
  private announce(settled: CommandRecord, log: Logger): void {
    const waiting = this.waiters.get(refId(settled));
    if (waiting !== undefined) for (const wake of waiting) wake();
    for (const listener of this.settledListeners) {
      try {
        listener(settled);
      } catch (error) {
        log.error({ err: error }, 'settled listener failed');
      }
    }
  }

  private safeNote(record: CommandRecord, detail: string): void {
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

function refId(ref: CommandRef): string {
  return `${ref.scope}\u0000${ref.key}`;
}
