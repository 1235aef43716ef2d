import {
  checkFreshness,
  fingerprint,
  parseIdempotencyKey,
  type CommandRequest,
  type FreshnessPolicy,
  type OpenState,
  type ResultCode,
  type TerminalState,
  isTerminal,
} from './command.js';
import type { Clock } from './clock.js';
import {
  DeviceRefusedError,
  estimateSkew,
  type DeviceDriver,
  type DeviceHealth,
  type Readback,
  type SkewEstimate,
} from './driver.js';
import {
  InvalidCommandError,
  JournalConflictError,
  JournalUnavailableError,
  ShuttingDownError,
  UnknownDeviceError,
} from './errors.js';
import type {
  Claim,
  CommandRecord,
  CommandRef,
  Journal,
  JournalEvent,
  Observation,
} from './journal.js';
import type { Logger } from './logger.js';
import type { DeviceProfile } from './profile.js';
import { judgeWritten, meetsExpectation, observe, type Expectation } from './readback.js';
import { renderResult } from './result.js';
import { decide, formatFaultCode } from './state-machine.js';

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

interface Lane {
  readonly binding: DeviceBinding;
  readonly queue: CommandRef[];
  running: Promise<void> | null;
  inFlight: CommandRef | null;
  mirror: Readback | null;
  skew: SkewEstimate | null;
}

/** The outcome of sending one write. */
type WriteOutcome =
  | { readonly kind: 'acked' }
  | { readonly kind: 'unknown'; readonly error: string }
  | { readonly kind: 'refused'; readonly error: string };

interface WrittenContext {
  readonly before: Readback;
  readonly expect: Expectation;
  writeSentAt: number;
  acked: boolean;
  confirmBy: number;
}

