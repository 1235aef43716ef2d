import { CommandWrites, requireSeq, type NoConnection } from './command-writes.js';
import type { DeviceReads } from './device-reads.js';
import type { CommandRecord } from './journal.js';
import { settledMeanwhile, type ExecutionHost, type Lane } from './lane.js';
import type { Logger } from './logger.js';
import { observe, type Expectation } from './readback.js';
import { ReadbackConfirmation } from './readback-confirmation.js';
import { ordinal, type NeverSentCause } from './redispatch.js';
import type { TimedReadback } from './skew.js';
import { CommandTakeUp } from './take-up.js';

/**
 * After the dispatch: the write, then readbacks until one taken after it confirms the command
 * (I2), the controller refuses it, or time runs out; at most one re-dispatch of a write that
 * may have been sent, only when it is provably not applied (redispatch.ts). The same loop takes up a command found
 * `dispatched` with no live worker — after a crash or a journal stall — and settles it by
 * reading the controller, never by a blind re-write (I5). Every command it takes ends with a
 * true, specific outcome. Each job has its module: the write on its way to the controller
 * (command-writes.ts), the readback loop and its re-dispatch (readback-confirmation.ts), and the
 * take-up (take-up.ts); this one sends a command's first write and composes them.
 */
export class ConfirmationLoop {
  private readonly host: ExecutionHost;
  private readonly writes: CommandWrites;
  private readonly readbacks: ReadbackConfirmation;
  private readonly takeUps: CommandTakeUp;

  constructor(host: ExecutionHost, reads: DeviceReads) {
    this.host = host;
    this.writes = new CommandWrites(host);
    this.readbacks = new ReadbackConfirmation(host, reads, this.writes);
    this.takeUps = new CommandTakeUp(host, this.readbacks);
  }

