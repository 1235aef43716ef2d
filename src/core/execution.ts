import {
  checkFreshness,
  type FreshnessPolicy,
  type OpenState,
  type ResultCode,
  type TerminalState,
} from './command.js';
import type { Clock } from './clock.js';
import { DeviceRefusedError, estimateSkew, type Readback, type SkewEstimate } from './driver.js';
import type { CommandRecord, CommandRef, Journal, Observation } from './journal.js';
import type { Logger } from './logger.js';
import type { DeviceBinding } from './pipeline.js';
import { judgeWritten, meetsExpectation, observe, type Expectation } from './readback.js';
import { decide, formatFaultCode } from './state-machine.js';

/**
 * Carrying out one command on its device: the fresh read and state-machine check, the
 * journaled dispatch, the write, the readback until confirmation (I2), the one proven-not-
 * applied re-dispatch, and recovery of a command found `dispatched` at start (I5). The
 * pipeline owns the queues, the journal's outcomes and the listeners; it runs one of these
 * per device at a time.
 */

/** One device's worker state: its queue, the command in flight, its mirror and skew. */
export interface Lane {
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

export const PIPELINE = 'pipeline';
export const RECOVERY = 'recovery';

/** A command's terminal outcome, as the pipeline journals it. */
export interface Outcome {
  readonly to: TerminalState;
  readonly code: ResultCode;
  readonly faultCode: string | null;
  readonly observed: Observation | null;
  readonly detail: string;
}

/** What an execution needs from the pipeline that runs it. */
export interface ExecutionHost {
  readonly journal: Journal;
  readonly clock: Clock;
  readonly freshness: FreshnessPolicy;
  readonly skewMaxAgeMs: number;
  /** Aborted when the pipeline gives up waiting at shutdown. */
  readonly signal: AbortSignal;
  /** Journals the outcome and tells waiters and listeners; null when it could not. */
  settle(
    log: Logger,
    record: CommandRecord,
    from: OpenState,
    outcome: Outcome,
  ): CommandRecord | null;
  /** An event in the command's history without a transition. */
  note(record: CommandRecord, detail: string): void;
  /** A readback of the device: the mirror follows it. */
  mirror(lane: Lane, readback: Readback): void;
}

export function freshnessDetail(
  verdict: 'STALE_COMMAND' | 'CLOCK_SKEW',
  record: CommandRecord,
  now: number,
  policy: FreshnessPolicy,
): string {
  return verdict === 'STALE_COMMAND'
    ? `deadline ${new Date(record.deadline).toISOString()} passed ${now - record.deadline} ms ago; nothing was written`
    : `issuedAt lies ${record.issuedAt - now} ms in the future, more than the allowed ${policy.maxIssuerSkewMs} ms; nothing was written`;
}

export class CommandExecution {
  private readonly host: ExecutionHost;

  constructor(host: ExecutionHost) {
    this.host = host;
  }

  /** A method, not a property read: the flag changes across awaits. */
  private aborted(): boolean {
    return this.host.signal.aborted;
  }

