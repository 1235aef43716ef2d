import { sendWhileBusy, type AttemptOutcome, type WriteOutcome } from './busy-write.js';
import { DeviceRefusedError, WriteNotSentError } from './driver.js';
import { claimId, type CommandRecord, type Observation } from './journal.js';
import {
  PIPELINE,
  refId,
  settledMeanwhile,
  type ExecutionHost,
  type Lane,
  type LastWrite,
} from './lane.js';
import type { Logger } from './logger.js';
import { unsentLine, writesMaybeSent } from './redispatch.js';

/**
 * A command's write refused unsent by its driver for want of a connection to the controller
 * (WriteNotSentError `no-connection`): nothing of it left the process, and the command goes
 * round again within its deadline (execution.ts, carryOutRounds). `dispatched`: the command as
 * journaled with that write; `error`: the driver's words; `proven`: the dispatch (1 its first)
 * whose write was sent and proven not applied before this one, when one was (redispatch.ts: then
 * the next write is the second that may leave the gateway), null when none of its writes before
 * was sent; the rounds carry it on.
 */
export interface NoConnection {
  readonly dispatched: CommandRecord;
  readonly error: string;
  readonly proven: number | null;
}

/**
 * A command's write on its way to the controller: remembered as the lane's last write, handed to
 * the driver (sent again while the controller answers busy, busy-write.ts), and what became of
 * it when it was not sent or was refused — a history line where only this process knows it. The
 * first write (confirmation.ts) and a second one proven needed (readback-confirmation.ts) both
 * go out here.
 */
export class CommandWrites {
  private readonly host: ExecutionHost;
  /**
   * For each write on its way (beginWrite to the end of send), the device's write it replaced as
   * the lane's last: when it is not sent after all, that one is the device's last write again.
   */
  private readonly replaced = new WeakMap<LastWrite, LastWrite | null>();

  constructor(host: ExecutionHost) {
    this.host = host;
  }

  /**
   * Remembers the write about to be sent: the lane's last write, in flight. A command whose
   * dispatch this process withheld is no longer one never sent (Lane.withheld): its write may
   * be on the wire from now, and a stop that preempts it waits for it.
   */
  beginWrite(lane: Lane, record: CommandRecord, seq: number): LastWrite {
    lane.withheld.delete(refId(record));
    const write: LastWrite = {
      scope: record.scope,
      key: record.key,
      seq,
      sentMono: this.host.clock.elapsed(),
      acked: false,
      unknownSinceMono: null,
      epoch: null,
    };
    this.replaced.set(write, writeBefore(lane.lastWrite, record));
    lane.lastWrite = write;
    return write;
  }

  async send(
    lane: Lane,
    record: CommandRecord,
    seq: number,
    write: LastWrite,
    log: Logger,
  ): Promise<WriteOutcome> {
    const before = this.replaced.get(write) ?? null;
    let outcome: WriteOutcome;
    try {
      outcome = await sendWhileBusy(this.host, lane, record, seq, write, log, () =>
        this.trySend(lane, record, seq, write),
      );
    } finally {
      this.replaced.delete(write);
    }
    // Never sent: the write before it is the device's last again. It may belong to another
    // command whose write the controller may still take (acknowledged and held, its answer
    // lost): a command that goes round again after a write refused for want of a connection
    // (execution.ts, carryOutRounds) decides behind it as its first round did. Voided with this
    // one, a stop decided behind a held open was confirmed a no-op at CLOSED on its second
    // round, and the controller then took the open (I2).
    if (outcome.kind === 'not-sent' && lane.lastWrite === null) lane.lastWrite = before;
    if (aborted(lane)) this.noteAfterResolve(record, seq, outcome);
    return outcome;
  }

