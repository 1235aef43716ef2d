import { isTerminal } from './command.js';
import type { Clock } from './clock.js';
import { AlreadySettledError, UnknownCommandError } from './errors.js';
import {
  claimId,
  claimRef,
  type ClaimRef,
  type CommandRecord,
  type CommandRef,
  type Journal,
} from './journal.js';
import { ADMIN, commandLogger, interruptedTargets, withheldUnsent, type Lane } from './lane.js';
import type { Logger } from './logger.js';
import { latestWriteWithheld } from './open-commands.js';
import type { Outcomes } from './outcomes.js';
import { latestUnsentCause, writesMaybeSent } from './redispatch.js';
import { resolveDetail, WRITE_NOTE_BEGINNINGS } from './resolve-detail.js';

/** What an operator's actions need from the pipeline. */
export interface OperatorHost {
  readonly journal: Journal;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly lanes: ReadonlyMap<string, Lane>;
  readonly outcomes: Outcomes;
  startWorker(lane: Lane): void;
  /** The pipeline is stopping (the daemon stops): no worker takes a command up any more. */
  closed(): boolean;
}

/** An operator's actions on one open command (SPEC §7): resolve it, or have it judged again. */
export class OperatorActions {
  private readonly host: OperatorHost;

  constructor(host: OperatorHost) {
    this.host = host;
  }

  /**
   * An operator ends an open command `failed` `RESOLVED_BY_OPERATOR` (SPEC §2, §7): nothing is
   * written to the controller; who and why are in the outcome's detail and the history, and the
   * outcome is published like any other. A worker still holding the command is preempted; its
   * own outcome, should it come, finds the command settled and keeps the operator's. The detail
   * also says what is known of the command's own write, when it was dispatched: the operator's
   * action writes nothing, but a write sent before it may still be applied.
   */
  resolve(ref: CommandRef, by: string, reason: string): CommandRecord {
    const { journal, clock, lanes } = this.host;
    const record = journal.get(ref);
    if (record === undefined) throw new UnknownCommandError(ref.key);
    if (isTerminal(record.state)) throw new AlreadySettledError(record);
    const log = commandLogger(this.host.logger, record);
    const lane = lanes.get(record.device);
    const settled = journal.settle(record, record.state, {
      to: 'failed',
      code: 'RESOLVED_BY_OPERATOR',
      faultCode: null,
      observed: record.observed,
      detail: resolveDetail(by, reason, writeNote(lane, record, journal)),
      at: clock.now(),
      intake: ADMIN,
    });
    log.warn({ by, from: record.state }, 'command resolved by an operator');
    if (
      lane?.inFlight !== null &&
      lane?.inFlight !== undefined &&
      claimId(lane.inFlight) === claimId(record)
    ) {
      lane.preempt?.abort();
    }
    if (lane !== undefined && record.state === 'accepted') leaveQueue(lane, record);
    if (
      lane?.unresolved !== null &&
      lane?.unresolved !== undefined &&
      claimId(lane.unresolved) === claimId(record)
    ) {
      lane.unresolved = null;
      this.host.startWorker(lane);
    }
    this.host.outcomes.announce(settled, log);
    return settled;
  }

