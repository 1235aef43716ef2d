import { aborted, requireSeq, type CommandWrites, type NoConnection } from './command-writes.js';
import type { DeviceReads } from './device-reads.js';
import { claimId, readClaim, type CommandRecord } from './journal.js';
import {
  PIPELINE,
  settledMeanwhile,
  type ExecutionHost,
  type Interruption,
  type Lane,
  type LastWrite,
} from './lane.js';
import type { Logger } from './logger.js';
import { endedFateOpen } from './previous-write.js';
import type { DeviceProfile } from './profile.js';
import { judgeWritten, observe, type Expectation } from './readback.js';
import { ReadbackPacer } from './readback-pacing.js';
import { unansweredSince } from './read-failures.js';
import {
  judgeRedispatch,
  localLine,
  mayStillLand,
  notAppliedEnd,
  ordinal,
  writesMaybeSent,
  type DeviceImage,
} from './redispatch.js';
import { POWER_UP_ECHO } from './sequence.js';
import { ILLEGAL_TRANSITION_FAULT, formatFaultCode } from './state-machine.js';
import type { TimedReadback } from './skew.js';

/** What the readback loop knows of the write it confirms. */
export interface WrittenContext {
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

/**
 * The readback loop after a write (I2): readbacks until one taken after the write confirms the
 * command, the controller refuses it, or time runs out; at most one re-dispatch, only when the
 * first write is provably not applied (redispatch.ts), sent through CommandWrites. The same loop
 * confirms a first write (confirmation.ts) and a command taken up (take-up.ts).
 */
export class ReadbackConfirmation {
  private readonly host: ExecutionHost;
  private readonly reads: DeviceReads;
  private readonly writes: CommandWrites;

  constructor(host: ExecutionHost, reads: DeviceReads, writes: CommandWrites) {
    this.host = host;
    this.reads = reads;
    this.writes = writes;
  }