  async handleAccepted(lane: Lane, record: CommandRecord, log: Logger): Promise<void> {
    const { profile } = lane.binding;
    const fresh = checkFreshness(record, this.host.clock.now(), this.host.freshness);
    if (fresh !== 'FRESH') {
      this.host.settle(log, record, 'accepted', {
        to: 'rejected',
        code: fresh,
        faultCode: null,
        observed: null,
        detail: freshnessDetail(fresh, record, this.host.clock.now(), this.host.freshness),
      });
      return;
    }
    // The state-machine check runs against a fresh read, never against a cached mirror.
    const read = await this.readUntil(lane, record.deadline, record.acceptedAt);
    if (this.aborted()) return;
    if (read.readback === null) {
      this.host.settle(log, record, 'accepted', {
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
        this.host.settle(log, record, 'accepted', {
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
        const now = this.host.clock.now();
        const stale = checkFreshness(record, now, this.host.freshness);
        if (stale !== 'FRESH') {
          this.host.settle(log, record, 'accepted', {
            to: 'rejected',
            code: stale,
            faultCode: null,
            observed: observe(before),
            detail: freshnessDetail(stale, record, now, this.host.freshness),
          });
          return;
        }
        await this.refreshSkew(lane, log);
        // I5/I1: the dispatch (with its sequence number) is durable before the write is sent.
        const dispatched = this.host.journal.markDispatched(
          record,
          this.host.clock.now(),
          observe(before),
          PIPELINE,
        );
        log.info({ seq: dispatched.seq, from: before.state }, 'command dispatched');
        const ctx: WrittenContext = {
          before,
          expect: { ...expect, confirm: decision.confirm },
          writeSentAt: this.host.clock.now(),
          acked: false,
          confirmBy: 0,
        };
        const outcome = await this.sendWrite(lane, dispatched);
        ctx.confirmBy = ctx.writeSentAt + profile.timing.confirmTimeoutMs;
        if (outcome.kind === 'refused') {
          this.host.settle(log, dispatched, 'dispatched', {
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
    const start = this.host.clock.now();
    const confirmBy = start + profile.timing.confirmTimeoutMs;
    let readback = first;
    let lastGood = first;
    let wrongSince: number | null = null;
    for (;;) {
      if (meetsExpectation(profile, readback, expect)) {
        this.host.settle(log, record, 'accepted', {
          to: 'confirmed',
          code: 'OK',
          faultCode: null,
          observed: observe(readback),
          detail: `no-op: the controller shows ${readback.state}; nothing was written`,
        });
        return;
      }
      if (readback.state === profile.faultState) {
        this.host.settle(log, record, 'accepted', {
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
        if (this.host.clock.now() - wrongSince >= profile.timing.mismatchGraceMs) {
          this.host.settle(log, record, 'accepted', {
            to: 'failed',
            code: 'READBACK_MISMATCH',
            faultCode: null,
            observed: observe(readback),
            detail: `expected ${expect.confirm.join(' or ')}, the controller rests in ${readback.state}; nothing was written`,
          });
          return;
        }
      }
      if (this.host.clock.now() >= confirmBy) break;
      await this.host.clock.sleep(profile.timing.pollIntervalMs, this.host.signal);
      if (this.aborted()) return;
      const next = await this.tryRead(lane, log);
      if (next !== null) {
        readback = next;
        lastGood = next;
      }
    }
    this.host.settle(log, record, 'accepted', {
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
    while (this.host.clock.now() < ctx.confirmBy) {
      await this.host.clock.sleep(profile.timing.pollIntervalMs, this.host.signal);
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
          this.host.settle(log, record, 'dispatched', {
            to: 'confirmed',
            code: 'OK',
            faultCode: null,
            observed: observe(readback),
            detail: `readback after the write shows ${readback.state}`,
          });
          return;
        case 'controller-rejected':
          this.host.settle(log, record, 'dispatched', {
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
          this.host.settle(log, record, 'dispatched', {
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
          if (this.host.clock.now() - wrongSince >= profile.timing.mismatchGraceMs) {
            this.host.settle(log, record, 'dispatched', {
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
      this.host.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: null,
        detail: `no readback after the write within ${profile.timing.confirmTimeoutMs} ms; the command's effect is unknown`,
      });
      return;
    }
    this.host.settle(log, record, 'dispatched', {
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
    const now = this.host.clock.now();
    if (ctx.acked || record.attempts >= 2) return null;
    if (now - ctx.writeSentAt < profile.timing.redispatchGuardMs) return null;
    if (!this.unchangedSince(ctx.before, readback) || now >= record.deadline) return null;
    const again = this.host.journal.markRedispatched(
      record,
      now,
      `sequence number ${record.seq ?? '?'} not echoed and the device still shows ${readback.state}: the first write was not applied`,
      PIPELINE,
    );
    log.warn({ seq: again.seq }, 'first write provably not applied; dispatching once more');
    ctx.writeSentAt = this.host.clock.now();
    const outcome = await this.sendWrite(lane, again);
    ctx.confirmBy = ctx.writeSentAt + profile.timing.confirmTimeoutMs;
    if (outcome.kind === 'refused') {
      this.host.settle(log, again, 'dispatched', {
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

  async recoverDispatched(lane: Lane, record: CommandRecord, log: Logger): Promise<void> {
    const { profile } = lane.binding;
    const before = record.observedBefore;
    if (record.seq === null || before === null || record.dispatchedAt === null) {
      this.host.note(
        record,
        'recovery: dispatched without a sequence number; left open for an operator',
      );
      return;
    }
    // Give a write sent just before the crash time to be taken before judging it.
    const quietUntil = record.dispatchedAt + profile.timing.redispatchGuardMs;
    const wait = quietUntil - this.host.clock.now();
    if (wait > 0) await this.host.clock.sleep(wait, this.host.signal);
    if (this.aborted()) return;
    const read = await this.readUntil(
      lane,
      this.host.clock.now() + profile.timing.confirmTimeoutMs,
      record.dispatchedAt,
    );
    if (this.aborted()) return;
    if (read.readback === null) {
      this.host.note(
        record,
        `recovery: device unreachable (${read.lastError ?? 'no answer'}); left open for an operator`,
      );
      log.warn({}, 'recovery could not read the device; command left open');
      return;
    }
    const readback = read.readback;
    const decision = decide(profile, before.state, record.action);
    if (decision.kind !== 'write') {
      this.host.note(record, 'recovery: the profile no longer writes this command; left open');
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
      confirmBy: this.host.clock.now() + profile.timing.confirmTimeoutMs,
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
        this.host.clock.now() < record.deadline
      ) {
        this.host.note(
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
          : this.host.clock.now() >= record.deadline
            ? 'its deadline has passed'
            : `the device moved from ${before.state} to ${readback.state}`;
      this.host.note(
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
        this.host.signal,
      );
      return { kind: 'acked' };
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (error instanceof DeviceRefusedError) return { kind: 'refused', error: message };
      return { kind: 'unknown', error: message };
    }
  }

  async tryRead(lane: Lane, log: Logger): Promise<Readback | null> {
    try {
      const readback = await lane.binding.driver.read(this.host.signal);
      if (!lane.binding.profile.states.includes(readback.state)) {
        log.warn({ state: readback.state }, 'readback names a state the profile does not know');
        return null;
      }
      this.host.mirror(lane, readback);
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
        const readback = await lane.binding.driver.read(this.host.signal);
        if (!lane.binding.profile.states.includes(readback.state)) {
          lastError = `unknown controller state "${readback.state}"`;
        } else if (readback.requestedAt >= notBefore) {
          this.host.mirror(lane, readback);
          return { readback, lastError };
        }
      } catch (error) {
        lastError = error instanceof Error ? error.message : String(error);
      }
      const now = this.host.clock.now();
      if (now >= until || this.aborted()) return { readback: null, lastError };
      await this.host.clock.sleep(Math.min(backoff, until - now), this.host.signal);
      backoff = Math.min(backoff * 2, 2_000);
    }
  }

  private async refreshSkew(lane: Lane, log: Logger): Promise<void> {
    const now = this.host.clock.now();
    if (lane.skew !== null && now - lane.skew.measuredAt < this.host.skewMaxAgeMs) return;
    try {
      lane.skew = estimateSkew(await lane.binding.driver.readClock(this.host.signal));
    } catch (error) {
      log.debug({ err: error }, 'controller clock read failed; keeping the previous skew');
    }
  }
}
