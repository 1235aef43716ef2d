import { sendWhileBusy, type AttemptOutcome, type WriteOutcome } from './busy-write.js';
import type { DeviceReads } from './device-reads.js';
import { DeviceRefusedError, WriteNotSentError } from './driver.js';
import type { CommandRecord, Observation } from './journal.js';
import {
  PIPELINE,
  refId,
  settledMeanwhile,
  withheldUnsent,
  type ExecutionHost,
  type Interruption,
  type Lane,
  type LastWrite,
} from './lane.js';
import type { Logger } from './logger.js';
import { latestWriteWithheld, takeUpNote } from './open-commands.js';
import type { DeviceProfile } from './profile.js';
import { stopOverPreempted } from './preemption.js';
import { stopTakenUpAfterPending, UNJUDGED_TAKE_UP } from './previous-write.js';
import { judgeWritten, observe, type Expectation } from './readback.js';
import { ReadbackPacer } from './readback-pacing.js';
import {
  imageOf,
  judgeRedispatch,
  localLine,
  localSeenIn,
  mayStillLand,
  unsentLine,
  type DeviceImage,
} from './redispatch.js';
import { POWER_UP_ECHO } from './sequence.js';
import type { TimedReadback } from './skew.js';
import { decide } from './state-machine.js';

/**
 * After the dispatch: the write, then readbacks until one taken after it confirms the command
 * (I2), the controller refuses it, or time runs out; at most one re-dispatch, only when the
 * first write is provably not applied (redispatch.ts). The same loop takes up a command found
 * `dispatched` with no live worker — after a crash or a journal stall — and settles it by
 * reading the controller, never by a blind re-write (I5). Every command it takes ends with a
 * true, specific outcome.
 */

interface WrittenContext {
  readonly before: DeviceImage;
  readonly expect: Expectation;
  /** The write being confirmed, as this process knows it. */
  write: LastWrite;
  /** That write was sent by an earlier life of the daemon: taken up at this one's start. */
  readonly earlierLife: boolean;
  /** This process withheld that write, unsent, when its dispatch's barrier failed (lane.ts). */
  readonly withheld?: boolean;
  /** Monotonic time at which confirmation gives up. */
  confirmByMono: number;
  readonly windowMs: number;
  /** Stops accepted after the command, as last looked up for an echo. */
  stops?: { readonly echo: number | null; readonly found: readonly CommandRecord[] };
  /**
   * A readback after the write showed the valve in LOCAL: the operator at the panel took it
   * after the command's read. The command is never written again (redispatch), also once the
   * valve is back in REMOTE: a write decided before the operator's hand would act after it.
   */
  localSeen?: boolean;
  /**
   * A readback after the write showed this command's echo: the controller took it. Should a
   * later one not show it (the controller restarted, its echo volatile and back to its power-up
   * value; another command taken), the write is never proven unapplied, nor sent again.
   */
  echoSeen?: boolean;
  /**
   * The key of a stop of ours the controller was seen taking while this command's write, its
   * outcome unknown, could still reach it: should it, it is taken after the stop.
   */
  stopTakenFirst?: string;
}

export class ConfirmationLoop {
  private readonly host: ExecutionHost;
  private readonly reads: DeviceReads;

  constructor(host: ExecutionHost, reads: DeviceReads) {
    this.host = host;
    this.reads = reads;
  }

