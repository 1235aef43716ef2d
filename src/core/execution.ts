import { checkFreshness, type OpenState } from './command.js';
import { clockNote, controllerVerdict, gatewayVerdict } from './clock-policy.js';
import { requireSeq } from './command-writes.js';
import { ConfirmationLoop } from './confirmation.js';
import { DeviceReads } from './device-reads.js';
import { MAX_DISPATCHES, type CommandRecord } from './journal.js';
import {
  PIPELINE,
  freshnessDetail,
  refId,
  settledMeanwhile,
  type ExecutionHost,
  type Lane,
} from './lane.js';
import type { Logger } from './logger.js';
import { stopOverPreempted } from './preemption.js';
import { observe, type Expectation } from './readback.js';
import { NoOpCourse } from './no-op.js';
import {
  DECIDED_AGAIN,
  previousWritePending,
  stopAfterPending,
  stopAfterPendingNote,
} from './previous-write.js';
import {
  latestUnsentCause,
  noConnectionLine,
  writesMaybeSent,
  type UnsentCause,
} from './redispatch.js';
import { allocateSeq } from './sequence.js';
import type { TimedReadback } from './skew.js';
import { decide, type Decision } from './state-machine.js';

/**
 * Carrying out one `accepted` command on its device: freshness, the fresh read and the
 * state-machine check, the journaled dispatch and the write; then the confirmation loop
 * (confirmation.ts) takes over. A command found open later (after a crash, a journal stall)
 * is taken up by the confirmation loop directly. The pipeline owns the queues, the journal's
 * outcomes and the listeners; it runs one command per device at a time.
 */
export class CommandExecution {
  private readonly host: ExecutionHost;
  readonly reads: DeviceReads;
  private readonly confirmation: ConfirmationLoop;
  private readonly noOp: NoOpCourse;

  constructor(host: ExecutionHost) {
    this.host = host;
    this.reads = new DeviceReads(host);
    this.confirmation = new ConfirmationLoop(host, this.reads);
    this.noOp = new NoOpCourse(host, this.reads);
  }

  /**
   * Takes up a command left `dispatched` (crash, journal stall): settled by readback — unless
   * its history says its latest write was never sent: withdrawn before it was sent (a stop of
   * the daemon while it waited for its controller), or refused for want of a connection while
   * the command went round again (carryOut). The driver proved that: it was never sent and
   * never will be, and no readback can prove it as well (a controller showing its power-up echo
   * after a restart looks like one that lost the write). Such a command is one never written.
   */
  takeUpDispatched(lane: Lane, record: CommandRecord, log: Logger): Promise<void> {
    const cause =
      record.seq === null ? null : latestUnsentCause(this.host.journal.history(record), record.seq);
    if (record.seq === null || cause === null) {
      return this.confirmation.takeUp(lane, record, log);
    }
    return this.takeUpUnsent(lane, record, record.seq, cause, log);
  }

  async handleAccepted(lane: Lane, record: CommandRecord, log: Logger): Promise<void> {
    await this.carryOutRounds(lane, record, { from: 'accepted' }, log);
  }

