import type { WriteNotSentReason } from './driver.js';
import type { CommandRecord } from './journal.js';
import { PIPELINE, type ExecutionHost, type Lane, type LastWrite } from './lane.js';
import type { Logger } from './logger.js';

/**
 * A write the controller answers busy (Modbus exception 0x06, "the client should retransmit
 * the message later when the server is free"), sent again: command-writes.ts sends every write
 * through sendWhileBusy.
 */

export type WriteOutcome =
  | { readonly kind: 'acked' }
  | { readonly kind: 'unknown'; readonly error: string }
  /** `busy`: refused busy until the deadline (sendWhileBusy); `error` then says it all. */
  | { readonly kind: 'refused'; readonly error: string; readonly busy?: true }
  /**
   * Never sent: its deadline passed while it waited for the controller (I3), it was withdrawn
   * meanwhile (the lane's signal: a stop's preemption, an operator, the shutdown), or the
   * driver had no connection to send it on.
   */
  | {
      readonly kind: 'not-sent';
      readonly reason: WriteNotSentReason;
      readonly error: string;
    };

/** One attempt's outcome: also `busy`, which sendWhileBusy answers by sending again. */
export type AttemptOutcome = WriteOutcome | { readonly kind: 'busy'; readonly error: string };

/** The longest pause between two attempts of a write the controller answers busy. */
const BUSY_PAUSE_MAX_MS = 2_000;

/**
 * Sends the write (`attempt`), and sends it again while the controller answers that it is
 * busy. A busy answer proves the write was not processed, so sending it again is no second
 * effect (I1) — unlike a write whose answer was lost, which only a readback may prove not
 * applied (redispatch.ts). It is the same write (action, setpoint, sequence number: the same
 * registers and values) of the same dispatch, sent after pauses that double from the
 * profile's pollIntervalMs up to BUSY_PAUSE_MAX_MS, each journaled and logged; never past the
 * command's deadline (I3: the driver checks it again as it sends), and not once a stop, an
 * operator or the daemon's stop withdrew it while it waited (`not-sent` `withdrawn`). A
 * controller still busy at the deadline ends the command as refused, with a detail that says
 * it stayed busy.
 */
export async function sendWhileBusy(
  host: ExecutionHost,
  lane: Lane,
  record: CommandRecord,
  seq: number,
  write: LastWrite,
  log: Logger,
  attempt: () => Promise<AttemptOutcome>,
): Promise<WriteOutcome> {
  const { clock } = host;
  const firstMono = clock.elapsed();
  let pause = lane.binding.profile.timing.pollIntervalMs;
  let busy: string | null = null;
  for (let sent = 1; ; sent++) {
    const outcome = await attempt();
    // A resend that the driver sent (any answer, or none): one that never left the gateway
    // (not-sent) is no resend.
    if (sent > 1 && outcome.kind !== 'not-sent') lane.writes.busyResends++;
    const stayedBusy = (answers: number, why: string): WriteOutcome => {
      lane.writes.busyGivenUp++;
      return {
        kind: 'refused',
        busy: true,
        error: `the controller stayed busy: the write was sent ${answers} times over ${Math.round(clock.elapsed() - firstMono)} ms and answered busy each time (last: ${busy ?? ''}), and its deadline ${new Date(record.deadline).toISOString()} ${why}; it was never processed, nothing was applied`,
      };
    };
    if (outcome.kind === 'not-sent' && outcome.reason === 'deadline' && busy !== null) {
      // Its deadline passed while the retransmission waited behind other requests.
      return stayedBusy(sent - 1, 'passed before it could be sent again');
    }
    if (outcome.kind !== 'busy') return outcome;
    busy = outcome.error;
    // Not processed: nothing of this write is pending at the controller while it waits.
    write.unknownSinceMono = null;
    // The last pause ends just before the deadline: until then the write may still go out.
    const wait = Math.min(pause, record.deadline - host.deadlineNow(record) - 1);
    if (wait < 0) return stayedBusy(sent, 'passed');
    noteBusy(host, record, seq, busy, Math.round(wait));
    log.warn(
      { seq, busy: sent, pauseMs: Math.round(wait), err: busy },
      'controller busy: the write is sent again',
    );
    await clock.sleep(wait, lane.signal);
    if (lane.signal.aborted) {
      if (lane.lastWrite === write) lane.lastWrite = null;
      return {
        kind: 'not-sent',
        reason: 'withdrawn',
        error: `withdrawn while it waited to be sent again after the controller answered busy (${busy}): the controller never processed it`,
      };
    }
    if (host.deadlineNow(record) >= record.deadline) return stayedBusy(sent, 'passed');
    pause = Math.min(pause * 2, BUSY_PAUSE_MAX_MS);
    write.sentMono = clock.elapsed();
  }
}

/** Journals a busy answer to the write: the history says why the same write goes out again. */
function noteBusy(
  host: ExecutionHost,
  record: CommandRecord,
  seq: number,
  error: string,
  pauseMs: number,
): void {
  const detail = `the controller answered busy to the write (sequence number ${seq}): ${error}: not processed; the same write is sent again in ${pauseMs} ms`;
  try {
    host.journal.note(record, host.clock.now(), detail, PIPELINE);
  } catch {
    // The dispatch is durable already; the line only explains the next attempt.
  }
}