const PIPELINE = 'pipeline';
const RECOVERY = 'recovery';

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
        detail: this.freshnessDetail(verdict, record, now),
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
          if (lane.inFlight === null && lane.queue.length === 0) await this.tryRead(lane, log);
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
        if (record.state === 'accepted') await this.handleAccepted(lane, record, log);
        else await this.recoverDispatched(lane, record, log);
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

  private async handleAccepted(lane: Lane, record: CommandRecord, log: Logger): Promise<void> {
    const { profile } = lane.binding;
    const fresh = checkFreshness(record, this.clock.now(), this.freshness);
    if (fresh !== 'FRESH') {
      this.settle(log, record, 'accepted', {
        to: 'rejected',
        code: fresh,
        faultCode: null,
        observed: null,
        detail: this.freshnessDetail(fresh, record, this.clock.now()),
      });
      return;
    }
    // The state-machine check runs against a fresh read, never against a cached mirror.
    const read = await this.readUntil(lane, record.deadline, record.acceptedAt);
    if (this.aborted()) return;
    if (read.readback === null) {
      this.settle(log, record, 'accepted', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: null,
        detail: `no readback before the deadline; nothing was written (${read.lastError ?? 'no answer'})`,
      });
      return;
    }
    const before = read.readback;
    const decision = decide(profile, before.state, record.action);
    const expect: Expectation = { confirm: [], position: record.position };
    switch (decision.kind) {
      case 'reject':
        this.settle(log, record, 'accepted', {
          to: 'rejected',
          code: decision.code,
          faultCode: decision.faultCode,
          observed: observe(before),
          detail:
            decision.code === 'LOCAL_MODE'
              ? `the device is in ${before.state}; remote commands are not taken; nothing was written`
              : `${record.action} is not a legal transition from ${before.state}; nothing was written`,
        });
        return;
      case 'noop':
        await this.confirmWithoutWrite(
          lane,
          record,
          before,
          { ...expect, confirm: decision.confirm },
          log,
        );
        return;
      case 'write': {
        const now = this.clock.now();
        const stale = checkFreshness(record, now, this.freshness);
        if (stale !== 'FRESH') {
          this.settle(log, record, 'accepted', {
            to: 'rejected',
            code: stale,
            faultCode: null,
            observed: observe(before),
            detail: this.freshnessDetail(stale, record, now),
          });
          return;
        }
        await this.refreshSkew(lane, log);
        // I5/I1: the dispatch (with its sequence number) is durable before the write is sent.
        const dispatched = this.journal.markDispatched(
          record,
          this.clock.now(),
          observe(before),
          PIPELINE,
        );
        log.info({ seq: dispatched.seq, from: before.state }, 'command dispatched');
        const ctx: WrittenContext = {
          before,
          expect: { ...expect, confirm: decision.confirm },
          writeSentAt: this.clock.now(),
          acked: false,
          confirmBy: 0,
        };
        const outcome = await this.sendWrite(lane, dispatched);
        ctx.confirmBy = ctx.writeSentAt + profile.timing.confirmTimeoutMs;
        if (outcome.kind === 'refused') {
          this.settle(log, dispatched, 'dispatched', {
            to: 'failed',
            code: 'DEVICE_FAULT',
            faultCode: null,
            observed: observe(before),
            detail: `the controller refused the write: ${outcome.error}`,
          });
          return;
        }
        ctx.acked = outcome.kind === 'acked';
        if (outcome.kind === 'unknown') {
          log.warn(
            { err: outcome.error, seq: dispatched.seq },
            'write outcome unknown; reading back',
          );
        }
        await this.confirmWritten(lane, dispatched, ctx, log);
        return;
      }
    }
  }

  /** A no-op is confirmed by a readback that shows the target state, with no write at all. */
  private async confirmWithoutWrite(
    lane: Lane,
    record: CommandRecord,
    first: Readback,
    expect: Expectation,
    log: Logger,
  ): Promise<void> {
    const { profile } = lane.binding;
    const start = this.clock.now();
    const confirmBy = start + profile.timing.confirmTimeoutMs;
    let readback = first;
    let lastGood = first;
    let wrongSince: number | null = null;
    for (;;) {
      if (meetsExpectation(profile, readback, expect)) {
        this.settle(log, record, 'accepted', {
          to: 'confirmed',
          code: 'OK',
          faultCode: null,
          observed: observe(readback),
          detail: `no-op: the controller shows ${readback.state}; nothing was written`,
        });
        return;
      }
      if (readback.state === profile.faultState) {
        this.settle(log, record, 'accepted', {
          to: 'failed',
          code: 'DEVICE_FAULT',
          faultCode: readback.faultCode === null ? null : formatFaultCode(readback.faultCode),
          observed: observe(readback),
          detail: `the controller went to ${readback.state} while the command waited; nothing was written`,
        });
        return;
      }
      if (profile.transitional.includes(readback.state)) {
        wrongSince = null;
      } else {
        wrongSince ??= readback.requestedAt;
        if (this.clock.now() - wrongSince >= profile.timing.mismatchGraceMs) {
          this.settle(log, record, 'accepted', {
            to: 'failed',
            code: 'READBACK_MISMATCH',
            faultCode: null,
            observed: observe(readback),
            detail: `expected ${expect.confirm.join(' or ')}, the controller rests in ${readback.state}; nothing was written`,
          });
          return;
        }
      }
      if (this.clock.now() >= confirmBy) break;
      await this.clock.sleep(profile.timing.pollIntervalMs, this.abort.signal);
      if (this.aborted()) return;
      const next = await this.tryRead(lane, log);
      if (next !== null) {
        readback = next;
        lastGood = next;
      }
    }
    this.settle(log, record, 'accepted', {
      to: 'failed',
      code: 'READBACK_TIMEOUT',
      faultCode: null,
      observed: observe(lastGood),
      detail: `no readback showed ${expect.confirm.join(' or ')} within ${profile.timing.confirmTimeoutMs} ms; nothing was written`,
    });
  }

  /** I2: polls until a post-write readback confirms, the controller refuses, or time runs out. */
  private async confirmWritten(
    lane: Lane,
    initial: CommandRecord,
    ctx: WrittenContext,
    log: Logger,
  ): Promise<void> {
    const { profile } = lane.binding;
    const seq = initial.seq;
    if (seq === null) throw new Error(`dispatched command ${initial.key} has no sequence number`);
    let record = initial;
    let lastGood: Readback | null = null;
    let lastReason = 'no readback after the write';
    let wrongSince: number | null = null;
    while (this.clock.now() < ctx.confirmBy) {
      await this.clock.sleep(profile.timing.pollIntervalMs, this.abort.signal);
      if (this.aborted()) return;
      const readback = await this.tryRead(lane, log);
      if (readback === null) continue;
      lastGood = readback;
      const verdict = judgeWritten({
        profile,
        readback,
        expect: ctx.expect,
        seq,
        writeSentAt: ctx.writeSentAt,
        skew: lane.skew,
      });
      switch (verdict.kind) {
        case 'confirmed':
          this.settle(log, record, 'dispatched', {
            to: 'confirmed',
            code: 'OK',
            faultCode: null,
            observed: observe(readback),
            detail: `readback after the write shows ${readback.state}`,
          });
          return;
        case 'controller-rejected':
          this.settle(log, record, 'dispatched', {
            to: 'rejected',
            code: 'ILLEGAL_TRANSITION',
            faultCode: '0x88',
            observed: observe(readback),
            detail: `the controller refused ${record.action} from ${readback.state} (fault 0x88); the mirror resynchronises`,
          });
          // I4: the mirror was wrong; resynchronise it from a fresh read.
          await this.tryRead(lane, log);
          return;
        case 'fault':
          this.settle(log, record, 'dispatched', {
            to: 'failed',
            code: 'DEVICE_FAULT',
            faultCode: verdict.faultCode,
            observed: observe(readback),
            detail: `the controller took the command and went to ${readback.state}${verdict.faultCode === null ? '' : ` (fault ${verdict.faultCode})`}`,
          });
          return;
        case 'wrong-state':
          wrongSince ??= readback.requestedAt;
          lastReason = `the controller took the command and rests in ${readback.state}`;
          if (this.clock.now() - wrongSince >= profile.timing.mismatchGraceMs) {
            this.settle(log, record, 'dispatched', {
              to: 'failed',
              code: 'READBACK_MISMATCH',
              faultCode: null,
              observed: observe(readback),
              detail: `expected ${ctx.expect.confirm.join(' or ')}; ${lastReason}`,
            });
            return;
          }
          break;
        case 'not-taken': {
          wrongSince = null;
          lastReason = `the controller never echoed sequence number ${seq}`;
          const redispatched = await this.redispatchIfNotApplied(lane, record, ctx, readback, log);
          if (redispatched === 'settled') return;
          if (redispatched !== null) record = redispatched;
          break;
        }
        case 'pending':
          wrongSince = null;
          lastReason = verdict.reason;
          break;
      }
    }
    if (this.aborted()) return;
    if (lastGood === null) {
      this.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: null,
        detail: `no readback after the write within ${profile.timing.confirmTimeoutMs} ms; the command's effect is unknown`,
      });
      return;
    }
    this.settle(log, record, 'dispatched', {
      to: 'failed',
      code: 'READBACK_TIMEOUT',
      faultCode: null,
      observed: observe(lastGood),
      detail: `not confirmed within ${profile.timing.confirmTimeoutMs} ms: ${lastReason}`,
    });
  }

  /**
   * A write whose outcome is unknown may be sent once more, only when it is provably not
   * applied: the controller does not echo its sequence number after a quiet period, the device
   * is still in the state it was in before the write, and the deadline has not passed.
   */
  private async redispatchIfNotApplied(
    lane: Lane,
    record: CommandRecord,
    ctx: WrittenContext,
    readback: Readback,
    log: Logger,
  ): Promise<CommandRecord | 'settled' | null> {
    const { profile } = lane.binding;
    const now = this.clock.now();
    if (ctx.acked || record.attempts >= 2) return null;
    if (now - ctx.writeSentAt < profile.timing.redispatchGuardMs) return null;
    if (!this.unchangedSince(ctx.before, readback) || now >= record.deadline) return null;
    const again = this.journal.markRedispatched(
      record,
      now,
      `sequence number ${record.seq ?? '?'} not echoed and the device still shows ${readback.state}: the first write was not applied`,
      PIPELINE,
    );
    log.warn({ seq: again.seq }, 'first write provably not applied; dispatching once more');
    ctx.writeSentAt = this.clock.now();
    const outcome = await this.sendWrite(lane, again);
    ctx.confirmBy = ctx.writeSentAt + profile.timing.confirmTimeoutMs;
    if (outcome.kind === 'refused') {
      this.settle(log, again, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_FAULT',
        faultCode: null,
        observed: observe(readback),
        detail: `the controller refused the write: ${outcome.error}`,
      });
      return 'settled';
    }
    ctx.acked = outcome.kind === 'acked';
    return again;
  }

  private async recoverDispatched(lane: Lane, record: CommandRecord, log: Logger): Promise<void> {
    const { profile } = lane.binding;
    const before = record.observedBefore;
    if (record.seq === null || before === null || record.dispatchedAt === null) {
      this.safeNote(
        record,
        'recovery: dispatched without a sequence number; left open for an operator',
      );
      return;
    }
    // Give a write sent just before the crash time to be taken before judging it.
    const quietUntil = record.dispatchedAt + profile.timing.redispatchGuardMs;
    const wait = quietUntil - this.clock.now();
    if (wait > 0) await this.clock.sleep(wait, this.abort.signal);
    if (this.aborted()) return;
    const read = await this.readUntil(
      lane,
      this.clock.now() + profile.timing.confirmTimeoutMs,
      record.dispatchedAt,
    );
    if (this.aborted()) return;
    if (read.readback === null) {
      this.safeNote(
        record,
        `recovery: device unreachable (${read.lastError ?? 'no answer'}); left open for an operator`,
      );
      log.warn({}, 'recovery could not read the device; command left open');
      return;
    }
    const readback = read.readback;
    const decision = decide(profile, before.state, record.action);
    if (decision.kind !== 'write') {
      this.safeNote(record, 'recovery: the profile no longer writes this command; left open');
      return;
    }
    const beforeReadback: Readback = {
      state: before.state,
      position: before.position,
      seq: before.seq,
      faultCode: before.faultCode === null ? null : Number.parseInt(before.faultCode, 16),
      sourceTime: before.sourceTime === null ? null : Date.parse(before.sourceTime),
      requestedAt: Date.parse(before.readAt),
      receivedAt: Date.parse(before.readAt),
    };
    const ctx: WrittenContext = {
      before: beforeReadback,
      expect: { confirm: decision.confirm, position: record.position },
      writeSentAt: record.dispatchedAt,
      // The write's fate is unknown; only the proof rule may send it again.
      acked: false,
      confirmBy: this.clock.now() + profile.timing.confirmTimeoutMs,
    };
    const verdict = judgeWritten({
      profile,
      readback,
      expect: ctx.expect,
      seq: record.seq,
      writeSentAt: record.dispatchedAt,
      skew: lane.skew,
    });
    if (verdict.kind === 'not-taken') {
      if (
        record.attempts < 2 &&
        this.unchangedSince(beforeReadback, readback) &&
        this.clock.now() < record.deadline
      ) {
        this.safeNote(
          record,
          `recovery: sequence number ${record.seq} not echoed and the device still shows ${readback.state}`,
        );
        // The quiet period has passed already (above); the proof rule decides alone.
        ctx.writeSentAt = -Infinity;
        const again = await this.redispatchIfNotApplied(lane, record, ctx, readback, log);
        if (again === 'settled' || again === null) return;
        await this.confirmWritten(lane, again, ctx, log);
        return;
      }
      const why =
        record.attempts >= 2
          ? 'it was already dispatched twice'
          : this.clock.now() >= record.deadline
            ? 'its deadline has passed'
            : `the device moved from ${before.state} to ${readback.state}`;
      this.safeNote(
        record,
        `recovery: the controller does not echo sequence number ${record.seq} and ${why}; not re-written, left open for an operator`,
      );
      log.warn({ seq: record.seq }, 'recovery left the command open');
      return;
    }
    // Taken by the controller: keep confirming from where the crash left off.
    ctx.acked = true;
    await this.confirmWritten(lane, record, ctx, log);
  }

  private unchangedSince(before: Readback, now: Readback): boolean {
    return (
      now.state === before.state &&
      now.faultCode === before.faultCode &&
      (before.position === null ||
        now.position === null ||
        Math.abs(now.position - before.position) < 0.5)
    );
  }

  private async sendWrite(lane: Lane, record: CommandRecord): Promise<WriteOutcome> {
    if (record.seq === null) throw new Error(`command ${record.key} has no sequence number`);
    try {
      await lane.binding.driver.write(
        { action: record.action, position: record.position, seq: record.seq },
        this.abort.signal,
      );
      return { kind: 'acked' };
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (error instanceof DeviceRefusedError) return { kind: 'refused', error: message };
      return { kind: 'unknown', error: message };
    }
  }

  private async tryRead(lane: Lane, log: Logger): Promise<Readback | null> {
    try {
      const readback = await lane.binding.driver.read(this.abort.signal);
      if (!lane.binding.profile.states.includes(readback.state)) {
        log.warn({ state: readback.state }, 'readback names a state the profile does not know');
        return null;
      }
      this.updateMirror(lane, readback);
      return readback;
    } catch (error) {
      log.debug({ err: error }, 'readback failed');
      return null;
    }
  }

  /** Reads until a usable readback requested at or after `notBefore`, or until `until`. */
  private async readUntil(
    lane: Lane,
    until: number,
    notBefore: number,
  ): Promise<{ readback: Readback | null; lastError: string | null }> {
    let lastError: string | null = null;
    let backoff = lane.binding.profile.timing.pollIntervalMs;
    for (;;) {
      try {
        const readback = await lane.binding.driver.read(this.abort.signal);
        if (!lane.binding.profile.states.includes(readback.state)) {
          lastError = `unknown controller state "${readback.state}"`;
        } else if (readback.requestedAt >= notBefore) {
          this.updateMirror(lane, readback);
          return { readback, lastError };
        }
      } catch (error) {
        lastError = error instanceof Error ? error.message : String(error);
      }
      const now = this.clock.now();
      if (now >= until || this.aborted()) return { readback: null, lastError };
      await this.clock.sleep(Math.min(backoff, until - now), this.abort.signal);
      backoff = Math.min(backoff * 2, 2_000);
    }
  }

  private async refreshSkew(lane: Lane, log: Logger): Promise<void> {
    const now = this.clock.now();
    if (lane.skew !== null && now - lane.skew.measuredAt < this.skewMaxAgeMs) return;
    try {
      lane.skew = estimateSkew(await lane.binding.driver.readClock(this.abort.signal));
    } catch (error) {
      log.debug({ err: error }, 'controller clock read failed; keeping the previous skew');
    }
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
    outcome: {
      readonly to: TerminalState;
      readonly code: ResultCode;
      readonly faultCode: string | null;
      readonly observed: Observation | null;
      readonly detail: string;
    },
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

  private freshnessDetail(
    verdict: 'STALE_COMMAND' | 'CLOCK_SKEW',
    record: CommandRecord,
    now: number,
  ): string {
    return verdict === 'STALE_COMMAND'
      ? `deadline ${new Date(record.deadline).toISOString()} passed ${now - record.deadline} ms ago; nothing was written`
      : `issuedAt lies ${record.issuedAt - now} ms in the future, more than the allowed ${this.freshness.maxIssuerSkewMs} ms; nothing was written`;
  }

  private commandLogger(record: CommandRecord): Logger {
    return this.logger.child({ key: record.key, device: record.device, scope: record.scope });
  }
}

function refId(ref: CommandRef): string {
  return `${ref.scope}\u0000${ref.key}`;
}
