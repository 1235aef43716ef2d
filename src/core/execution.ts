import { clockNote } from './clock-policy.js';
import { requireSeq, type NoConnection } from './command-writes.js';
import { ConfirmationLoop } from './confirmation.js';
import { DeviceReads } from './device-reads.js';
import { MAX_DISPATCHES, type CommandRecord, type JournalEvent } from './journal.js';
import {
  PIPELINE,
  refId,
  withheldUnsent,
  type ExecutionHost,
  type Lane,
  type Outcome,
} from './lane.js';
import type { Logger } from './logger.js';
import { latestWriteWithheld } from './open-commands.js';
import { stopOverPreempted } from './preemption.js';
import { observe, type Expectation } from './readback.js';
import { NoOpCourse } from './no-op.js';
import { DECIDED_AGAIN } from './previous-write.js';
import { afterPreviousWrite } from './previous-write-wait.js';
import {
  latestUnsentCause,
  noConnectionLine,
  ordinal,
  provenThenUnsent,
  withheldNote,
  writesMaybeSent,
  type NeverSentCause,
} from './redispatch.js';
import { allocateSeq } from './sequence.js';
import type { TimedReadback } from './skew.js';
import { decide, type Decision } from './state-machine.js';
import { notToBeWritten, rejectIfStale, rejectIfUnsynced, type NotWritten } from './write-gates.js';

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
   * A write the take-up proves not applied and sends once more that finds no connection goes
   * round again (goRoundAgain). So too a command whose write was withheld (writeWithheld):
   * nothing of it left the gateway, and settled by readback it waited for a write that never
   * was, ending "unknown" whenever the device moved meanwhile.
   */
  async takeUpDispatched(lane: Lane, record: CommandRecord, log: Logger): Promise<void> {
    const history = record.seq === null ? null : this.host.journal.history(record);
    const cause =
      record.seq === null || history === null
        ? null
        : (latestUnsentCause(history, record.seq) ??
          this.writeWithheld(lane, record, record.seq, history));
    if (record.seq === null || cause === null) {
      const unsent = await this.confirmation.takeUp(lane, record, log);
      if (unsent !== null) await this.goRoundAgain(lane, unsent, log);
      return;
    }
    await this.takeUpUnsent(lane, record, record.seq, cause, log);
  }

  /**
   * 'withheld' for a command whose latest write was withheld, never sent: its dispatch's
   * barrier failed in this process, which has handed no write of it to the driver since
   * (Lane.withheld), or its history's take-up says so (latestWriteWithheld: a line of this life
   * or an earlier one, with no dispatch after it) and this process knows no write of it (I1) —
   * and none of its writes before left the gateway either (writesMaybeSent: a write withheld
   * whose take-up said so is not counted), and, for a stop, no stop was accepted after it. Such
   * a command has had no physical effect, and this process knows it: it is decided again on a
   * fresh read and written, within its deadline (takeUpUnsent), as a write withdrawn before it
   * was sent is — or, a stop accepted after it, superseded (SPEC §2: never written). Settled by
   * readback instead, it waited for a write that never was: a readback proves a write not
   * applied only while the device rests, so with the valve moved meanwhile (another master's
   * command) a stop was never written while the valve travelled on, and an open ended
   * READBACK_TIMEOUT "whether the write was applied is unknown". Otherwise null, and the command
   * is settled by readback (take-up.ts): one with a write before that may have left, and a stop
   * with a stop after it, which goes first and by which the withheld one is judged (INTERRUPTED
   * when the controller took it).
   */
  private writeWithheld(
    lane: Lane,
    record: CommandRecord,
    seq: number,
    history: readonly JournalEvent[],
  ): 'withheld' | null {
    const last = lane.lastWrite;
    const known =
      last !== null && last.scope === record.scope && last.key === record.key && last.seq === seq;
    const withheld = withheldUnsent(lane, record) || (!known && latestWriteWithheld(history, seq));
    if (!withheld) return null;
    // A write of it before that may have left keeps it on readback — unless that one was proven
    // not applied and every write since never sent, this one withheld (provenThenUnsent): it
    // goes round again (takeUpUnsent), where readback counted this write as a second that may
    // have left and ended it "already dispatched twice", never written.
    if (
      record.attempts > 1 &&
      writesMaybeSent(history, seq, false) > 0 &&
      provenThenUnsent(history, seq, true) === null
    ) {
      return null;
    }
    if (record.action === 'stop' && this.host.journal.stopsAfter(record, 1).length > 0) {
      return null;
    }
    return 'withheld';
  }

  async handleAccepted(lane: Lane, record: CommandRecord, log: Logger): Promise<void> {
    await this.carryOutRounds(lane, record, { from: 'accepted' }, log);
  }

  /**
   * A dispatched command whose latest write was never sent (takeUpDispatched). When every
   * earlier write of it was never sent either (writesMaybeSent: refused for want of a
   * connection, withdrawn, withheld), nothing of it ever left the gateway: a stop that came after it
   * supersedes it (SPEC §2: never written), and otherwise it takes the course of a command not
   * yet written — freshness (I3), a fresh read and the state-machine check (I4), the clock
   * policy — and its write, with the sequence number it was given, is journaled as a
   * re-dispatch before it goes out (I1: a later life then knows it may have been sent). A
   * command with an earlier write that may have gone out is not written again (redispatch.ts:
   * one re-dispatch of a write that may have left), nor one at MAX_DISPATCHES — unless its
   * history proves that write proven not applied and every write since never sent, refused for
   * want of a connection or withdrawn (a shutdown) (provenThenUnsent), with no stop after it: it
   * then goes round as on the live path (goRoundAgain), its next write the second that may leave
   * the gateway.
   */
  private async takeUpUnsent(
    lane: Lane,
    record: CommandRecord,
    seq: number,
    cause: NeverSentCause,
    log: Logger,
  ): Promise<void> {
    const unsent =
      cause === 'withdrawn'
        ? `its write (sequence number ${seq}) was withdrawn before it was sent`
        : cause === 'withheld'
          ? `its write (sequence number ${seq}) was withheld, never sent: its dispatch could not be made durable`
          : `its write (sequence number ${seq}) found no connection to the controller and was not sent`;
    const stop = this.host.journal.stopsAfter(record, 1)[0];
    // The writes before this one that may have left the gateway: none for a first write, nor
    // for one whose earlier writes all found no connection (or were withdrawn).
    const history = record.attempts < 2 ? [] : this.host.journal.history(record);
    const sentBefore = record.attempts < 2 ? 0 : writesMaybeSent(history, seq, false);
    log.warn(
      { seq, cause, sentBefore },
      sentBefore === 0
        ? 'taken up: its write was never sent; not yet written'
        : 'taken up: its write was never sent; a write of it before may have left the gateway',
    );
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
    // The dispatch whose write was sent and proven not applied, every write since never sent
    // (the history proves it); not always the first (earlier ones refused unsent).
    const proven = sentBefore === 1 ? provenThenUnsent(history, seq, cause === 'withheld') : null;
    // Its one write that may have left was proven not applied and every write since was never
    // sent — found no connection, or withdrawn as the daemon stopped: it goes round as on the
    // live path (goRoundAgain), the next write the second that may leave the gateway (I1),
    // within its deadline (I3).
    if (proven !== null && stop === undefined) {
      if (this.settleAtCap(record, seq, proven, log)) return;
      this.host.note(
        record,
        cause === 'withheld'
          ? // A withheld line (withheldLine), which a later life goes by as by the first.
            withheldNote(seq, withheldUnsent(lane, record) ? true : 'by an earlier life', {
              proven,
            })
          : `taken up: ${unsent}, after its ${ordinal(proven)} write was sent and proven not applied (the history says both), so it goes round again: a fresh read decides`,
      );
      await this.carryOutRounds(
        lane,
        record,
        { from: 'dispatched', seq, unsent: cause, proven },
        log,
      );
      return;
    }
    if (sentBefore > 0) {
      const stopped = stop === undefined ? '' : `; the stop ${stop.key} was accepted after it`;
      // What its history says of its writes before: the one proven not applied, or how many
      // may have left the gateway (a write with no line saying it was never sent counts as one
      // that may have: a line the journal failed to take proves nothing).
      const before =
        proven !== null
          ? `its ${ordinal(proven)} write was sent and proven not applied`
          : `${sentBefore === 1 ? 'a write of it before this one' : `${sentBefore} writes of it before this one`} may have left the gateway, as its history says`;
      this.host.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: null,
        // Nothing was applied when the history proves the one write that may have left not
        // applied; otherwise only this write is known unapplied.
        detail: `${unsent}, and it was already dispatched twice (${before})${stopped}, so it is not sent again; ${proven !== null ? 'nothing was applied' : 'nothing of this write was applied'}`,
      });
      return;
    }
    if (this.settleAtCap(record, seq, null, log)) return;
    this.host.note(
      record,
      cause === 'withheld'
        ? // Its own words, which a later life goes by (latestWriteWithheld): on disk before the
          // re-dispatch (group commit), and the line of this life's memory.
          withheldNote(
            seq,
            withheldUnsent(lane, record) ? true : 'by an earlier life',
            'decided again',
            record.action,
          )
        : `taken up: ${unsent} (the history says so), so it is handled as a command not yet written: a fresh read decides`,
    );
    await this.carryOutRounds(
      lane,
      record,
      { from: 'dispatched', seq, unsent: cause, proven: null },
      log,
    );
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
   * sending) is not this: its outcome is unknown, and readback settles it (confirmation.ts) —
   * and when readback proves it not applied and the write sent once more finds no connection,
   * the command goes round again the same way (goRoundAgain).
   */
  private async carryOutRounds(
    lane: Lane,
    record: CommandRecord,
    course: NotWritten,
    log: Logger,
  ): Promise<void> {
    const unsent = await this.carryOut(lane, record, course, log);
    if (unsent !== null) await this.goRoundAgain(lane, unsent, log);
  }

  /**
   * The rounds after a write refused unsent for want of a connection (carryOutRounds). The
   * refused write may follow one that was sent and proven not applied (readback-confirmation.ts,
   * notTaken: `proven`, its dispatch): that one can no longer land — the proof is of an image produced
   * past its guard — and the refused one never left, so a write now is the second of the two
   * that may ever leave the gateway (redispatch.ts), decided on a fresh read like any round
   * (I1, I4); were it lost too, readback settles it and it is not sent again.
   */
  private async goRoundAgain(lane: Lane, first: NoConnection, log: Logger): Promise<void> {
    let unsent: NoConnection | null = first;
    while (unsent !== null) {
      const { dispatched, error, proven } = unsent;
      const seq = requireSeq(dispatched);
      log.warn(
        { seq, err: error, attempts: dispatched.attempts },
        'write not sent: no connection to the controller; the command waits for it and goes round again',
      );
      this.host.note(dispatched, noConnectionLine(seq, error));
      if (this.settleAtCap(dispatched, seq, proven, log)) return;
      unsent = await this.carryOut(
        lane,
        dispatched,
        { from: 'dispatched', seq, unsent: 'no-connection', proven },
        log,
      );
    }
  }

  /**
   * Ends a command none of whose writes was sent (or only one, `proven` its dispatch, proven not
   * applied) once it has been dispatched MAX_DISPATCHES times: `failed` `DEVICE_UNREACHABLE`,
   * nothing applied. True when it did.
   */
  private settleAtCap(
    record: CommandRecord,
    seq: number,
    proven: number | null,
    log: Logger,
  ): boolean {
    if (record.attempts < MAX_DISPATCHES) return false;
    const sent =
      proven === null
        ? 'none of its writes was sent'
        : `its ${ordinal(proven)} write was sent and proven not applied, and no other was sent`;
    this.host.settle(log, record, 'dispatched', {
      to: 'failed',
      code: 'DEVICE_UNREACHABLE',
      faultCode: null,
      observed: null,
      detail: `the write never reached the controller: the command was dispatched ${record.attempts} times (sequence number ${seq}) and ${sent} (no connection to the controller, withdrawn, or withheld when its dispatch could not be made durable, as its history says), so it is not dispatched again (at most ${MAX_DISPATCHES}); nothing was applied`,
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
  ): Promise<NoConnection | null> {
    const { clock } = this.host;
    const { from } = course;
    // Going round after a write that was sent (proven not applied): not a command never
    // written, so none of its ends here is `rejected` (sentBeforeHost).
    const host =
      course.from === 'dispatched' && course.proven !== null
        ? sentBeforeHost(this.host, course.seq, course.proven)
        : this.host;
    // The moment the command is taken up: a no-op is decided on an image from no earlier.
    const takenUpMono = clock.elapsed();
    if (rejectIfStale(host, record, null, course, log)) return null;
    // The state-machine check runs against a fresh read, never against a cached mirror.
    const read = await this.reads.readUntil(
      lane,
      () => this.host.deadlineNow(record) >= record.deadline,
      clock.elapsed(),
      log,
    );
    if (aborted(lane)) return null;
    if (
      read.readback === null &&
      read.unknownState !== null &&
      (course.from === 'accepted' || (course.unsent !== 'no-connection' && course.proven === null))
    ) {
      // The controller answers, with a state the profile does not know: not unreachable, and
      // never acted on (docs/device-profiles.md, "States as bits").
      host.settle(log, record, from, {
        to: 'failed',
        code: 'READBACK_TIMEOUT',
        faultCode: null,
        observed: null,
        detail: `no readback the profile can read before the deadline: the controller reports a state it does not know (${read.unknownState}), which is never acted on; nothing was written`,
      });
      return null;
    }
    if (read.readback === null) {
      const proven =
        course.from === 'dispatched' && course.proven !== null
          ? `its ${ordinal(course.proven)} write was sent and proven not applied, and `
          : null;
      host.settle(log, record, from, {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: null,
        detail:
          course.from === 'dispatched' && course.unsent === 'no-connection'
            ? `the write never reached the controller: ${proven ?? ''}its write (sequence number ${course.seq}) found no connection to the controller, and none could be had to go round again before its deadline ${new Date(record.deadline).toISOString()}; nothing was applied (${read.lastError ?? 'no answer'})`
            : course.from === 'dispatched' && proven !== null
              ? // Withdrawn as the daemon stopped, after a write sent and proven not applied: a
                // write of it went out, so not "nothing was written".
                `the write never reached the controller: ${proven}its write (sequence number ${course.seq}) was withdrawn before it was sent, and no readback came to go round again before its deadline ${new Date(record.deadline).toISOString()}; nothing was applied (${read.lastError ?? 'no answer'})`
              : `no readback before the deadline; nothing was written (${read.lastError ?? 'no answer'})`,
      });
      return null;
    }
    // The device's previous write may still be taken (its command ended with its fate open):
    // decided on an image without it, this command would be undone by it.
    const settled = await afterPreviousWrite(
      host,
      this.reads,
      lane,
      record,
      read.readback,
      from,
      log,
    );
    if (settled === null) return null;
    let before = settled.readback;
    let decision = settled.stop ?? this.decideFor(lane, record, before);
    // The no-op's ends say what was written: through `host`, as every end here.
    const noOp = host === this.host ? this.noOp : new NoOpCourse(host, this.reads);
    if (decision.kind === 'noop') {
      // I2: not on a frozen image (no-op.ts); a newer image is decided on afresh.
      const image = await noOp.freshImage(lane, before, takenUpMono, log);
      if (image.kind === 'aborted') return null;
      if (image.kind === 'stale') {
        noOp.settleStale(lane, record, image, from, log);
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
        host.settle(log, record, from, {
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
        await noOp.confirm(
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
        if (rejectIfStale(host, record, before, course, log)) return null;
        // SPEC §6: the clocks the command's judgement rests on (gateway sync, controller skew).
        if (rejectIfUnsynced(host, lane, record, before, from, log)) return null;
        // A controller that echoes the number already would ignore the write as a repeat, and
        // its echo would look like this command's (sequence.ts).
        if (course.from === 'dispatched' && before.seq === course.seq) {
          // After a write proven not applied (`proven`), the number is the one that write
          // carried: it can no longer be taken (its proof is of an image past its guard), and
          // no write since left the gateway, so the echo is still another master's.
          const carried =
            course.proven !== null
              ? `which this command's ${ordinal(course.proven)} write carried, proven not applied (it can no longer be taken), and no write of it was sent since (another master's command)`
              : "which this command never sent (another master's command)";
          host.settle(log, record, from, {
            to: 'failed',
            code: 'READBACK_MISMATCH',
            faultCode: null,
            observed: observe(before),
            detail: `the controller already echoes sequence number ${course.seq}, ${carried}: a write of it would be ignored as a repeat and could not be told apart, so it is not written; nothing was written`,
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
                (last, open) => allocateSeq(last, before.seq, open, lane.formerSeqs),
                clockNote(this.host.clockPolicy, lane),
              )
            : this.host.journal.markRedispatched(
                record,
                clock.now(),
                course.unsent === 'withdrawn'
                  ? `the ${latestWrite(record)} write (sequence number ${course.seq}) was withdrawn before it was sent, so it was never applied; ${DECIDED_AGAIN} (${before.state}) and written now`
                  : course.unsent === 'withheld'
                    ? `the ${latestWrite(record)} write (sequence number ${course.seq}) was withheld when its dispatch could not be made durable, so it was never sent; ${DECIDED_AGAIN} (${before.state}) and written now`
                    : `the ${latestWrite(record)} write (sequence number ${course.seq}) found no connection to the controller and was not sent, so it was never applied; the controller answers again: ${DECIDED_AGAIN} (${before.state}) and written now`,
                PIPELINE,
                observe(before),
              );
        // The device's numbers go on from its first dispatch's (Lane.formerSeqs).
        if (course.from === 'accepted') lane.formerSeqs = null;
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
        if (notToBeWritten(host, lane, dispatched, log)) return null;
        log.info({ seq: dispatched.seq, from: before.state }, 'command dispatched');
        return this.confirmation.writeAndConfirm(
          lane,
          dispatched,
          { before, expect: { ...expect, confirm: decision.confirm } },
          log,
          course.from === 'dispatched' ? { cause: course.unsent, proven: course.proven } : null,
        );
      }
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
}

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

/** How an end says that nothing of the command was written (the gates', the no-op's). */
const NOTHING_WRITTEN = '; nothing was written';

/**
 * The host for a command going round again after a write of it that was sent and proven not
 * applied (its write sent once more found no connection: execution.ts, goRoundAgain). An end
 * that would reject it — stale, the state-machine check on the fresh read, the clock policy, a
 * stop — ends it `failed` `DEVICE_UNREACHABLE` instead, saying why: `rejected` says the command
 * was never written (SPEC §2), and a write of it went out. Nothing of it was applied either
 * way; the code it would have had and its words stay in the detail. Any other end that says
 * nothing was written (a no-op confirmed or failed, an echo of its number) says instead which
 * write of it was sent and proven not applied (`proven`, its dispatch: not always the first,
 * its earlier ones refused unsent), and that nothing was written since.
 */
function sentBeforeHost(host: ExecutionHost, seq: number, proven: number): ExecutionHost {
  const sent = `its ${ordinal(proven)} write (sequence number ${seq}) was sent and proven not applied`;
  const since = (detail: string): string =>
    detail.endsWith(NOTHING_WRITTEN)
      ? `${withoutNothingWritten(detail)}; ${sent}, and nothing was written since`
      : detail;
  return {
    ...host,
    settle: (log: Logger, record: CommandRecord, from, outcome: Outcome) =>
      host.settle(
        log,
        record,
        from,
        outcome.to !== 'rejected'
          ? { ...outcome, detail: since(outcome.detail) }
          : {
              to: 'failed',
              code: 'DEVICE_UNREACHABLE',
              faultCode: outcome.faultCode,
              observed: outcome.observed,
              detail: `the write never reached the controller: ${sent}, and it was not written again (${outcome.code}: ${withoutNothingWritten(outcome.detail)}); nothing was applied`,
            },
      ),
  };
}

/** A rejection's words without their "nothing was written": a write of it was sent. */
function withoutNothingWritten(detail: string): string {
  return detail.endsWith(NOTHING_WRITTEN) ? detail.slice(0, -NOTHING_WRITTEN.length) : detail;
}