  /**
   * I2: polls until a post-write readback confirms, the controller refuses, or time runs out.
   * Returns the re-dispatched record when the write sent once more after its first was proven
   * not applied found no connection to the controller (notTaken): nothing of it left the
   * process, and the caller goes round again (execution.ts); otherwise null.
   */
  async confirm(
    lane: Lane,
    initial: CommandRecord,
    ctx: WrittenContext,
    log: Logger,
    readAtOnce: boolean,
  ): Promise<NoConnection | null> {
    const { clock } = this.host;
    const { profile } = lane.binding;
    const seq = requireSeq(initial);
    let record = initial;
    let lastGood: TimedReadback | null = null;
    let lastReason = 'no readback after the write';
    // The reads that failed since the last readback (lastGood), and the last one's error.
    let failedReads = 0;
    let lastReadError = '';
    // The state the last failed read named, when the controller answered one the profile does
    // not know (device-reads.ts): it answers, so the command is not said unreachable.
    let unknownState: string | null = null;
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
      if (aborted(lane)) return null;
      const read = await this.reads.readOrError(lane, log);
      const readback = 'error' in read ? null : read.readback;
      pause = pacer.next(clock.elapsed(), readback, this.reads.usableSkew(lane));
      if (readback === null) {
        if ('error' in read) {
          failedReads++;
          lastReadError = read.error;
          unknownState = read.unknownState ?? null;
        }
        continue;
      }
      lastGood = readback;
      failedReads = 0;
      const verdict = judgeWritten({
        profile,
        action: record.action,
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
          return null;
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
          return null;
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
            return null;
          }
          if (
            profile.controller.echoesSeq &&
            readback.faultCode === ILLEGAL_TRANSITION_FAULT &&
            ctx.before.state !== profile.faultState
          ) {
            // This command's echo with 0x88, which judgeWritten does not take for its refusal:
            // no state refuses it (a stop), and the 0x88 is an earlier refused command's.
            this.host.settle(log, record, 'dispatched', {
              to: 'failed',
              code: 'DEVICE_FAULT',
              faultCode: verdict.faultCode,
              observed: observe(readback),
              detail: `the controller took the ${record.action} and shows ${readback.state} (fault 0x88): it refused an earlier command (no state refuses a ${record.action}), which left it in ${readback.state} until a reset`,
            });
            return null;
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
          return null;
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
              return null;
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
            return null;
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
            return null;
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
              return null;
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
            return null;
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
              return null;
            }
            wrongSince = null;
            lastReason = `the controller shows ${lateWrite} reached it after the stop was written, and not the stop`;
            break;
          }
          lateEchoSince = null;
          wrongSince = null;
          const next = await this.notTaken(lane, record, ctx, readback, log);
          if (next.kind === 'settled') return null;
          if (next.kind === 'no-connection') return next.unsent;
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
    if (aborted(lane)) return null;
    if (unknownState !== null && failedReads > 0) {
      // The controller answers, with a state the profile does not know (device-reads.ts): not
      // unreachable, and never acted on (docs/device-profiles.md, "States as bits").
      const lead =
        lastGood === null
          ? 'no readback after the write the profile can read'
          : `${lastReason}, at the last readback the profile can read, taken ${Math.round(clock.elapsed() - lastGood.receivedMono)} ms before the window ended; since then`;
      this.host.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'READBACK_TIMEOUT',
        faultCode: null,
        observed: lastGood === null ? null : observe(lastGood),
        detail: `not confirmed within ${ctx.windowMs} ms: ${lead}: the controller reports a state the profile does not know (${unknownState}, at the last of ${failedReads} ${failedReads === 1 ? 'read' : 'reads'}), which is never acted on; the command's effect is unknown: see where the device is (sluicectl devices) before sending the command again`,
      });
      return null;
    }
    if (lastGood === null) {
      this.host.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: null,
        detail: `no readback after the write within ${ctx.windowMs} ms; the command's effect is unknown`,
      });
      return null;
    }
    this.host.settle(log, record, 'dispatched', {
      to: 'failed',
      code: 'READBACK_TIMEOUT',
      faultCode: null,
      observed: observe(lastGood),
      detail: `not confirmed within ${ctx.windowMs} ms: ${lastReason}${
        failedReads === 0
          ? ''
          : unansweredSince(Math.round(clock.elapsed() - lastGood.receivedMono), {
              count: failedReads,
              lastError: lastReadError,
            })
      }`,
    });
    return null;
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
    | { readonly kind: 'no-connection'; readonly unsent: NoConnection }
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
      // Only a command dispatched more than once has earlier writes to look up: those its
      // history says were never sent (no connection, withdrawn) count for none.
      writesMaybeSent:
        record.attempts < 2
          ? record.attempts
          : 1 + writesMaybeSent(this.host.journal.history(record), seq, false),
      dispatches: record.attempts,
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
    const profile = lane.binding.profile;
    if (
      taken !== undefined &&
      readback.state === profile.faultState &&
      readback.faultCode === ILLEGAL_TRANSITION_FAULT
    ) {
      // The stop's echo with the fault state and 0x88: no state refuses a stop, and one taken in
      // a travel state is accepted and clears the latch, so the controller took it in the fault
      // state, a no-op there. The travel had ended before the stop: not INTERRUPTED.
      const at = readback.position === null ? '' : ` at ${readback.position} %`;
      this.host.settle(log, record, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_FAULT',
        faultCode: formatFaultCode(ILLEGAL_TRANSITION_FAULT),
        observed: observe(readback),
        detail: `${
          ctx.echoSeen === true
            ? `the controller took this command (a readback showed its echo), then went to ${readback.state} (fault 0x88)${at}`
            : `the controller went to ${readback.state} (fault 0x88)${at}`
        } before it took the stop ${taken.key}, a no-op there (it echoes the stop's sequence number ${String(taken.seq)}; no state refuses a stop, and one taken in travel clears the latch): the stop interrupted nothing${
          profile.controller.refusal === 'fault'
            ? `; this controller goes to ${readback.state} when it refuses a command, and only a reset clears it`
            : ''
        }`,
      });
      return { kind: 'settled' };
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
          // Which write it proved: the latest journaled, not always the first (its earlier
          // ones refused unsent for want of a connection).
          `${verdict.proof}${notAppliedEnd(record.attempts)}`,
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
          this.writes.secondUnsent(
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
        log.warn(
          { seq, proven: record.attempts },
          `${ordinal(record.attempts)} write provably not applied; dispatching once more`,
        );
        const write = this.writes.beginWrite(lane, again, seq);
        ctx.write = write;
        const outcome = await this.writes.send(lane, again, seq, write, log);
        if (outcome.kind !== 'not-sent') {
          lane.writes.redispatches[
            ctx.withheld === true ? 'withheld' : ctx.earlierLife ? 'restart' : 'lost_answer'
          ]++;
        }
        ctx.confirmByMono = write.sentMono + ctx.windowMs;
        if (outcome.kind === 'refused') {
          this.writes.refused(again, observe(readback), outcome, log);
          return { kind: 'settled' };
        }
        if (outcome.kind === 'not-sent' && outcome.reason === 'withdrawn') {
          if (settledMeanwhile(this.host, lane, again, log)) return { kind: 'settled' };
          this.writes.secondUnsent(lane, again, outcome.error, log);
          // As when preempted during the second barrier above: never written again.
          return {
            kind: 'waiting',
            reason: `${prefix}; preempted while its second write waited for the controller, so it was not sent and nothing was applied`,
          };
        }
        if (outcome.kind === 'not-sent' && outcome.reason === 'no-connection') {
          // Refused unsent for want of a connection: the driver proved it never left the
          // process, so it counts for none of the two writes that may leave the gateway
          // (redispatch.ts). The first can no longer land (the proof is of an image past its
          // guard): the command goes round again as one not yet written — a fresh read, the
          // state-machine check, a durable re-dispatch and one write — within its deadline and
          // MAX_DISPATCHES (execution.ts). Ended here, it failed with most of its deadline left.
          return {
            kind: 'no-connection',
            unsent: { dispatched: again, error: outcome.error, proven: record.attempts },
          };
        }
        if (outcome.kind === 'not-sent' && outcome.reason === 'closed') {
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
      claimId(interrupted.stop) !== claimId(record)
    ) {
      return null;
    }
    for (let i: Interruption | null = interrupted; i !== null; i = i.outer) {
      if (i.write === null) continue;
      // A preempted write withdrawn before it was sent leaves the command SUPERSEDED: nothing
      // of it can land. One an operator resolved meanwhile stands while its fate is open ("it
      // may have been applied": endedFateOpen): passed over, the stop was confirmed and the
      // open landed after it. Unreadable, the command is taken as still open (the stop waits).
      let target: CommandRecord | undefined;
      try {
        target = readClaim(this.host.journal, i.target);
      } catch {
        target = undefined;
      }
      if (target !== undefined && target.state !== 'dispatched' && !endedFateOpen(target)) {
        continue;
      }
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
 * Whether `next` is an image of a later controller scan than `first` (null: none yet): by a
 * later source time, or, unless both source times are scan times (which move on every scan),
 * requested a scan after `first` came back. A source time that is only the last change (an
 * OPC UA profile without `ScanTime`) stays where it is while the valve rests: compared alone,
 * a reset from FAULT waited for a later scan until READBACK_TIMEOUT.
 */
function ofLaterScan(
  profile: DeviceProfile,
  first: TimedReadback | null,
  next: TimedReadback,
): boolean {
  if (first === null) return false;
  if (first.sourceTime !== null && next.sourceTime !== null) {
    if (next.sourceTime > first.sourceTime) return true;
    if (first.sourceIsScan === true && next.sourceIsScan === true) return false;
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