  /** Sends the first write of a command just journaled `dispatched`, and confirms it. */
  async writeAndConfirm(
    lane: Lane,
    dispatched: CommandRecord,
    first: { readonly before: TimedReadback; readonly expect: Expectation },
    log: Logger,
  ): Promise<void> {
    const { profile } = lane.binding;
    const seq = requireSeq(dispatched);
    const write = this.beginWrite(lane, dispatched, seq);
    const outcome = await this.send(lane, dispatched, seq, write, log);
    // A second dispatch comes here only for a first write withdrawn before it was sent
    // (execution.ts, takeUpUnsent); one proven not applied by readback is sent by notTaken.
    if (dispatched.attempts > 1 && outcome.kind !== 'not-sent') {
      lane.writes.redispatches.withdrawn++;
    }
    if (outcome.kind === 'refused') {
      this.refused(dispatched, observe(first.before), outcome, log);
      return;
    }
    if (outcome.kind === 'not-sent' && outcome.reason === 'withdrawn') {
      this.withdrawn(lane, dispatched, observe(first.before), outcome.error, log);
      return;
    }
    if (outcome.kind === 'not-sent' && outcome.reason === 'no-connection') {
      // The driver never handed it to a socket: nothing was applied, whatever a readback shows
      // later (a controller that restarted meanwhile shows its power-up echo, which no readback
      // can tell from one that lost the write).
      this.host.settle(log, dispatched, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: observe(first.before),
        detail: `the write was never sent: no connection to the controller; nothing was applied (${outcome.error})`,
      });
      return;
    }
    if (outcome.kind === 'not-sent') {
      this.host.settle(log, dispatched, 'dispatched', {
        to: 'rejected',
        code: 'STALE_COMMAND',
        faultCode: null,
        observed: observe(first.before),
        detail: `deadline ${new Date(dispatched.deadline).toISOString()} passed before the write could be sent (${outcome.error})`,
      });
      return;
    }
    if (outcome.kind === 'unknown') {
      log.warn({ err: outcome.error, seq }, 'write outcome unknown; reading back');
    }
    const windowMs = profile.timing.confirmTimeoutMs;
    await this.confirm(
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
   * Takes up a `dispatched` command with no live worker. What this process remembers of its
   * write (a journal stall in this life) is used; after a restart the write's fate is unknown
   * from the moment this process took it up. It keeps reading for the longest of the confirm
   * timeout, the unreachable grace and the time to the deadline.
   */
  async takeUp(lane: Lane, record: CommandRecord, log: Logger): Promise<void> {
    const { clock } = this.host;
    const { profile } = lane.binding;
    const before = record.observedBefore;
    // A stop written over a preempted write that was not taken yet, or behind the device's
    // previous write (previous-write.ts), was dispatched on the state that write leads to, not
    // on the one it read (execution.ts): judged on the same decision.
    const decision =
      before === null
        ? null
        : stopTakenUpAfterPending(
            this.host.journal,
            profile,
            record,
            before,
            stopOverPreempted(
              this.host.journal,
              lane,
              record,
              before,
              decide(profile, before.state, record.action),
            ),
          );
    if (record.seq === null || before === null || decision?.kind !== 'write') {
      this.host.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'READBACK_TIMEOUT',
        faultCode: null,
        observed: null,
        detail: UNJUDGED_TAKE_UP,
      });
      return;
    }
    const nowMono = clock.elapsed();
    const remembered =
      lane.lastWrite !== null &&
      lane.lastWrite.key === record.key &&
      lane.lastWrite.scope === record.scope &&
      lane.lastWrite.seq === record.seq
        ? lane.lastWrite
        : null;
    const write: LastWrite = remembered ?? {
      scope: record.scope,
      key: record.key,
      seq: record.seq,
      // Sent by an earlier life of this process: before now, at the journaled wall time as well
      // as this process can place it.
      sentMono: Math.min(nowMono, (record.dispatchedAt ?? 0) - clock.now() + nowMono),
      acked: false,
      // Unknown from the take-up, or from the end of the request timeout after the earlier
      // life ended when the restart came sooner (Lane.earlierWriteUnknownSinceMono).
      unknownSinceMono: Math.max(nowMono, lane.earlierWriteUnknownSinceMono),
      epoch: null,
    };
    const history = this.host.journal.history(record);
    // Dispatched by this process, whose write it withheld (its barrier failed): no write of
    // it was sent, by this life or an earlier one. Judged as a write whose outcome is unknown
    // from now all the same (the memory only names it). So too when an earlier take-up in this
    // life stood a write in for it (`remembered`) and its second dispatch was withheld as well
    // (its barrier failed): taken up "again" with a write "outcome unknown", its history had a
    // write that never was (which a stop after a restart went by, waiting the guard for it).
    const withheldHere = withheldUnsent(lane, record);
    // Or by an earlier life, whose take-up said so before the process ended, and not dispatched
    // again since: its history says it never left the gateway, and "written by an earlier life"
    // would put a write that never was in its history (and count a restart's redispatch).
    const withheldBefore =
      remembered === null && !withheldHere && latestWriteWithheld(history, record.seq);
    const withheld = withheldHere || withheldBefore;
    if (!write.acked && write.unknownSinceMono === null) write.unknownSinceMono = nowMono;
    // A stand-in for a write never sent is no write: the device's last write is still the one
    // before it, which the controller may still take (a stop written at once behind a held
    // open, its own dispatch withheld). Kept with it, so that the next command waits for that
    // one (previous-write.ts): replaced, it was forgotten, and a close after the stop was
    // confirmed a no-op at CLOSED while the controller held the open (I2).
    if (withheld && write.behind === undefined) {
      const before = lane.lastWrite;
      write.behind =
        before === null || (before.scope === record.scope && before.key === record.key)
          ? (before?.behind ?? null)
          : before.behind !== undefined
            ? before.behind
            : before;
    }
    lane.lastWrite = write;
    this.host.note(
      record,
      takeUpNote(
        record.seq,
        remembered === null ? null : write,
        withheldBefore ? 'by an earlier life' : withheldHere,
      ),
    );
    const windowMs = Math.max(
      profile.timing.confirmTimeoutMs,
      lane.unreachableGraceMs,
      record.deadline - this.host.deadlineNow(record),
    );
    await this.confirm(
      lane,
      record,
      {
        before: imageOf(before),
        expect: { confirm: decision.confirm, position: record.position },
        write,
        earlierLife: remembered === null && !withheld,
        withheld,
        windowMs,
        confirmByMono: nowMono + windowMs,
        localSeen: localSeenIn(history, record.seq),
      },
      log,
      true,
    );
  }

  /** I2: polls until a post-write readback confirms, the controller refuses, or time runs out. */
  private async confirm(
    lane: Lane,
    initial: CommandRecord,
    ctx: WrittenContext,
    log: Logger,
    readAtOnce: boolean,
  ): Promise<void> {
    const { clock } = this.host;
    const { profile } = lane.binding;
    const seq = requireSeq(initial);
    let record = initial;
    let lastGood: TimedReadback | null = null;
    let lastReason = 'no readback after the write';
    let wrongSince: number | null = null;
    let localSince: number | null = null;
    // The controller was seen echoing this command outside LOCAL: it took it in REMOTE.
    let takenInRemote = false;
    // This stop was seen taken while the write of the command it preempted could still land.
    let stopTakenAt: TimedReadback | null = null;
    // Since when (monotonic) every readback of this stop has shown, in place of its echo, the
    // echo of the command it preempted, whose write's answer was lost (see 'not-taken').
    let lateEchoSince: number | null = null;
    // A command written from the fault state (a reset) seen out of it: the first such image.
    let leftFault: TimedReadback | null = null;
    // Readbacks are placed on the controller's scans where its image time says when they are
    // (readback-pacing.ts); the first follows an acknowledged write no sooner than the scan
    // that can take it, an unacknowledged one at once.
    const pacer = new ReadbackPacer(profile.timing, clock.elapsed());
    let pause = readAtOnce
      ? 0
      : ctx.write.acked
        ? pacer.first(
            clock.elapsed(),
            ctx.write.sentMono,
            imageTimeOf(ctx.before),
            this.reads.usableSkew(lane),
          )
        : profile.timing.pollIntervalMs;
    while (clock.elapsed() < ctx.confirmByMono) {
      if (pause > 0) {
        await clock.sleep(Math.min(pause, ctx.confirmByMono - clock.elapsed()), lane.signal);
      }
      if (aborted(lane)) return;
      const readback = await this.reads.tryRead(lane, log);
      pause = pacer.next(clock.elapsed(), readback, this.reads.usableSkew(lane));
      if (readback === null) continue;
      lastGood = readback;
      const verdict = judgeWritten({
        profile,
        readback,
        expect: ctx.expect,
        seq,
        writeSentMono: ctx.write.sentMono,
        skew: this.reads.usableSkew(lane),
      });
      if (verdict.kind !== 'local') localSince = null;
      if (verdict.kind !== 'not-taken') lateEchoSince = null;
      if (
        profile.controller.echoesSeq &&
        readback.seq === seq &&
        verdict.kind !== 'skew-contradicted'
      ) {
        ctx.echoSeen = true;
        if (readback.state !== profile.localState) takenInRemote = true;
      }
      switch (verdict.kind) {
        case 'confirmed': {
          const landing = this.preemptedMayLand(lane, record, readback);
          if (landing !== null) {
            // The preempted command's write may still come after this stop and undo it: the
            // stop is confirmed only once it no longer can (or the write it preempted is seen).
            stopTakenAt ??= readback;
            wrongSince = null;
            lastReason = landing;
            break;
          }
          if (
            ctx.before.state === profile.faultState &&
            !ofLaterScan(profile, leftFault, readback)
          ) {
            // A controller re-raises a fault whose cause persists (a broken position sensor)
            // at its next scan: one image out of FAULT after a reset proves nothing yet, and
            // confirming on it answered a reset "confirmed" or DEVICE_FAULT by the readback's
            // timing alone. An image of a later scan decides.
            leftFault ??= readback;
            wrongSince = null;
            lastReason = `the controller shows ${readback.state} after the ${record.action}; waiting for a later scan to show that the fault does not come back`;
            break;
          }
          this.host.settle(log, record, 'dispatched', {
            to: 'confirmed',
            code: 'OK',
            faultCode: null,
            observed: observe(readback),
            detail: `readback after the write shows ${readback.state}${
              ctx.stopTakenFirst === undefined
                ? ''
                : `; the controller took this command after the stop ${ctx.stopTakenFirst} (its write, whose answer was lost, reached the controller late), so the stop did not hold it`
            }`,
          });
          return;
        }
        case 'controller-rejected':
          this.host.settle(log, record, 'dispatched', {
            to: 'rejected',
            code: 'ILLEGAL_TRANSITION',
            faultCode: '0x88',
            observed: observe(readback),
            detail:
              profile.controller.refusal === 'fault'
                ? `the controller refused ${record.action} from ${ctx.before.state} (fault 0x88) and went to ${readback.state}, as it does with a refused command; a reset clears it`
                : `the controller refused ${record.action} from ${readback.state} (fault 0x88) and stays in it; the mirror resynchronises`,
          });
          // I4: the mirror was wrong; resynchronise it from a fresh read.
          await this.reads.tryRead(lane, log);
          return;
        case 'fault':
          if (!profile.controller.echoesSeq && ctx.before.state === profile.faultState) {
            // Written from the fault state (a reset), to a controller that echoes nothing: a
            // readback still showing the fault may come before the scan that takes the write,
            // and says nothing yet. As a wrong state, it must persist mismatchGraceMs (which
            // covers that scan) before it is the controller's answer.
            wrongSince ??= readback.requestedMono;
            lastReason = `the controller still shows ${readback.state}`;
            if (clock.elapsed() - wrongSince < profile.timing.mismatchGraceMs) break;
            this.host.settle(log, record, 'dispatched', {
              to: 'failed',
              code: 'DEVICE_FAULT',
              faultCode: verdict.faultCode,
              observed: observe(readback),
              detail: `the controller still shows ${readback.state}${verdict.faultCode === null ? '' : ` (fault ${verdict.faultCode})`} ${profile.timing.mismatchGraceMs} ms after the ${record.action} was written: it did not clear the fault (this controller echoes no sequence numbers; the wait covers the scan that takes a write)`,
            });
            return;
          }
          this.host.settle(log, record, 'dispatched', {
            to: 'failed',
            code: 'DEVICE_FAULT',
            faultCode: verdict.faultCode,
            observed: observe(readback),
            detail: `${faultLead(record, ctx.before.state === profile.faultState, leftFault)} ${readback.state}${verdict.faultCode === null ? '' : ` (fault ${verdict.faultCode})`}${
              leftFault !== null
                ? ' at a later scan: the cause of the fault persists'
                : ctx.before.state === profile.faultState
                  ? ': the fault did not clear, or came back at once'
                  : ''
            }${
              profile.controller.refusal === 'fault' && !profile.controller.echoesSeq
                ? `; this controller also goes to ${readback.state} when it refuses a command, and without an echo the two cannot be told apart`
                : ''
            }`,
          });
          return;
        case 'wrong-state': {
          if (!profile.controller.echoesSeq) {
            // No echo to show which command the controller took last: a stop of ours written
            // after this command, and a readback requested after it, is what ended the travel.
            const stop = this.laterStops(record, ctx, null, true).find(
              (r) => r.dispatchedAt !== null && r.dispatchedAt <= readback.requestedAt,
            );
            const landing = stop === undefined ? null : this.mayStillLand(lane, ctx, readback);
            if (stop !== undefined && landing !== null) {
              // The stop may have been taken first, and this command may still come after it.
              lastReason = `the stop ${stop.key} was written after this command, but ${landing}`;
              break;
            }
            if (stop !== undefined) {
              const at = readback.position === null ? '' : ` at ${readback.position} %`;
              this.host.settle(log, record, 'dispatched', {
                to: 'failed',
                code: 'INTERRUPTED',
                faultCode: null,
                observed: observe(readback),
                detail: `stopped by ${stop.key}${at}: the stop was written after this command and the controller shows ${readback.state} (it echoes no sequence numbers: the stop is known by its write)`,
              });
              return;
            }
          }
          wrongSince ??= readback.requestedMono;
          // A move that rests in a target state away from its setpoint: the positions say
          // what is wrong ("expected IDLE; … rests in IDLE" said nothing).
          const at =
            ctx.expect.position === null || readback.position === null
              ? ''
              : ` at ${readback.position} %`;
          lastReason =
            ctx.localSeen === true
              ? `the valve was switched to LOCAL after the command's read and rests in ${readback.state}${at} since`
              : `the controller took the command and rests in ${readback.state}${at}`;
          if (clock.elapsed() - wrongSince >= profile.timing.mismatchGraceMs) {
            this.host.settle(log, record, 'dispatched', {
              to: 'failed',
              code: 'READBACK_MISMATCH',
              faultCode: null,
              observed: observe(readback),
              detail: `expected ${expectedText(profile, ctx.expect)}; ${lastReason}${
                ctx.expect.position !== null && readback.position === null
                  ? ' (the controller gives no position)'
                  : ''
              }`,
            });
            return;
          }
          break;
        }
        case 'local': {
          if (ctx.localSeen !== true && verdict.echo !== 'this') {
            this.host.note(record, localLine(seq));
          }
          ctx.localSeen = true;
          wrongSince = null;
          if (verdict.echo === 'this') {
            // Taken, so ignored in LOCAL — or taken just before the switch.
            this.host.settle(log, record, 'dispatched', {
              to: 'failed',
              code: 'READBACK_MISMATCH',
              faultCode: null,
              observed: observe(readback),
              detail: localDetail(seq, ctx.before, readback, takenInRemote),
            });
            return;
          }
          if (verdict.echo === 'none') {
            // No echo: the LOCAL state must outlast mismatchGraceMs, which covers the scan that
            // takes a write, so that the write is taken (or ignored) before the verdict.
            localSince ??= readback.requestedMono;
            if (clock.elapsed() - localSince >= profile.timing.mismatchGraceMs) {
              this.host.settle(log, record, 'dispatched', {
                to: 'failed',
                code: 'READBACK_MISMATCH',
                faultCode: null,
                observed: observe(readback),
                detail: `the valve was switched to LOCAL after the command's read and still shows LOCAL ${profile.timing.mismatchGraceMs} ms after the ${record.action} was written; this controller echoes no sequence numbers, so whether it took the command before the switch and acted on it cannot be told; it is not written again`,
              });
              return;
            }
            lastReason = "the valve was switched to LOCAL after the command's read";
            break;
          }
          // Not taken yet: the controller may still take it (and, in LOCAL, ignore it); it is
          // never written again, so the wait ends with the echo or the confirm timeout.
          lastReason = `the valve was switched to LOCAL after the command's read and the controller has not taken the command (it does not echo sequence number ${seq}); it is not written again`;
          break;
        }
        case 'skew-contradicted':
          // The controller echoes this command with a source time before the write: its clock
          // stepped back (a restart, a manual set). Measure again before judging (SPEC §6).
          wrongSince = null;
          this.reads.invalidateSkew(
            lane,
            log,
            'a readback echoing this command predates its write',
          );
          await this.reads.ensureSkew(lane, log);
          lastReason = 'the controller clock stepped; measuring it again';
          break;
        case 'not-taken': {
          const preempted = landedLate(lane, readback.seq);
          const late = preempted?.write ?? null;
          // The preempted command's write, shown in this readback, as the details name it.
          const lateWrite =
            preempted === null || late === null
              ? null
              : `the write of ${preempted.target.key} (sequence number ${late.seq}), ${
                  preempted.earlierLife
                    ? 'sent before the daemon restarted (its answer unknown), which'
                    : 'whose answer had been lost and which'
                }`;
          if (stopTakenAt !== null && lateWrite !== null) {
            // The controller took this stop, then the preempted command's write, which had
            // been on its way (its answer lost): the stop did not hold. It is not written again
            // (I1): the operator's next stop is a new command.
            const at = readback.position === null ? '' : ` at ${readback.position} %`;
            this.host.settle(log, record, 'dispatched', {
              to: 'failed',
              code: 'READBACK_MISMATCH',
              faultCode: null,
              observed: observe(readback),
              detail: `the controller took the stop (it showed ${stopTakenAt.state}${stopTakenAt.position === null ? '' : ` at ${stopTakenAt.position} %`}), then ${lateWrite} reached it late: it shows ${readback.state}${at}; the stop did not hold, and it is not written again`,
            });
            return;
          }
          if (
            lateWrite !== null &&
            late !== null &&
            (!late.acked || preempted?.earlierLife === true) &&
            ctx.write.acked &&
            ctx.before.seq !== late.seq
          ) {
            // No readback has shown this stop's echo, and the controller shows the preempted
            // command's: that write, whose answer was lost, reached it after this stop's read
            // (its image before the write showed no such echo), and this stop, acknowledged,
            // is in the controller's hands. Had the late write come first, the controller
            // would take the stop at a later scan and show its echo; once the preempted one's
            // has stood for redispatchGuardMs it came after: the stop was overwritten or
            // undone. (The guard, not mismatchGraceMs: a controller whose handshake is busy
            // may hold the stop past a scan or two, and it would then be said not to hold
            // when it is about to.) Waiting out the confirm timeout said so only at its end,
            // while the valve travelled.
            lateEchoSince ??= readback.requestedMono;
            const shownMs = Math.round(clock.elapsed() - lateEchoSince);
            if (shownMs >= profile.timing.redispatchGuardMs) {
              this.host.settle(log, record, 'dispatched', {
                to: 'failed',
                code: 'READBACK_MISMATCH',
                faultCode: null,
                observed: observe(readback),
                detail: `the controller shows ${lateWrite} reached it after the stop was written, and has not shown the stop for ${shownMs} ms since: the stop did not hold (whether the controller took it first cannot be told), and it is not written again`,
              });
              return;
            }
            wrongSince = null;
            lastReason = `the controller shows ${lateWrite} reached it after the stop was written, and not the stop`;
            break;
          }
          lateEchoSince = null;
          wrongSince = null;
          const next = await this.notTaken(lane, record, ctx, readback, log);
          if (next.kind === 'settled') return;
          if (next.kind === 'redispatched') record = next.record;
          else lastReason = next.reason;
          break;
        }
        case 'pending':
          wrongSince = null;
          lastReason = verdict.reason;
          break;
      }
    }
    if (aborted(lane)) return;
    if (lastGood === null) {
      this.host.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: null,
        detail: `no readback after the write within ${ctx.windowMs} ms; the command's effect is unknown`,
      });
      return;
    }
    this.host.settle(log, record, 'dispatched', {
      to: 'failed',
      code: 'READBACK_TIMEOUT',
      faultCode: null,
      observed: observe(lastGood),
      detail: `not confirmed within ${ctx.windowMs} ms: ${lastReason}`,
    });
  }

  /** The controller does not echo this command: prove the write not applied, or wait. */
  private async notTaken(
    lane: Lane,
    record: CommandRecord,
    ctx: WrittenContext,
    readback: TimedReadback,
    log: Logger,
  ): Promise<
    | { readonly kind: 'settled' }
    | { readonly kind: 'redispatched'; readonly record: CommandRecord }
    | { readonly kind: 'waiting'; readonly reason: string }
  > {
    const { clock } = this.host;
    const seq = requireSeq(record);
    // Proof needs a skew measured on this connection (after a restart or reconnect, first).
    if (!ctx.write.acked && this.reads.usableSkew(lane) === null) {
      await this.reads.ensureSkew(lane, log);
    }
    const verdict = judgeRedispatch({
      profile: lane.binding.profile,
      seq,
      attempts: record.attempts,
      deadline: record.deadline,
      before: ctx.before,
      readback,
      skew: this.reads.usableSkew(lane),
      acked: ctx.write.acked,
      echoSeen: ctx.echoSeen === true,
      unknownSinceMono: ctx.write.unknownSinceMono ?? ctx.write.sentMono,
      nowWall: this.host.deadlineNow(record),
      sameConnection: ctx.write.epoch !== null && ctx.write.epoch === readback.epoch,
    });
    const prefix =
      ctx.echoSeen === true
        ? `the controller took sequence number ${seq} (a readback showed its echo) and no longer echoes it (it shows ${readback.seq ?? 'none'}${readback.seq === POWER_UP_ECHO ? ', its power-up value: it restarted since' : ''})`
        : `the controller never echoed sequence number ${seq}`;
    // A stop of ours that came after this command (SPEC §2): if the controller took it, this
    // command was interrupted; either way, it is never written again.
    const stops =
      readback.seq !== ctx.before.seq || verdict.kind === 'redispatch'
        ? this.laterStops(record, ctx, readback.seq)
        : [];
    const taken = stops.find((r) => r.seq !== null && r.seq === readback.seq);
    const landing = taken === undefined ? null : this.mayStillLand(lane, ctx, readback);
    if (taken !== undefined && landing !== null) {
      // The controller took the stop, but this command's write may still come after it (the
      // stop went out on the connection that replaced the one its answer was lost on): not
      // INTERRUPTED yet, or a write taken after the stop would go unsaid.
      ctx.stopTakenFirst = taken.key;
      return {
        kind: 'waiting',
        reason: `the controller took the stop ${taken.key} (${readback.state}), but ${landing}`,
      };
    }
    if (taken !== undefined) {
      const at = readback.position === null ? '' : ` at ${readback.position} %`;
      this.host.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'INTERRUPTED',
        faultCode: null,
        observed: observe(readback),
        detail: `stopped by ${taken.key}${at}: the controller took the stop and shows ${readback.state}`,
      });
      return { kind: 'settled' };
    }
    if (stops.length > 0 && verdict.kind === 'redispatch') {
      return {
        kind: 'waiting',
        reason: `${prefix}; the stop ${stops[0]?.key ?? ''} followed it, so it is not written again and whether it was applied is unknown`,
      };
    }
    if (verdict.kind === 'redispatch' && ctx.localSeen === true) {
      // The operator took the valve in hand at the panel after the command's read: a second
      // write, taken once the valve is back in REMOTE, would act after the operator's hand.
      this.host.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: observe(readback),
        detail: `the write never reached the controller: ${verdict.proof}; the valve was switched to LOCAL after the command's read, so it is not sent again; nothing was applied`,
      });
      return { kind: 'settled' };
    }
    switch (verdict.kind) {
      case 'wait':
        return { kind: 'waiting', reason: `${prefix}; ${verdict.reason}` };
      case 'unprovable':
        return {
          kind: 'waiting',
          reason:
            ctx.echoSeen === true
              ? `${prefix}; it is never written again, and whether it took effect is not confirmed`
              : `${prefix}; ${verdict.reason}, so whether the write was applied is unknown`,
        };
      case 'not-applied':
        this.host.settle(log, record, 'dispatched', {
          to: 'failed',
          code: 'DEVICE_UNREACHABLE',
          faultCode: null,
          observed: observe(readback),
          detail: `the write never reached the controller: ${verdict.proof}; ${verdict.why}, so it is not sent again; nothing was applied`,
        });
        return { kind: 'settled' };
      case 'redispatch': {
        const again = this.host.journal.markRedispatched(
          record,
          clock.now(),
          `${verdict.proof}: the first write was not applied`,
          PIPELINE,
        );
        // On disk before the second write (group commit); a failed sync throws, as a failed
        // journal write does, and the command is left to the sweep unwritten.
        await this.host.journal.durable();
        // As before the first write (execution.ts): not for a command an operator resolved
        // meanwhile, nor past its deadline (I3), which the barrier may have outlasted.
        if (settledMeanwhile(this.host, lane, again, log)) {
          // Its first write proven not applied and its second never handed to the driver: no
          // write of it stands. Left the lane's last, the first write had the resolved command
          // watched for a late echo, and another master's write of its number noted as the
          // controller taking it (late-echo.ts).
          if (lane.lastWrite === ctx.write) lane.lastWrite = null;
          return { kind: 'settled' };
        }
        if (aborted(lane)) {
          // A stop preempted it meanwhile (or the daemon is stopping): never written again.
          this.secondUnsent(
            lane,
            again,
            'its second dispatch was still being made durable: it was never handed to the driver',
            log,
          );
          return {
            kind: 'waiting',
            reason: `${prefix}; preempted while its second dispatch was being made durable, so it is not written again and nothing was applied`,
          };
        }
        if (this.host.deadlineNow(again) >= again.deadline) {
          this.host.settle(log, again, 'dispatched', {
            to: 'failed',
            code: 'DEVICE_UNREACHABLE',
            faultCode: null,
            observed: observe(readback),
            detail: `the write never reached the controller: ${verdict.proof}; its deadline passed while the second dispatch was being made durable, so it is not sent again; nothing was applied`,
          });
          return { kind: 'settled' };
        }
        log.warn({ seq }, 'first write provably not applied; dispatching once more');
        const write = this.beginWrite(lane, again, seq);
        ctx.write = write;
        const outcome = await this.send(lane, again, seq, write, log);
        if (outcome.kind !== 'not-sent') {
          lane.writes.redispatches[
            ctx.withheld === true ? 'withheld' : ctx.earlierLife ? 'restart' : 'lost_answer'
          ]++;
        }
        ctx.confirmByMono = write.sentMono + ctx.windowMs;
        if (outcome.kind === 'refused') {
          this.refused(again, observe(readback), outcome, log);
          return { kind: 'settled' };
        }
        if (outcome.kind === 'not-sent' && outcome.reason === 'withdrawn') {
          if (settledMeanwhile(this.host, lane, again, log)) return { kind: 'settled' };
          this.secondUnsent(lane, again, outcome.error, log);
          // As when preempted during the second barrier above: never written again.
          return {
            kind: 'waiting',
            reason: `${prefix}; preempted while its second write waited for the controller, so it was not sent and nothing was applied`,
          };
        }
        if (outcome.kind === 'not-sent' && outcome.reason === 'no-connection') {
          this.host.settle(log, again, 'dispatched', {
            to: 'failed',
            code: 'DEVICE_UNREACHABLE',
            faultCode: null,
            observed: observe(readback),
            detail: `the write never reached the controller: ${verdict.proof}; the second write was never sent: no connection to the controller, so it is not sent again; nothing was applied (${outcome.error})`,
          });
          return { kind: 'settled' };
        }
        if (outcome.kind === 'not-sent') {
          this.host.settle(log, again, 'dispatched', {
            to: 'failed',
            code: 'DEVICE_UNREACHABLE',
            faultCode: null,
            observed: observe(readback),
            detail: `the write never reached the controller: ${verdict.proof}; its deadline passed before the second write could be sent, so it is not sent again; nothing was applied (${outcome.error})`,
          });
          return { kind: 'settled' };
        }
        return { kind: 'redispatched', record: again };
      }
    }
  }

  /**
   * For a stop that preempted a written command: why that command's write may still reach the
   * controller after `readback`, and so after this stop (or null). Its answer lost, it may be
   * on its way still, and this stop went out on the connection that replaced the lost one. A
   * stop that overtook a stop (preemption.ts, stopOvertakes) waits for the write of the command
   * that first stop had preempted, too: it may land after either.
   */
  private preemptedMayLand(
    lane: Lane,
    record: CommandRecord,
    readback: TimedReadback,
  ): string | null {
    const interrupted = lane.interrupted;
    if (
      record.action !== 'stop' ||
      interrupted === null ||
      refId(interrupted.stop) !== refId(record)
    ) {
      return null;
    }
    for (let i: Interruption | null = interrupted; i !== null; i = i.outer) {
      if (i.write === null) continue;
      // A preempted write withdrawn before it was sent leaves the command SUPERSEDED: nothing
      // of it can land. Unreadable, the command is taken as still open (the stop waits).
      let target: CommandRecord | undefined;
      try {
        target = this.host.journal.get(i.target);
      } catch {
        target = undefined;
      }
      if (target !== undefined && target.state !== 'dispatched') continue;
      const landing = mayStillLand({
        profile: lane.binding.profile,
        readback,
        skew: this.reads.usableSkew(lane),
        acked: i.write.acked,
        unknownSinceMono: i.write.unknownSinceMono ?? i.write.sentMono,
      });
      if (landing !== null) {
        return `the controller took the stop, but the command it preempted (${i.target.key}) may still undo it: ${landing}`;
      }
    }
    return null;
  }

  /** Why this command's write may still reach the controller after `readback` (or null). */
  private mayStillLand(lane: Lane, ctx: WrittenContext, readback: TimedReadback): string | null {
    return mayStillLand({
      profile: lane.binding.profile,
      readback,
      skew: this.reads.usableSkew(lane),
      acked: ctx.write.acked,
      unknownSinceMono: ctx.write.unknownSinceMono ?? ctx.write.sentMono,
    });
  }

  /**
   * The stops journaled on the device after this command, newest first; looked up once per
   * echo the controller shows (the confirm loop polls).
   */
  private laterStops(
    record: CommandRecord,
    ctx: WrittenContext,
    echo: number | null,
    fresh = false,
  ): readonly CommandRecord[] {
    if (!fresh && ctx.stops?.echo === echo) return ctx.stops.found;
    // Claimed after it, in the journal's order: a stop accepted after a step back of the
    // gateway's clock is still found (its acceptedAt may lie before this command's).
    const found = this.host.journal.stopsAfter(record, 100);
    ctx.stops = { echo, found };
    return found;
  }

  /**
   * Remembers the write about to be sent: the lane's last write, in flight. A command whose
   * dispatch this process withheld is no longer one never sent (Lane.withheld): its write may
   * be on the wire from now, and a stop that preempts it waits for it.
   */
  private beginWrite(lane: Lane, record: CommandRecord, seq: number): LastWrite {
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
    lane.lastWrite = write;
    return write;
  }

  private async send(
    lane: Lane,
    record: CommandRecord,
    seq: number,
    write: LastWrite,
    log: Logger,
  ): Promise<WriteOutcome> {
    const outcome = await sendWhileBusy(this.host, lane, record, seq, write, log, () =>
      this.trySend(lane, record, seq, write),
    );
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
  private withdrawn(
    lane: Lane,
    record: CommandRecord,
    observed: Observation,
    error: string,
    log: Logger,
  ): void {
    if (settledMeanwhile(this.host, lane, record, log)) return;
    const stop = lane.interrupted;
    if (stop !== null && refId(stop.target) === refId(record)) {
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
   * next start) goes by it: the command was dispatched twice, so it is not sent again
   * (execution.ts, takeUpUnsent), and nothing was applied. Without the line the history showed
   * the re-dispatch and then an outcome read back after the stop ("stopped by …"), as if the
   * second write had gone out; and after a restart a controller showing its power-up echo
   * would leave it unknown.
   */
  private secondUnsent(lane: Lane, again: CommandRecord, error: string, log: Logger): void {
    const stop = lane.interrupted;
    const by = stop !== null && refId(stop.target) === refId(again) ? stop.stop.key : null;
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
    this.host.note(record, unsentLine(requireSeq(record), why, error, record.attempts >= 2));
  }

  private refused(
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
 * The outcome of a command whose controller took it (its echo) and shows LOCAL: a controller in
 * LOCAL ignores what it takes. It did not act on it unless it was seen taking it in REMOTE or
 * the valve moved since the read (by the command before the switch, or by hand).
 */
function localDetail(
  seq: number,
  before: DeviceImage,
  readback: TimedReadback,
  takenInRemote: boolean,
): string {
  const moved =
    before.position !== null &&
    readback.position !== null &&
    Math.abs(readback.position - before.position) >= 0.5;
  if (!takenInRemote && !moved) {
    return `the valve was switched to LOCAL before the controller took the command: it echoes sequence number ${seq} and shows LOCAL where it stood before the write; it did not act on it, and it is not written again`;
  }
  const at =
    readback.position === null
      ? ''
      : ` at ${readback.position} %${before.position === null ? '' : ` (${before.position} % before the write)`}`;
  const when = takenInRemote
    ? 'after it had begun to act on it'
    : 'whether before or after it acted on it cannot be told';
  return `the controller took the command (it echoes sequence number ${seq}) and the valve was switched to LOCAL, ${when}: it shows LOCAL${at}; the local operator has it, and it is not written again`;
}

function requireSeq(record: CommandRecord): number {
  if (record.seq === null)
    throw new Error(`dispatched command ${record.key} has no sequence number`);
  return record.seq;
}

/** A function, not a property read: the flag changes across awaits (and narrowing forgets). */
function aborted(lane: Lane): boolean {
  return lane.signal.aborted;
}

/** The before-image's source time, when the image is a readback of this life (not journaled). */
function imageTimeOf(before: DeviceImage): { readonly sourceTime: number | null } | null {
  const time = (before as Partial<TimedReadback>).sourceTime;
  return typeof time === 'number' ? { sourceTime: time } : null;
}

/** What a command waits to see: its states, and for a move its setpoint within tolerance. */
function expectedText(profile: DeviceProfile, expect: Expectation): string {
  const states = expect.confirm.join(' or ');
  if (expect.position === null) return states;
  return `${states} at ${String(expect.position)} % (within ${String(profile.positionTolerance ?? 0)} %)`;
}

/**
 * Whether `next` is an image of a later controller scan than `first` (null: none yet): by its
 * source time, or without one, requested a scan after `first` came back.
 */
function ofLaterScan(
  profile: DeviceProfile,
  first: TimedReadback | null,
  next: TimedReadback,
): boolean {
  if (first === null) return false;
  if (first.sourceTime !== null && next.sourceTime !== null) {
    return next.sourceTime > first.sourceTime;
  }
  return next.requestedMono >= first.receivedMono + profile.timing.scanMs;
}

/** How a DEVICE_FAULT detail begins: what the controller did with the command before FAULT. */
function faultLead(
  record: CommandRecord,
  fromFault: boolean,
  leftFault: TimedReadback | null,
): string {
  if (leftFault !== null) {
    return `the controller took the ${record.action} and showed ${leftFault.state}, then went back to`;
  }
  return fromFault
    ? `the controller took the ${record.action} and shows`
    : 'the controller took the command and went to';
}

/**
 * The interruption on `lane` (the stop's own, or one a stop it overtook held) whose preempted
 * write the controller echoes (`seq`): that write reached it after the stop.
 */
function landedLate(lane: Lane, seq: number | null): Interruption | null {
  if (seq === null) return null;
  for (let i = lane.interrupted; i !== null; i = i.outer) {
    if (i.write !== null && i.write.seq === seq) return i;
  }
  return null;
}