  /**
   * An operator resolved the command while its write was on its way: the outcome says what was
   * known then ("it may have been applied"); the history gets what became of the write, which
   * only this worker learns (sent and acknowledged, refused, withdrawn before it was sent).
   */
  private noteAfterResolve(record: CommandRecord, seq: number, outcome: WriteOutcome): void {
    let current: CommandRecord | undefined;
    try {
      current = this.host.journal.get(record);
    } catch {
      return;
    }
    if (current?.code !== 'RESOLVED_BY_OPERATOR') return;
    const write = `after the operator's resolve: the command's write (sequence number ${seq})`;
    const fate =
      outcome.kind === 'acked'
        ? 'had been sent, and the controller acknowledged it: it may be applied'
        : outcome.kind === 'unknown'
          ? `had been sent, and the controller did not answer (${outcome.error}): it may be applied`
          : outcome.kind === 'refused'
            ? `was refused by the controller (${outcome.error}); nothing was applied`
            : `was not sent (${outcome.error}); nothing was applied`;
    try {
      this.host.journal.note(record, this.host.clock.now(), `${write} ${fate}`, PIPELINE);
    } catch {
      // The journal cannot be written: the outcome already says the write may be applied.
    }
  }

  private async trySend(
    lane: Lane,
    record: CommandRecord,
    seq: number,
    write: LastWrite,
  ): Promise<AttemptOutcome> {
    // The time left before the deadline, as deadlineNow() judges it (I3).
    const timeLeftMs = record.deadline - this.host.deadlineNow(record);
    try {
      await lane.binding.driver.write(
        {
          action: record.action,
          position: record.position,
          seq,
          // The driver counts the time left from now on the monotonic clock: a step of the
          // gateway's clock back while the write waits for its controller does not give it that
          // time again. A command timed by its issuer is judged on the wall clock too (a step
          // forward ages it, as deadlineNow says); one timed by its receipt is not (a step must
          // not age it).
          ...(record.issuedAtSource === 'issuer' ? { notAfter: record.deadline } : {}),
          timeLeftMs,
          // Preempted by a stop, resolved by an operator, the daemon stopping: a write still
          // waiting for its controller is not sent (SPEC §2: a command not yet written when a
          // stop comes is never written).
          withdrawn: lane.signal,
        },
        this.host.signal,
      );
      write.epoch = lane.binding.driver.health().connectionEpoch;
      write.acked = true;
      write.ackedMono = this.host.clock.elapsed();
      return { kind: 'acked' };
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      if (error instanceof WriteNotSentError) {
        // Never sent: nothing of it reached the controller, the lane's last write is void.
        lane.lastWrite = null;
        return { kind: 'not-sent', reason: error.reason, error: message };
      }
      if (error instanceof DeviceRefusedError && error.busy) {
        // Busy: not processed, to be sent again (sendWhileBusy).
        return { kind: 'busy', error: message };
      }
      if (error instanceof DeviceRefusedError) {
        // The controller answered that it did not apply it: not unknown.
        write.unknownSinceMono = this.host.clock.elapsed();
        return { kind: 'refused', error: message };
      }
      // The guard starts now, when the outcome became unknown — not when the write was sent.
      write.unknownSinceMono = this.host.clock.elapsed();
      // The connection the write went out on is replaced after a lost answer: no epoch.
      write.epoch = null;
      return { kind: 'unknown', error: message };
    }
  }

  /**
   * The first write was withdrawn before it was sent (the lane's signal aborted while it waited
   * for the controller): nothing of it was written.
   * - An operator resolved the command meanwhile: the journal says so already.
   * - A stop preempted it: `rejected` `SUPERSEDED`, as a command the stop finds not yet written
   *   (SPEC §2), and the stop goes out alone.
   * - The daemon is stopping: it stays `dispatched`, and the next start settles it by reading
   *   the controller (I5), which shows it never taken.
   */
  withdrawn(
    lane: Lane,
    record: CommandRecord,
    observed: Observation,
    error: string,
    log: Logger,
  ): void {
    if (settledMeanwhile(this.host, lane, record, log)) return;
    const stop = lane.interrupted;
    if (stop !== null && claimId(stop.target) === claimId(record)) {
      this.host.settle(log, record, 'dispatched', {
        to: 'rejected',
        code: 'SUPERSEDED',
        faultCode: null,
        observed,
        detail: `superseded by the stop ${stop.stop.key} while its write waited for the controller; it was not sent, nothing was applied (${error})`,
      });
      return;
    }
    this.noteUnsent(record, error, log);
  }