  /**
   * An operator asks for an open command to be judged again now (SPEC §7): a note in its
   * history, and a worker takes it up at once if none holds it — a fresh readback, judged as
   * recovery judges (never a blind write). Resolves when it is terminal, or as it stands after
   * `waitMs`.
   */
  async reverify(
    ref: CommandRef,
    by: string,
    waitMs: number,
  ): Promise<{ readonly record: CommandRecord; readonly detail: string }> {
    const { journal, clock, lanes } = this.host;
    const record = journal.get(ref);
    if (record === undefined) throw new UnknownCommandError(ref.key);
    if (isTerminal(record.state)) throw new AlreadySettledError(record);
    journal.note(record, clock.now(), `reverify requested by ${by}`, ADMIN);
    const lane = lanes.get(record.device);
    if (lane === undefined) {
      return {
        record,
        detail: `its device "${record.device}" is not in the configuration: no readback can settle it; resolve it`,
      };
    }
    // The lane holds commands by their claim: the key's command is the one read.
    const id = claimId(record);
    const inFlight = lane.inFlight !== null && claimId(lane.inFlight) === id;
    const held =
      inFlight ||
      lane.queue.some((q) => claimId(q) === id) ||
      interruptedTargets(lane).some((target) => claimId(target) === id);
    // A stop of the daemon (pipeline.stop) leaves its device's worker what it carries out within
    // the shutdown bound — the command in flight, the accepted stops kept at the head of the
    // queue, the command left to the sweep ahead of them, the command a stop preempted — and
    // clears the rest of the queue: nothing takes any other command up now. Said so at once, not
    // after the wait as "waiting for the device's command in flight", which no worker would end.
    const carriedOut = held || (lane.unresolved !== null && claimId(lane.unresolved) === id);
    if (this.host.closed() && !carriedOut) return { record, detail: stoppingDetail(record) };
    if (!held && !this.host.closed()) {
      if (lane.unresolved !== null && claimId(lane.unresolved) !== id) {
        lane.queue.unshift(claimRef(record));
      } else lane.unresolved = claimRef(record);
    }
    this.host.startWorker(lane);
    const after = (await this.host.outcomes.waitForSettled(claimRef(record), waitMs)) ?? record;
    const detail = isTerminal(after.state)
      ? `settled: ${after.state} ${after.code ?? ''}`.trim()
      : this.host.closed()
        ? carriedOut
          ? withinBoundDetail(after)
          : stoppingDetail(after)
        : lane.inFlight !== null && claimId(lane.inFlight) === id
          ? `still ${after.state}: the daemon is reading the device (${lane.binding.driver.health().lastError ?? 'no error'})`
          : `still ${after.state}: waiting for the device's command in flight`;
    return { record: after, detail };
  }
}

/**
 * What a reverify answers while the daemon stops, of a command its device's worker still carries
 * out within the shutdown bound (pipeline.stop): an accepted stop kept in the queue, the command
 * in flight, the one a stop preempted.
 */
function withinBoundDetail(record: CommandRecord): string {
  return `still ${record.state}: the daemon is stopping and carries the command out within its shutdown bound; if it is still open when the bound ends, it stays journaled and is settled by reading its device at the next start (or resolve it)`;
}

/** What a reverify answers while the daemon stops, of a command left open. */
function stoppingDetail(record: CommandRecord): string {
  return `still ${record.state}: the daemon is stopping and takes no readback now; the command stays journaled and is settled by reading its device at the next start (or resolve it)`;
}

/**
 * A queued command the operator resolved leaves its device's queue at once: left in it until the
 * device came to it, it was still counted as waiting (`sluicectl devices`, /v1/devices, the
 * status page, sluice_device_queue_length) while the journal had it failed. Not a stop that a
 * preemption waits for (lane.interrupted): the worker, coming to it ended, hands the preempted
 * command on (preemption.ts, afterStop), and that stays its job.
 */
function leaveQueue(lane: Lane, ref: ClaimRef): void {
  const id = claimId(ref);
  if (lane.interrupted !== null && claimId(lane.interrupted.stop) === id) return;
  const at = lane.queue.findIndex((queued) => claimId(queued) === id);
  if (at < 0) return;
  lane.queue.splice(at, 1);
  lane.superseded.delete(id);
}

/**
 * What the outcome of a resolve says about the command's own write: never made for an
 * `accepted` command; for a `dispatched` one, what this process knows of it — a client or an
 * operator reading "nothing was written" of a valve that took the write would be misled.
 */