  /**
   * Sends the write of a command just journaled `dispatched` as one not yet written
   * (execution.ts, carryOut), and confirms it. `again`, when this is a re-dispatch: why its
   * latest write was never sent, and which of its writes before was sent and proven not applied
   * (its dispatch, 1 the first), or null when none was sent. Returns the write refused unsent when it found
   * no connection to the controller (WriteNotSentError `no-connection`) — this one, or a write
   * sent once more after it was proven not applied (readback-confirmation.ts): nothing of it
   * left the process, and the caller goes round again once the connection is back, while the
   * deadline allows (execution.ts); otherwise null, the command settled or left to whoever
   * settles it.
   */
  async writeAndConfirm(
    lane: Lane,
    dispatched: CommandRecord,
    first: { readonly before: TimedReadback; readonly expect: Expectation },
    log: Logger,
    again: { readonly cause: NeverSentCause; readonly proven: number | null } | null = null,
  ): Promise<NoConnection | null> {
    const { profile } = lane.binding;
    const seq = requireSeq(dispatched);
    const write = this.writes.beginWrite(lane, dispatched, seq);
    const outcome = await this.writes.send(lane, dispatched, seq, write, log);
    // A re-dispatch comes here only for a write never sent (execution.ts): withdrawn or
    // withheld (takeUpUnsent), or refused for want of a connection (carryOut); one proven
    // not applied by readback is sent by notTaken.
    if (dispatched.attempts > 1 && outcome.kind !== 'not-sent') {
      lane.writes.redispatches[
        again?.cause === 'no-connection'
          ? 'no_connection'
          : again?.cause === 'withheld'
            ? 'withheld'
            : 'withdrawn'
      ]++;
    }
    if (outcome.kind === 'refused') {
      this.writes.refused(dispatched, observe(first.before), outcome, log);
      return null;
    }
    if (outcome.kind === 'not-sent' && outcome.reason === 'withdrawn') {
      if (again !== null && again.proven !== null) {
        // A write of it was sent before (proven not applied): not "never written", so not
        // superseded by the stop that withdrew this one; the history says it was not sent,
        // and its take-up ends it (execution.ts, takeUpUnsent).
        if (!settledMeanwhile(this.host, lane, dispatched, log)) {
          this.writes.secondUnsent(lane, dispatched, outcome.error, log);
        }
        return null;
      }
      this.writes.withdrawn(lane, dispatched, observe(first.before), outcome.error, log);
      return null;
    }
    if (outcome.kind === 'not-sent' && outcome.reason === 'no-connection') {
      // The connection dropped just before (its reconnect not yet due) or the connect failed:
      // nothing of the write left the process, and the command may ride out the reconnect —
      // again if its connection dropped again between its fresh read and this write.
      return { dispatched, error: outcome.error, proven: again?.proven ?? null };
    }
    if (outcome.kind === 'not-sent' && outcome.reason === 'closed') {
      // The driver never handed it to a socket: nothing was applied, whatever a readback shows
      // later (a controller that restarted meanwhile shows its power-up echo, which no readback
      // can tell from one that lost the write). Its driver closed (the daemon stops): no
      // connection will come, and it is not sent again.
      this.host.settle(log, dispatched, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: observe(first.before),
        detail: `the write was never sent: no connection to the controller; nothing was applied (${outcome.error})`,
      });
      return null;
    }
    if (outcome.kind === 'not-sent' && again?.cause === 'no-connection') {
      // Its deadline passed while the write went round again (while it waited behind other
      // requests): the command ends as one whose wait for the connection ran out. After a
      // write of it that was sent and proven not applied, its words name that write, as every
      // other end of such a round does (execution.ts, sentBeforeHost; the end below).
      const deadline = new Date(dispatched.deadline).toISOString();
      this.host.settle(log, dispatched, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: observe(first.before),
        detail:
          again.proven === null
            ? `the write never reached the controller: it found no connection and went round again, and its deadline ${deadline} passed before its write could be sent again; nothing was applied (${outcome.error})`
            : `the write never reached the controller: its ${ordinal(again.proven)} write (sequence number ${seq}) was sent and proven not applied, a write of it since found no connection and went round again, and its deadline ${deadline} passed before the write could be sent again; nothing was applied (${outcome.error})`,
      });
      return null;
    }
    if (outcome.kind === 'not-sent' && again !== null && again.proven !== null) {
      // Its deadline passed while the write waited for the controller, in a round after a write
      // of it that was sent and proven not applied (its next withdrawn unsent as the daemon
      // stopped, and taken up: execution.ts, takeUpUnsent): a write of it went out, so not
      // `rejected`, which says it was never written (SPEC §2), as every other end of such a
      // round (execution.ts, sentBeforeHost).
      this.host.settle(log, dispatched, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: observe(first.before),
        detail: `the write never reached the controller: its ${ordinal(again.proven)} write (sequence number ${seq}) was sent and proven not applied, and its deadline ${new Date(dispatched.deadline).toISOString()} passed before the write could be sent again; nothing was applied (${outcome.error})`,
      });
      return null;
    }
    if (outcome.kind === 'not-sent') {
      this.host.settle(log, dispatched, 'dispatched', {
        to: 'rejected',
        code: 'STALE_COMMAND',
        faultCode: null,
        observed: observe(first.before),
        detail: `deadline ${new Date(dispatched.deadline).toISOString()} passed before the write could be sent (${outcome.error})`,
      });
      return null;
    }
    if (outcome.kind === 'unknown') {
      log.warn({ err: outcome.error, seq }, 'write outcome unknown; reading back');
    }
    const windowMs = profile.timing.confirmTimeoutMs;
    return this.readbacks.confirm(
      lane,
      dispatched,
      {
        before: first.before,
        expect: first.expect,
        write,
        earlierLife: false,
        windowMs,
        confirmByMono: write.sentMono + windowMs,
      },
      log,
      false,
    );
  }

  /**
   * Takes up a `dispatched` command with no live worker (take-up.ts); what it returns as
   * writeAndConfirm does.
   */
  takeUp(lane: Lane, record: CommandRecord, log: Logger): Promise<NoConnection | null> {
    return this.takeUps.takeUp(lane, record, log);
  }
}