  /**
   * A dispatched command whose latest write was never sent (takeUpDispatched). When every
   * earlier write of it was never sent either (writesMaybeSent: refused for want of a
   * connection, withdrawn), nothing of it ever left the gateway: a stop that came after it
   * supersedes it (SPEC §2: never written), and otherwise it takes the course of a command not
   * yet written — freshness (I3), a fresh read and the state-machine check (I4), the clock
   * policy — and its write, with the sequence number it was given, is journaled as a
   * re-dispatch before it goes out (I1: a later life then knows it may have been sent). A
   * command with an earlier write that may have gone out (proven not applied, and dispatched
   * again since) is not written again (redispatch.ts: one re-dispatch of a write that may have
   * left), nor one at MAX_DISPATCHES.
   */
  private async takeUpUnsent(
    lane: Lane,
    record: CommandRecord,
    seq: number,
    cause: UnsentCause,
    log: Logger,
  ): Promise<void> {
    const unsent =
      cause === 'withdrawn'
        ? `its write (sequence number ${seq}) was withdrawn before it was sent`
        : `its write (sequence number ${seq}) found no connection to the controller and was not sent`;
    log.warn({ seq, cause }, 'taken up: its write was never sent; not yet written');
    const stop = this.host.journal.stopsAfter(record, 1)[0];
    // The writes before this one that may have left the gateway: none for a first write, nor
    // for one whose earlier writes all found no connection (or were withdrawn).
    const sentBefore =
      record.attempts < 2 ? 0 : writesMaybeSent(this.host.journal.history(record), seq, false);
    // Superseded (rejected: never written) only when no write of it was sent: a command with a
    // write sent before, proven not applied, is not "never written".
    if (stop !== undefined && sentBefore === 0) {
      this.host.settle(log, record, 'dispatched', {
        to: 'rejected',
        code: 'SUPERSEDED',
        faultCode: null,
        observed: null,
        detail: `superseded by the stop ${stop.key}, accepted after it; ${unsent}, so nothing was written`,
      });
      return;
    }
    if (sentBefore > 0) {
      const stopped = stop === undefined ? '' : `; the stop ${stop.key} was accepted after it`;
      this.host.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: null,
        detail: `${unsent}, and it was already dispatched twice (its first write was not applied either)${stopped}, so it is not sent again; nothing was applied`,
      });
      return;
    }
    if (this.settleAtCap(record, seq, log)) return;
    this.host.note(
      record,
      `taken up: ${unsent} (the history says so), so it is handled as a command not yet written: a fresh read decides`,
    );
    await this.carryOutRounds(lane, record, { from: 'dispatched', seq, unsent: cause }, log);
  }

  /**
   * carryOut, and again each time its write finds no connection to the controller (the
   * connection dropped just before, its reconnect not yet due; or the connect failed): it never
   * left the process, so nothing physical happened, and the command rides out the reconnect
   * within its deadline, as often as the connection drops between its fresh read and its write.
   * The history says so first (noConnectionLine: a stop, an operator's resolve or a later life
   * go by it, as by a write withdrawn unsent); then it goes round again as a command not yet
   * written — a fresh read once the controller answers (I4: the valve may have moved
   * meanwhile), the state-machine check, and its write as a re-dispatch, journaled before it
   * goes out (I1). Past its deadline it ends `failed` `DEVICE_UNREACHABLE`, nothing applied; so
   * too at MAX_DISPATCHES. A write whose request may have left (a timeout, a reset after
   * sending) is not this: its outcome is unknown, and readback settles it (confirmation.ts).
   */
  private async carryOutRounds(
    lane: Lane,
    record: CommandRecord,
    course: NotWritten,
    log: Logger,
  ): Promise<void> {
    let unsent = await this.carryOut(lane, record, course, log);
    while (unsent !== null) {
      const { dispatched, error } = unsent;
      const seq = requireSeq(dispatched);
      log.warn(
        { seq, err: error, attempts: dispatched.attempts },
        'write not sent: no connection to the controller; the command waits for it and goes round again',
      );
      this.host.note(dispatched, noConnectionLine(seq, error));
      if (this.settleAtCap(dispatched, seq, log)) return;
      unsent = await this.carryOut(
        lane,
        dispatched,
        { from: 'dispatched', seq, unsent: 'no-connection' },
        log,
      );
    }
  }

  /**
   * Ends a command none of whose writes was sent once it has been dispatched MAX_DISPATCHES
   * times: `failed` `DEVICE_UNREACHABLE`, nothing applied. True when it did.
   */
  private settleAtCap(record: CommandRecord, seq: number, log: Logger): boolean {
    if (record.attempts < MAX_DISPATCHES) return false;
    this.host.settle(log, record, 'dispatched', {
      to: 'failed',
      code: 'DEVICE_UNREACHABLE',
      faultCode: null,
      observed: null,
      detail: `the write never reached the controller: the command was dispatched ${record.attempts} times (sequence number ${seq}) and none of its writes was sent (no connection to the controller, or withdrawn, as its history says), so it is not dispatched again (at most ${MAX_DISPATCHES}); nothing was applied`,
    });
    return true;
  }

  /**
   * The course of a command not yet written: `accepted`, or `dispatched` with no write ever
   * sent (`seq`: takeUpUnsent, carryOutRounds). Each outcome that ends it here says nothing was
   * written. Returns the dispatched record and the driver's words when its write found no
   * connection to the controller (carryOutRounds goes round again); otherwise null.
   */
  private async carryOut(
    lane: Lane,
    record: CommandRecord,
    course: NotWritten,
    log: Logger,
  ): Promise<{ readonly dispatched: CommandRecord; readonly error: string } | null> {
    const { clock } = this.host;
    const { from } = course;
    // The moment the command is taken up: a no-op is decided on an image from no earlier.
    const takenUpMono = clock.elapsed();
    if (this.rejectIfStale(record, null, course, log)) return null;
    // The state-machine check runs against a fresh read, never against a cached mirror.
    const read = await this.reads.readUntil(
      lane,
      () => this.host.deadlineNow(record) >= record.deadline,
      clock.elapsed(),
      log,
    );
    if (aborted(lane)) return null;
    if (read.readback === null) {
      this.host.settle(log, record, from, {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: null,
        detail:
          course.from === 'dispatched' && course.unsent === 'no-connection'
            ? `the write never reached the controller: its write (sequence number ${course.seq}) found no connection to the controller, and none could be had to go round again before its deadline ${new Date(record.deadline).toISOString()}; nothing was applied (${read.lastError ?? 'no answer'})`
            : `no readback before the deadline; nothing was written (${read.lastError ?? 'no answer'})`,
      });
      return null;
    }
    // The device's previous write may still be taken (its command ended with its fate open):
    // decided on an image without it, this command would be undone by it.
    const settled = await this.afterPreviousWrite(lane, record, read.readback, from, log);
    if (settled === null) return null;
    let before = settled.readback;
    let decision = settled.stop ?? this.decideFor(lane, record, before);
    if (decision.kind === 'noop') {
      // I2: not on a frozen image (no-op.ts); a newer image is decided on afresh.
      const image = await this.noOp.freshImage(lane, before, takenUpMono, log);
      if (image.kind === 'aborted') return null;
      if (image.kind === 'stale') {
        this.noOp.settleStale(lane, record, image, from, log);
        return null;
      }
      if (image.readback !== before) {
        before = image.readback;
        decision = this.decideFor(lane, record, before);
      }
    }
    const expect: Expectation = { confirm: [], position: record.position };
    switch (decision.kind) {
      case 'reject':
        this.host.settle(log, record, from, {
          to: 'rejected',
          code: decision.code,
          faultCode: decision.faultCode,
          observed: observe(before),
          detail:
            decision.code === 'LOCAL_MODE'
              ? `the device is in ${before.state}; remote commands are not taken; nothing was written`
              : `${record.action} is not a legal transition from ${before.state}; nothing was written`,
        });
        return null;
      case 'noop':
        await this.noOp.confirm(
          lane,
          record,
          before,
          { ...expect, confirm: decision.confirm },
          from,
          log,
        );
        return null;
      case 'write': {
        // Measured before the dispatch, so that readbacks can be placed in time (SPEC §6).
        const held = lane.skew;
        await this.reads.ensureSkew(lane, log);
        if (aborted(lane)) return null;
        // A controller clock flagged off on an estimate taken earlier is measured again before
        // a command is refused for it: it may have been set right since, and a clock step must
        // cause no false failure (SPEC §6). Only refused commands pay for the extra read.
        if (lane.clockOff !== null && held !== null && lane.skew === held) {
          await this.reads.measureSkew(lane, log);
          if (aborted(lane)) return null;
        }
        // I3: freshness again in the same step as the dispatch, with no wait in between: the
        // skew read above may have taken up to a request timeout.
        if (this.rejectIfStale(record, before, course, log)) return null;
        // SPEC §6: the clocks the command's judgement rests on (gateway sync, controller skew).
        if (this.rejectIfUnsynced(lane, record, before, from, log)) return null;
        // A controller that echoes the number already would ignore the write as a repeat, and
        // its echo would look like this command's (sequence.ts).
        if (course.from === 'dispatched' && before.seq === course.seq) {
          this.host.settle(log, record, from, {
            to: 'failed',
            code: 'READBACK_MISMATCH',
            faultCode: null,
            observed: observe(before),
            detail: `the controller already echoes sequence number ${course.seq}, which this command never sent (another master's command): a write of it would be ignored as a repeat and could not be told apart, so it is not written; nothing was written`,
          });
          return null;
        }
        // I5/I1: the dispatch (with its sequence number) is durable before the write is sent.
        const dispatched =
          course.from === 'accepted'
            ? this.host.journal.markDispatched(
                record,
                clock.now(),
                observe(before),
                PIPELINE,
                (last, open) => allocateSeq(last, before.seq, open),
                clockNote(this.host.clockPolicy, lane),
              )
            : this.host.journal.markRedispatched(
                record,
                clock.now(),
                course.unsent === 'withdrawn'
                  ? `the ${latestWrite(record)} write (sequence number ${course.seq}) was withdrawn before it was sent, so it was never applied; ${DECIDED_AGAIN} (${before.state}) and written now`
                  : `the ${latestWrite(record)} write (sequence number ${course.seq}) found no connection to the controller and was not sent, so it was never applied; the controller answers again: ${DECIDED_AGAIN} (${before.state}) and written now`,
                PIPELINE,
                observe(before),
              );
        this.host.dispatched(dispatched);
        // Group commit: the dispatch shares its fsync with other lanes' commits; the write
        // waits for it. A failed sync leaves the command dispatched and unwritten: the sweep
        // takes it up and settles it by reading the controller.
        try {
          await this.host.journal.durable();
        } catch (error) {
          log.error(
            { err: error, seq: dispatched.seq },
            'journal sync failed: the command is not written',
          );
          if (dispatched.seq !== null) lane.withheld.set(refId(dispatched), dispatched.seq);
          return null;
        }
        // The barrier may have taken long (a slow or stalled disk): freshness and the command's
        // state were checked before it.
        if (this.notToBeWritten(lane, dispatched, log)) return null;
        log.info({ seq: dispatched.seq, from: before.state }, 'command dispatched');
        const unsent = await this.confirmation.writeAndConfirm(
          lane,
          dispatched,
          { before, expect: { ...expect, confirm: decision.confirm } },
          log,
          course.from === 'dispatched' ? course.unsent : null,
        );
        return unsent === null ? null : { dispatched, error: unsent.noConnection };
      }
    }
  }

  /**
   * `first`, or the first later readback, on which the command may be decided: one that shows
   * the device's previous write taken, or a readback after which it can no longer be
   * (previous-write.ts). That write belongs to a command that ended with its fate open — most
   * often an operator's resolve while the controller held it — and the controller takes writes
   * in arrival order: a close decided on CLOSED while an acknowledged open waits in the
   * controller was confirmed a no-op, and the open was taken 44 ms later (I2). Waiting for the
   * write, rather than deciding on the state it leads to, decides on what the controller did
   * (the write may be taken, refused, or never: a PLC with one command register keeps only the
   * last write), with the state machine's check on it (I4). The wait is bounded by the write's
   * own bound and by the command's deadline: past that, it ends `rejected` `STALE_COMMAND`,
   * never written. A stop does not wait for an acknowledged write: it is decided on the state
   * that write leads to (`stop`; previous-write.ts, stopAfterPending). Null when the command is
   * settled or its handling aborted.
   */
  private async afterPreviousWrite(
    lane: Lane,
    record: CommandRecord,
    first: TimedReadback,
    from: OpenState,
    log: Logger,
  ): Promise<{ readonly readback: TimedReadback; readonly stop?: Decision } | null> {
    const { clock, journal } = this.host;
    const { profile } = lane.binding;
    let readback = first;
    let said = false;
    for (;;) {
      const pending = previousWritePending(
        journal,
        lane,
        record,
        readback,
        this.reads.usableSkew(lane),
        clock.elapsed(),
      );
      if (pending === null) return { readback };
      const stop =
        record.action === 'stop'
          ? stopAfterPending(profile, pending, readback, decide(profile, readback.state, 'stop'))
          : null;
      if (stop?.kind === 'write') {
        log.warn(
          { previous: pending.command.key, seq: pending.write.seq },
          "stop decided on the state the device's previous write leads to",
        );
        this.host.note(record, stopAfterPendingNote(pending));
        return { readback, stop };
      }
      if (!said) {
        said = true;
        log.warn(
          { previous: pending.command.key, seq: pending.write.seq, acked: pending.write.acked },
          "waiting for the device's previous write to be taken before deciding",
        );
        this.host.note(
          record,
          `not decided yet: ${pending.reason}; a decision on the image before it (${readback.state}) would be undone by it, so the command waits for a readback that shows it taken`,
        );
      }
      const now = this.host.deadlineNow(record);
      if (now >= record.deadline) {
        this.host.settle(log, record, from, {
          to: 'rejected',
          code: 'STALE_COMMAND',
          faultCode: null,
          observed: observe(readback),
          detail: `deadline ${new Date(record.deadline).toISOString()} passed ${Math.round(now - record.deadline)} ms ago while the command waited for the device's previous write: ${pending.reason}; nothing was written`,
        });
        return null;
      }
      await clock.sleep(profile.timing.pollIntervalMs, lane.signal);
      if (aborted(lane)) return null;
      readback = (await this.reads.tryRead(lane, log)) ?? readback;
    }
  }

  /**
   * The state-machine decision on a fresh read. A stop that preempted a written command
   * decides on what the controller will do (preemption.ts, stopOverPreempted).
   */
  private decideFor(lane: Lane, record: CommandRecord, before: TimedReadback): Decision {
    const actual = decide(lane.binding.profile, before.state, record.action);
    return stopOverPreempted(this.host.journal, lane, record, before, actual);
  }

  /** Rejects a write the clock policy forbids: gateway unsynced, controller clock off (§6). */
  private rejectIfUnsynced(
    lane: Lane,
    record: CommandRecord,
    before: TimedReadback,
    from: OpenState,
    log: Logger,
  ): boolean {
    for (const verdict of [
      gatewayVerdict(this.host.clockPolicy, record),
      controllerVerdict(this.host.clockPolicy, lane),
    ]) {
      if (verdict.kind === 'warn') log.warn({ clock: verdict.state }, verdict.detail);
      if (verdict.kind !== 'reject') continue;
      this.host.settle(log, record, from, {
        to: 'rejected',
        code: 'CLOCK_SKEW',
        faultCode: null,
        observed: observe(before),
        detail: verdict.detail,
      });
      return true;
    }
    return false;
  }

  /**
   * After the dispatch's barrier, just before the write: true when the command must not be
   * written after all, and then it is settled truly. The barrier may take long (a slow or
   * stalled disk), and meanwhile:
   * - an operator may have resolved the command (lane.ts, settledMeanwhile): the journal says
   *   nothing was written, so nothing is;
   * - a stop may have preempted it: not yet written, it ends `rejected` `SUPERSEDED`, as the
   *   commands queued before the stop do (SPEC §2);
   * - its deadline may have passed (I3): it ends `rejected` `STALE_COMMAND`.
   */
  private notToBeWritten(lane: Lane, dispatched: CommandRecord, log: Logger): boolean {
    if (settledMeanwhile(this.host, lane, dispatched, log)) return true;
    const stop = lane.interrupted;
    if (aborted(lane) && stop !== null && refId(stop.target) === refId(dispatched)) {
      this.host.settle(log, dispatched, 'dispatched', {
        to: 'rejected',
        code: 'SUPERSEDED',
        faultCode: null,
        observed: dispatched.observedBefore,
        detail: `superseded by the stop ${stop.stop.key}, accepted while the dispatch was being made durable; nothing was written`,
      });
      return true;
    }
    // `now` may be a fraction of a millisecond (deadlineNow()): the detail says whole ones, as
    // freshnessDetail's does (lane.ts).
    const now = this.host.deadlineNow(dispatched);
    if (checkFreshness(dispatched, now, this.host.freshness) !== 'STALE_COMMAND') return false;
    this.host.settle(log, dispatched, 'dispatched', {
      to: 'rejected',
      code: 'STALE_COMMAND',
      faultCode: null,
      observed: dispatched.observedBefore,
      detail: `deadline ${new Date(dispatched.deadline).toISOString()} passed ${Math.round(now - dispatched.deadline)} ms ago, while the dispatch was being made durable; nothing was written`,
    });
    return true;
  }

  /**
   * Rejects the command when its deadline has passed or it lies too far in the future (I3). A
   * command going round again after its write found no connection (carryOutRounds) that is past
   * its deadline ends as its wait for the connection does: `failed` `DEVICE_UNREACHABLE`.
   */
  private rejectIfStale(
    record: CommandRecord,
    before: TimedReadback | null,
    course: NotWritten,
    log: Logger,
  ): boolean {
    const { from } = course;
    const now = this.host.deadlineNow(record);
    const fresh = checkFreshness(record, now, this.host.freshness);
    if (fresh === 'FRESH') return false;
    if (
      fresh === 'STALE_COMMAND' &&
      course.from === 'dispatched' &&
      course.unsent === 'no-connection'
    ) {
      this.host.settle(log, record, from, {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: before === null ? null : observe(before),
        detail: `the write never reached the controller: its write (sequence number ${course.seq}) found no connection to the controller, and its deadline ${new Date(record.deadline).toISOString()} passed ${Math.round(now - record.deadline)} ms ago while the command went round again; nothing was applied`,
      });
      return true;
    }
    this.host.settle(log, record, from, {
      to: 'rejected',
      code: fresh,
      faultCode: null,
      observed: before === null ? null : observe(before),
      detail: freshnessDetail(fresh, record, now, this.host.freshness),
    });
    return true;
  }
}

/**
 * A command not yet written: `accepted`, or `dispatched` with its write (`seq`) never sent —
 * withdrawn before it was sent, or refused for want of a connection (`unsent`) — whose write
 * goes out as its second dispatch.
 */
type NotWritten =
  | { readonly from: 'accepted' }
  | { readonly from: 'dispatched'; readonly seq: number; readonly unsent: UnsentCause };

/**
 * "first" for a command dispatched once, "latest" after: the write a re-dispatch follows. Its
 * history has the words of each (the dispatch and re-dispatch lines before it).
 */
function latestWrite(record: CommandRecord): string {
  return record.attempts < 2 ? 'first' : 'latest';
}

/** A function, not a property read: the flag changes across awaits (and narrowing forgets). */
function aborted(lane: Lane): boolean {
  return lane.signal.aborted;
}