function writeNote(
  lane: Lane | undefined,
  record: CommandRecord,
  journal: Pick<Journal, 'history'>,
): string {
  if (record.state !== 'dispatched' || record.seq === null) {
    return WRITE_NOTE_BEGINNINGS[0];
  }
  const resolve = WRITE_NOTE_BEGINNINGS[1];
  const write = `the command's write (sequence number ${record.seq})`;
  const last = lane?.lastWrite ?? null;
  const known =
    last !== null &&
    last.scope === record.scope &&
    last.key === record.key &&
    last.seq === record.seq
      ? last
      : null;
  const held =
    lane?.inFlight !== null &&
    lane?.inFlight !== undefined &&
    claimId(lane.inFlight) === claimId(record);
  // Withheld unsent when its dispatch could not be made durable, and no write of it handed to
  // the driver since (a second dispatch that is sent clears the lane's memory and journals a
  // redispatch after the take-up's line): nothing of it can reach the controller. The take-up's
  // stand-in (`known`) is no write. Said so, the next command does not wait for it, in this life
  // or the next (previous-write.ts, endedFateOpen).
  if (
    (lane !== undefined && withheldUnsent(lane, record)) ||
    historyShowsWithheld(journal, record, record.seq)
  ) {
    return neverSentNote(record.seq);
  }
  if (known?.acked === true) return acknowledgedNote(record.seq);
  if (known !== null && known.unknownSinceMono !== null) return unknownNote(record.seq);
  if (known !== null && held) {
    return `${resolve}; ${write} was on its way to the controller: withdrawn if it still waited, otherwise it may be applied (the history says which)`;
  }
  if (known === null && held && (record.attempts <= 1 || noneSentBefore(journal, record))) {
    // Between the dispatch and the write (its barrier), or waiting for the connection after its
    // write found none (execution.ts, carryOutRounds): the worker looks again before the write.
    // A command dispatched again after writes that were all refused unsent is the same: none of
    // them left the gateway.
    return `${resolve}; ${write} had been dispatched and was not yet sent, and it is not sent`;
  }
  // Not taken up yet since a stop of the daemon withdrew its write, or since its driver refused
  // it for want of a connection (a device no longer configured, say): the history proves it
  // never left the daemon (redispatch.ts).
  const unsent =
    known === null && !held ? latestUnsentCause(journal.history(record), record.seq) : null;
  if (unsent !== null) {
    return unsent === 'withdrawn'
      ? `${resolve}, and ${write} was withdrawn before it was sent (its history says so): nothing was applied`
      : `${resolve}, and ${write} found no connection to the controller and was never sent (its history says so): nothing was applied`;
  }
  return `${resolve}, but ${write} had been dispatched before and whether it reached the controller is unknown: it may have been applied`;
}

/**
 * Whether the command's history says its latest write was withheld, never sent (its take-up's
 * line, of this life or an earlier one). A history that cannot be read says nothing: the note
 * then leaves the write as one that may have gone out.
 */
function historyShowsWithheld(
  journal: Pick<Journal, 'history'>,
  record: CommandRecord,
  seq: number,
): boolean {
  try {
    return latestWriteWithheld(journal.history(record), seq);
  } catch {
    return false;
  }
}

/**
 * Whether the history says every write of the command before its latest was never sent (no
 * connection, withdrawn: redispatch.ts, writesMaybeSent). A history that cannot be read says
 * nothing, as above.
 */
function noneSentBefore(journal: Pick<Journal, 'history'>, record: CommandRecord): boolean {
  if (record.seq === null) return false;
  try {
    return writesMaybeSent(journal.history(record), record.seq, false) === 0;
  } catch {
    return false;
  }
}

/** The note of a resolve whose command's write was withheld, never sent (Lane.withheld). */
function neverSentNote(seq: number): string {
  return `${WRITE_NOTE_BEGINNINGS[1]}, and the command's write (sequence number ${seq}) was never sent: its dispatch could not be made durable, so the write was withheld; nothing was applied`;
}

/** The note of a resolve whose command's write the controller had acknowledged. */
function acknowledgedNote(seq: number): string {
  return `${WRITE_NOTE_BEGINNINGS[1]}, but the command's write (sequence number ${seq}) had reached the controller before, which acknowledged it: it may have been applied`;
}

/** The note of a resolve whose command's write had its outcome unknown (its answer lost). */
function unknownNote(seq: number): string {
  return `${WRITE_NOTE_BEGINNINGS[1]}, but the outcome of the command's write (sequence number ${seq}) is unknown: it may have been applied`;
}

/**
 * What an operator's resolve of a written command said of its write, by its outcome's detail
 * (writeNote's note ends it: the operator's reason comes before it): the controller had
 * acknowledged it, its outcome was unknown (its answer lost), or it was never sent (withheld);
 * null for any other note (the write still on its way, or one this process did not know). What
 * the next command, in this life or a later one, knows of that write (previous-write.ts).
 */
export function resolvedWriteWas(
  record: CommandRecord,
): 'acknowledged' | 'unknown' | 'never sent' | null {
  if (record.code !== 'RESOLVED_BY_OPERATOR' || record.seq === null || record.detail === null) {
    return null;
  }
  if (record.detail.endsWith(`; ${acknowledgedNote(record.seq)}`)) return 'acknowledged';
  if (record.detail.endsWith(`; ${unknownNote(record.seq)}`)) return 'unknown';
  if (record.detail.endsWith(`; ${neverSentNote(record.seq)}`)) return 'never sent';
  return null;
}
