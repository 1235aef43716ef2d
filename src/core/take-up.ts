import type { NoConnection } from './command-writes.js';
import { takeUpReach } from './earlier-write-bounds.js';
import type { CommandRecord } from './journal.js';
import { withheldUnsent, type ExecutionHost, type Lane, type LastWrite } from './lane.js';
import type { Logger } from './logger.js';
import { latestWriteWithheld, takeUpNote } from './open-commands.js';
import { stopOverPreempted } from './preemption.js';
import { stopTakenUpAfterPending, UNJUDGED_TAKE_UP } from './previous-write.js';
import type { ReadbackConfirmation } from './readback-confirmation.js';
import { imageOf, localSeenIn } from './redispatch.js';
import { decide } from './state-machine.js';

/**
 * The take-up of a `dispatched` command with no live worker — after a crash or a journal stall:
 * what is known of its write (this life's memory, its history), then the readback loop
 * (readback-confirmation.ts) settles it by reading the controller, never by a blind re-write
 * (I5).
 */
export class CommandTakeUp {
  private readonly host: ExecutionHost;
  private readonly readbacks: ReadbackConfirmation;

  constructor(host: ExecutionHost, readbacks: ReadbackConfirmation) {
    this.host = host;
    this.readbacks = readbacks;
  }

  /**
   * Takes up a `dispatched` command with no live worker. What this process remembers of its
   * write (a journal stall in this life) is used; after a restart the write's fate is unknown
   * from the moment this process took it up. It keeps reading for the longest of the confirm
   * timeout, the unreachable grace, the time to the deadline and the time past the moment an
   * earlier life's write can be proven not applied (takeUpReach).
   */
  async takeUp(lane: Lane, record: CommandRecord, log: Logger): Promise<NoConnection | null> {
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
      return null;
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
    // it was sent, by this life or an earlier one. Such a command comes here only when a write
    // of it before may have left, or, a stop, when a stop was accepted after it (execution.ts,
    // writeWithheld; otherwise it is decided again and written): judged as a write whose
    // outcome is unknown from now (the memory only names it). So too when an earlier take-up in this life stood a write in for it
    // (`remembered`) and its second dispatch was withheld as well (its barrier failed): taken up
    // "again" with a write "outcome unknown", its history had a write that never was (which a
    // stop after a restart went by, waiting the guard for it).
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
    // And past the moment an earlier life's write can be proven not applied (takeUpReach), so
    // that the proof does not race the window's end. In whole milliseconds, rounded up: the time
    // to the deadline is a fraction of one (deadlineNow() counts on the monotonic clock), and
    // the window's end says it in the command's detail ("not confirmed within … ms").
    const windowMs = Math.ceil(
      Math.max(
        profile.timing.confirmTimeoutMs,
        lane.unreachableGraceMs,
        record.deadline - this.host.deadlineNow(record),
        takeUpReach(lane),
      ),
    );
    return this.readbacks.confirm(
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
}