  /**
   * The second write of a command was withdrawn before it was sent — by a stop that preempted
   * the command, or as the daemon stopped: the history says so, as for a first write
   * (withdrawn). Whoever takes the command up next (this life once the stop is terminal, or the
   * next start) goes by it (execution.ts, takeUpUnsent): after a stop, the command is not sent
   * again, and nothing was applied; withdrawn as the daemon stopped, with no stop after the
   * command, its history proves its one write that may have left proven not applied and this
   * one never sent (provenThenUnsent), and the next start goes round again. Without the line the history showed
   * the re-dispatch and then an outcome read back after the stop ("stopped by …"), as if the
   * second write had gone out; and after a restart a controller showing its power-up echo
   * would leave it unknown.
   */
  secondUnsent(lane: Lane, again: CommandRecord, error: string, log: Logger): void {
    const stop = lane.interrupted;
    const by = stop !== null && claimId(stop.target) === claimId(again) ? stop.stop.key : null;
    this.noteUnsent(again, error, log, by);
  }

  /**
   * A write withdrawn unsent that nothing settled: the command stays `dispatched`, and the
   * history says what only this process knows; the take-up goes by it (execution.ts,
   * takeUpDispatched): a readback may not prove the write unapplied (a controller showing its
   * power-up echo), the driver did — it never left this process. `stop`: the key of the stop
   * that preempted the command and withdrew the write.
   */
  private noteUnsent(
    record: CommandRecord,
    error: string,
    log: Logger,
    stop: string | null = null,
  ): void {
    log.warn(
      { seq: record.seq, err: error, ...(stop === null ? {} : { stop }) },
      stop === null
        ? 'write withdrawn before it was sent; left to recovery'
        : 'write withdrawn before it was sent: preempted by a stop',
    );
    const why =
      stop !== null
        ? `as the stop ${stop} preempted the command`
        : this.host.signal.aborted
          ? 'as the daemon stopped'
          : 'before it was sent';
    const seq = requireSeq(record);
    // One whose earlier writes all found no connection (or were withdrawn) is still never
    // written. One with a write before that may have left the gateway (proven not applied) is
    // not sent again when a stop withdrew this one; withdrawn otherwise (the daemon stopping),
    // its take-up goes round as after a write refused unsent (execution.ts, takeUpUnsent).
    const sentBefore =
      record.attempts < 2 ? 0 : writesMaybeSent(this.host.journal.history(record), seq, false);
    const then =
      sentBefore === 0 ? 'not-yet-written' : stop === null ? 'round-again' : 'not-sent-again';
    this.host.note(record, unsentLine(seq, why, error, then));
  }

  refused(
    record: CommandRecord,
    observed: Observation | null,
    outcome: Extract<WriteOutcome, { kind: 'refused' }>,
    log: Logger,
  ): void {
    this.host.settle(log, record, 'dispatched', {
      to: 'failed',
      code: 'DEVICE_FAULT',
      faultCode: null,
      observed,
      detail:
        outcome.busy === true
          ? outcome.error
          : `the controller refused the write: ${outcome.error}`,
    });
  }
}

/**
 * The device's write before one of `record`'s about to be sent: the lane's last, when another
 * command's; for a write of the same command (its first, before a second dispatch; a take-up's
 * stand-in), the write it stood behind, if any (LastWrite.behind).
 */
function writeBefore(last: LastWrite | null, record: CommandRecord): LastWrite | null {
  if (last === null) return null;
  if (last.scope !== record.scope || last.key !== record.key) return last;
  return last.behind ?? null;
}

export function requireSeq(record: CommandRecord): number {
  if (record.seq === null)
    throw new Error(`dispatched command ${record.key} has no sequence number`);
  return record.seq;
}

/** A function, not a property read: the flag changes across awaits (and narrowing forgets). */
export function aborted(lane: Lane): boolean {
  return lane.signal.aborted;
}
