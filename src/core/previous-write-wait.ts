import type { OpenState } from './command.js';
import type { DeviceReads } from './device-reads.js';
import type { CommandRecord } from './journal.js';
import type { ExecutionHost, Lane } from './lane.js';
import type { Logger } from './logger.js';
import { previousWritePending, stopAfterPending, stopAfterPendingNote } from './previous-write.js';
import { observe } from './readback.js';
import type { TimedReadback } from './skew.js';
import { decide, type Decision } from './state-machine.js';

/**
 * Before a command not yet written is decided: the wait for the device's previous write, when
 * its command ended with its fate open (previous-write.ts says which write, and for how long).
 * Part of a command's course (execution.ts, carryOut).
 */

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
export async function afterPreviousWrite(
  host: ExecutionHost,
  reads: DeviceReads,
  lane: Lane,
  record: CommandRecord,
  first: TimedReadback,
  from: OpenState,
  log: Logger,
): Promise<{ readonly readback: TimedReadback; readonly stop?: Decision } | null> {
  const { clock, journal } = host;
  const { profile } = lane.binding;
  let readback = first;
  let said = false;
  for (;;) {
    const pending = previousWritePending(
      journal,
      lane,
      record,
      readback,
      reads.usableSkew(lane),
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
      host.note(record, stopAfterPendingNote(pending));
      return { readback, stop };
    }
    if (!said) {
      said = true;
      log.warn(
        { previous: pending.command.key, seq: pending.write.seq, acked: pending.write.acked },
        "waiting for the device's previous write to be taken before deciding",
      );
      host.note(
        record,
        `not decided yet: ${pending.reason}; a decision on the image before it (${readback.state}) would be undone by it, so the command waits for a readback that shows it taken`,
      );
    }
    const now = host.deadlineNow(record);
    if (now >= record.deadline) {
      host.settle(log, record, from, {
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
    readback = (await reads.tryRead(lane, log)) ?? readback;
  }
}

/** A function, not a property read: the flag changes across awaits (and narrowing forgets). */
function aborted(lane: Lane): boolean {
  return lane.signal.aborted;
}
