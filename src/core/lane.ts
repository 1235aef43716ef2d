import { isTerminal } from './command.js';
import type { FreshnessPolicy, OpenState, ResultCode, TerminalState } from './command.js';
import type { Clock } from './clock.js';
import {
  refId,
  type ClaimRef,
  type CommandRecord,
  type CommandRef,
  type Journal,
  type Observation,
} from './journal.js';
import type { DeviceDriver } from './driver.js';
import type { Logger } from './logger.js';
import type { DeviceProfile } from './profile.js';
import type { ReadFailures } from './read-failures.js';
import type { SkewSample } from './controller-clock.js';
import type { SkewEstimate, TimedReadback } from './skew.js';

/** One commandable device: its profile and the driver that reaches it. */
export interface DeviceBinding {
  readonly id: string;
  readonly profile: DeviceProfile;
  readonly driver: DeviceDriver;
  /**
   * Its PLC's name in the configuration (`plcs.<name>`), for the operator's words of a write
   * that found no connection to it (views/open-commands.ts). Omitted: unnamed.
   */
  readonly plc?: string;
  /**
   * Its PLC's unreachable grace (`plcs.<name>.unreachableGraceMs`): how long taking up one of
   * its open commands keeps trying to reach it at least. Omitted: the pipeline's.
   */
  readonly unreachableGraceMs?: number;
  /**
   * Its PLC's request timeout (`plcs.<name>.requestTimeoutMs`): a write an earlier life of the
   * daemon sent may have been on its way for up to this long when that life ended (Lane,
   * earlierWriteUnknownSinceMono). Omitted: the profile's redispatch guard stands in, which the
   * configuration check keeps longer than the timeout.
   */
  readonly requestTimeoutMs?: number;
}

/**
 * What the pieces of one command's execution share: the device's lane (its queue, the command
 * in flight, its mirror, skew and last write) and what the pipeline lends them.
 */

/**
 * Why a command's first write was in doubt when a second one went out (redispatch.ts): this
 * process sent it and lost its answer (a timeout, a dropped reply, a connection reset); an
 * earlier life of the daemon sent it, and this one took the command up at its start; it was
 * withdrawn before it was sent (the daemon stopped while it waited), as its history says; or
 * this process withheld it, unsent, because the journal failed to make its dispatch durable,
 * and took it up again once the journal had recovered (`withheld`: no write preceded it); or its
 * driver refused it unsent for want of a connection to the controller, and the command went
 * round again once the connection was back (`no_connection`: no write preceded it either).
 */
export type RedispatchReason =
  'lost_answer' | 'restart' | 'withdrawn' | 'withheld' | 'no_connection';

/**
 * What became of a device's writes since the daemon started, beyond their commands' outcomes:
 * counted here as they happen (a field incremented, nothing allocated) and read by /metrics.
 */
export interface WriteCounts {
  /** Writes sent again after the controller answered busy (Modbus 0x06): busy-write.ts. */
  busyResends: number;
  /** Writes given up at their command's deadline, the controller busy to the last. */
  busyGivenUp: number;
  /** Second writes of commands whose first was proven never applied, by why it was in doubt. */
  readonly redispatches: Record<RedispatchReason, number>;
}

export function noWrites(): WriteCounts {
  return {
    busyResends: 0,
    busyGivenUp: 0,
    redispatches: { lost_answer: 0, restart: 0, withdrawn: 0, withheld: 0, no_connection: 0 },
  };
}

/** The last write sent on a lane, as this process knows it (the journal knows less). */
export interface LastWrite {
  readonly scope: string;
  readonly key: string;
  readonly seq: number;
  /** Monotonic time the write was handed to the driver. */
  sentMono: number;
  /** The controller acknowledged it. */
  acked: boolean;
  /**
   * Monotonic time its acknowledgement came back: the controller received the write, and
   * acknowledged it, before then (a request on the link, or waiting behind another, reaches it
   * up to a request timeout or more after sentMono). Absent until then, and for an earlier
   * life's write.
   */
  ackedMono?: number;
  /** Monotonic time its outcome became unknown (no acknowledgement); null while in flight. */
  unknownSinceMono: number | null;
  /** The driver's connection epoch when the write came back; null: an earlier life's write. */
  epoch: number | null;
  /**
   * Set on a take-up's stand-in for a write this process or an earlier life withheld, never
   * sent (take-up.ts): the device's last write that was handed to the driver before it (null:
   * none known). Nothing of the withheld write can reach the controller, but that one still
   * may: a stop is written at once behind an acknowledged write the controller may still take
   * (previous-write.ts, stopAfterPending), and when that stop's own write was withheld, the
   * next command after it waits for that earlier write (previousWritePending). Set too on a
   * stop's write, once the stop has ended, to the write of the command it preempted when an
   * operator ended that command with its write's fate open (preemption.ts, afterStop; at a
   * start, previous-write.ts, earlierLastWrite).
   */
  behind?: LastWrite | null;
}

/**
 * A command a stop preempted, and that stop, until the stop is terminal; `write`: the
 * preempted command's write as this process knows it (the lane's lastWrite, which the stop's
 * own write replaces), handed back to the take-up after the stop; for a command an earlier
 * life wrote (`earlierLife`: taken up after a restart), its write with the outcome unknown
 * from the moment this process took it up (preemption.ts, earlierWrite), not handed back;
 * null when it was not written. `outer`: when the preempted command is itself a stop that had preempted a
 * command (a stop pressed again while the first one's effect was not seen), that first
 * interruption, which holds again once the preempted stop is taken up (preemption.ts).
 */
export interface Interruption {
  readonly target: ClaimRef;
  readonly stop: ClaimRef;
  readonly write: LastWrite | null;
  readonly earlierLife: boolean;
  readonly outer: Interruption | null;
}

/** One device's worker state. */
export interface Lane {
  readonly binding: DeviceBinding;
  /**
   * How long taking up an open command keeps trying to reach the device at least, even past
   * its deadline: its PLC's driver may need that long to (re)connect after a restart. The
   * binding's (its PLC's `unreachableGraceMs`), else the pipeline's default.
   */
  readonly unreachableGraceMs: number;
  /**
   * When the outcome of a write an earlier life of the daemon sent became unknown, at the
   * latest (monotonic): that life ended before this process took the journal's writer lock,
   * and the write's request, sent before, may have been on its way up to the PLC's request
   * timeout after — the moment from which the profile's contract has it taken within the
   * redispatch guard, if ever (docs/device-profiles.md, "How the timings relate"). A take-up
   * sooner after the restart than that counts the guard from here, not from itself: a write
   * sent just before a SIGKILL, the daemon restarted within the request timeout, could land
   * after a guard counted from the take-up (a second write, or a stop confirmed and undone).
   * Later when an earlier life was configured with longer timings than this one: its saved
   * bound less this life's guard (earlier-write-bounds.ts).
   */
  readonly earlierWriteUnknownSinceMono: number;
  /**
   * earlierWriteUnknownSinceMono for a write whose acknowledged bound is known to be over: that
   * of a write whose answer was lost alone (earlier-write-bounds.ts, earlierWriteLostSince;
   * previous-write.ts, earlierLastWrite).
   */
  readonly earlierWriteLostSinceMono: number;
  /**
   * The moment from which this life's bound on an acknowledged write (profile.ts,
   * ackedWriteBoundMs: timing.ackedWriteTakenWithinMs, or the confirm timeout) covers a write an
   * earlier life sent and the controller acknowledged (previous-write.ts, earlierLastWrite): when
   * this process took the journal's writer lock, or later when an earlier life's bound was
   * longer (earlier-write-bounds.ts).
   */
  readonly earlierWriteSentMono: number;
  /**
   * When every earlier life of the daemon had ended, at the latest (monotonic): when this
   * process took the journal's writer lock (PipelineOptions.earlierLivesEndedMono). A write an
   * earlier life sent, and any acknowledgement of it, came before.
   */
  readonly earlierLivesEndedMono: number;
  /**
   * The commands claimed for the device and not yet taken up, in order, each by its claim
   * (ClaimRef): an entry whose claim was lost with its batch names no command of its own once
   * the key is claimed again for another command, and is dropped when the device comes to it.
   * So are the lane's other refs below (the command in flight, left open, ending; a stop's
   * interruption; the stops behind; the marks): read as claims (readClaim).
   */
  readonly queue: ClaimRef[];
  running: Promise<void> | null;
  inFlight: ClaimRef | null;
  /**
   * The settlement journaled for the command in flight, when the pipeline journaled one. Once
   * it is announced (its own barrier succeeded: its batch was committed and synced), the
   * command is terminal on disk and the worker need not read it back. Not before: a barrier
   * of the worker's own can succeed after the settlement's batch was lost at its COMMIT (the
   * settlement's barrier took that loss), and only a read shows the command still open.
   */
  settledInFlight: CommandRecord | null;
  /**
   * A command taken up and left open (the journal failed under it, or a bug surfaced). It is
   * the device's command until it is terminal: the queue never moves past it (I1), and the
   * sweep takes it up again before anything else.
   */
  unresolved: ClaimRef | null;
  /**
   * The command whose handling has returned while its end is being made durable (the worker's
   * barrier after it): still the device's command until the worker knows it terminal on disk
   * or leaves it open. A stop accepted meanwhile preempts it, and the sweep leaves it alone.
   */
  ending: ClaimRef | null;
  mirror: TimedReadback | null;
  /**
   * The scan time of the mirror's image and when a read first returned it (monotonic, its
   * answer's arrival); null when readbacks carry no scan time. A scan time that stands while
   * reads go on answering is a frozen image: the controller has stopped publishing.
   */
  imageSince: { readonly sourceTime: number; readonly mono: number } | null;
  skew: SkewEstimate | null;
  /** Recent skew measurements: the controller clock's drift. */
  readonly skewSamples: SkewSample[];
  /** Set while the controller clock is provably beyond the allowed skew (SPEC §6). */
  clockOff: { readonly since: number; readonly offsetMs: number; readonly maxMs: number } | null;
  /**
   * The last image far older than its read that had the clock measured again: when
   * (monotonic), and its source time (the same image does so again only after a while).
   */
  oldImageCheck: { readonly mono: number; readonly sourceTime: number } | null;
  /** The device's status reads failing in a row, if they do (read-failures.ts). */
  readonly statusReads: ReadFailures;
  /** Its controller clock reads failing in a row, if they do. */
  readonly clockReads: ReadFailures;
  /** What became of its writes since the daemon started: busy resends, re-dispatches. */
  readonly writes: WriteCounts;
  lastWrite: LastWrite | null;
  /**
   * At a start, for a device renamed across it (PipelineOptions.formerDeviceIds): the sequence
   * numbers of the earlier lives' writes the controller may still take (recovery's lastWrite and
   * the writes kept behind it: previous-write.ts, earlierLastWrite), its former ids' among them.
   * The device's first dispatch numbers past the highest of them as well as past its own last,
   * and is none of them after a wrap either (sequence.ts, allocateSeq); the numbers go on from
   * there; null once it has dispatched,
   * and for a device not renamed. Numbered from the new id's own count alone (the journal counts
   * by id), a stop written at once behind an open of the former id the controller held carried
   * the open's number: the controller took the open and ignored the stop as a repeat of it, and
   * the open's echo confirmed the stop (a false success).
   */
  formerSeqs: readonly number[] | null;
  /**
   * The commands whose dispatch this process journaled and whose write it then withheld, unsent,
   * because the dispatch's barrier failed (I5: nothing is written before its dispatch is on
   * disk), by id, with that dispatch's sequence number: the sweep takes such a command up once
   * the journal is back, and its history then says it was never sent by this process, where a
   * take-up with no write known to this process otherwise comes from a restart (an earlier
   * life's write). Decided again on a fresh read and written (execution.ts, writeWithheld), as a
   * write withdrawn unsent is. Nothing of it can reach the controller, so a stop that
   * preempts it does not wait for it — also before its take-up has said so in its history
   * (preemption.ts, neverSent). An entry goes when the command's write is handed to the
   * driver (a second dispatch: from then on it may be on the wire, and a stop waits for it) and
   * when the command has settled; until then it holds across take-ups (a second dispatch whose
   * own barrier failed sent nothing either). More than one: a stop that preempts a command so
   * withheld may have its own dispatch withheld too.
   */
  readonly withheld: Map<string, number>;
  /**
   * The stops that queued behind another stop when they were accepted (one in flight left to
   * finish, not written yet or its effect not judged yet, or one still to run), in the order
   * they were accepted: each, once it is the next to run, takes the stop in flight over at the
   * readback that shows that stop did not take effect (preemption.ts, stopBehindRejudged), and
   * leaves the list when it has, or has left the queue. Every one of them, not only the first:
   * a stop pressed a third time while the first was not yet written was forgotten, and once the
   * second had taken the first over and did not take effect either (its write answered 0x04),
   * the third waited out the second's confirm timeout while the valve travelled to the end.
   */
  readonly stopsBehind: ClaimRef[];
  /**
   * Aborted when the pipeline stops, or when a stop preempts the command being handled (SPEC
   * §2: a stop is not queued behind travel). Reads and pauses follow it; a write in progress
   * is completed, so that its fate is known.
   */
  signal: AbortSignal;
  /** Preempts the command being handled; null between commands. */
  preempt: AbortController | null;
  /** The controller the lane's next command takes as its `preempt`, unless it was aborted. */
  commandAbort: AbortController | null;
  /** The command a stop preempted, and that stop, until the stop is terminal. */
  interrupted: Interruption | null;
  /**
   * Commands a stop superseded whose rejection is not yet on disk, by id, with that stop: the
   * journal failed under the rejection, or could not be read to tell what the command was, or
   * the rejection waits for its batch's barrier (a batch lost at its COMMIT takes it back, and
   * the command is `accepted` on disk again). When the device comes to one, it is rejected
   * `SUPERSEDED` if it is still `accepted` (never written), run if it is a stop
   * (preemption.ts). The mark goes once the rejection is durable (the pipeline's settled
   * listener). By claim (claimId): a mark of a claim lost with its batch is not its key's next
   * command's.
   */
  readonly superseded: Map<string, ClaimRef>;
}

export const PIPELINE = 'pipeline';
export const RECOVERY = 'recovery';
/** An operator's action through the admin endpoint (sluicectl). */
export const ADMIN = 'admin';

/** A command's terminal outcome, as the pipeline journals it. */
export interface Outcome {
  readonly to: TerminalState;
  readonly code: ResultCode;
  readonly faultCode: string | null;
  readonly observed: Observation | null;
  readonly detail: string;
}

/** The gateway's own clock, as the pipeline's clock policy sees it (SPEC §6). */
export interface GatewaySync {
  status(): {
    readonly source: string;
    readonly state: string;
    readonly detail: string;
  };
}

/** What the clocks may do to commands (SPEC §6). */
export interface ClockPolicy {
  /** An unlocked or unknown gateway clock, a controller clock beyond its bound: refuse or warn. */
  readonly onUnsynced: 'reject' | 'warn';
  /** The largest controller skew allowed for a device, ms; null: no bound. */
  readonly maxControllerSkewMs: (device: string) => number | null;
  /** The gateway clock's sync state; null: not checked (source `none`). */
  readonly gateway: GatewaySync | null;
}

/** What an execution needs from the pipeline that runs it. */
export interface ExecutionHost {
  readonly journal: Journal;
  readonly clock: Clock;
  readonly freshness: FreshnessPolicy;
  readonly clockPolicy: ClockPolicy;
  /** Controller skew is measured again when older than this. */
  readonly skewMaxAgeMs: number;
  /** Aborted when the pipeline gives up waiting at shutdown (lanes follow it). */
  readonly signal: AbortSignal;
  /**
   * The gateway wall time a command's deadline is judged against now (I3). For a command
   * timed by its receipt in this process's life (no issuedAt: its deadline is the receipt plus
   * its TTL), its receipt plus the time since on the monotonic clock, so that a step of the
   * gateway's wall clock while it waits neither ages it nor makes it young (SPEC §6). For a
   * command with the issuer's issuedAt received in this life, the wall clock, or its receipt
   * plus the time since on the monotonic clock when that is later: a step back of the wall
   * clock while it waits must not make it young again and let it be written after its
   * deadline. For a command of an earlier life, the wall clock.
   */
  deadlineNow(record: CommandRecord): number;
  /**
   * The command was received by this process (not recovered from an earlier life's journal):
   * a command timed by its receipt then has its age on the monotonic clock, and does not
   * depend on the gateway's clock being in sync (clock-policy.ts).
   */
  receivedInThisLife(record: CommandRecord): boolean;
  /** The command's dispatch was journaled now (its durations are timed from here). */
  dispatched(record: CommandRecord): void;
  /** Journals the outcome and tells waiters and listeners; null when it could not. */
  settle(
    log: Logger,
    record: CommandRecord,
    from: OpenState,
    outcome: Outcome,
  ): CommandRecord | null;
  /** An event in the command's history without a transition. */
  note(record: CommandRecord, detail: string): void;
  /** A readback of the device: the mirror follows it. */
  mirror(lane: Lane, readback: TimedReadback): void;
}

export function freshnessDetail(
  verdict: 'STALE_COMMAND' | 'CLOCK_SKEW',
  record: Pick<CommandRecord, 'issuedAt' | 'deadline'>,
  now: number,
  policy: FreshnessPolicy,
): string {
  // `now` may be a fraction of a millisecond (deadlineNow() counts on the monotonic clock): the
  // detail, stored in the result every replay returns, says whole milliseconds.
  return verdict === 'STALE_COMMAND'
    ? `deadline ${new Date(record.deadline).toISOString()} passed ${Math.round(now - record.deadline)} ms ago; nothing was written`
    : `issuedAt lies ${Math.round(record.issuedAt - now)} ms in the future, more than the allowed ${policy.maxIssuerSkewMs} ms; nothing was written`;
}

/**
 * True when the command was settled by another hand while its worker awaited a barrier before
 * a write: an operator's resolve, which aborts the lane's signal. The journal then says that
 * nothing was written, so the write is not sent. A stop's preemption aborts the signal too but
 * leaves the command open: the caller settles that case itself (superseded before a first
 * write, execution.ts; never written again before a second, readback-confirmation.ts).
 */
export function settledMeanwhile(
  host: Pick<ExecutionHost, 'journal'>,
  lane: Lane,
  record: CommandRecord,
  log: Logger,
): boolean {
  if (!lane.signal.aborted) return false;
  const current = host.journal.get(record);
  if (current !== undefined && !isTerminal(current.state)) return false;
  log.warn(
    { seq: record.seq, state: current?.state, code: current?.code },
    'command settled while its write waited for the journal; not written',
  );
  return true;
}

export { refId } from './journal.js';

/**
 * Whether the command's latest dispatch is one this process withheld, unsent (Lane.withheld),
 * and no write of it was handed to the driver since. Nothing of it can reach the controller: a
 * dispatch before that one, if any, had its write withdrawn unsent (execution.ts, takeUpUnsent).
 */
export function withheldUnsent(
  lane: Lane,
  record: CommandRef & { readonly seq: number | null },
): boolean {
  return record.seq !== null && lane.withheld.get(refId(record)) === record.seq;
}

/**
 * Every command the lane's interruptions hold for a take-up after their stop: the target of
 * each (a stop preempted by a stop holds the command it had preempted as its outer one's).
 */
export function interruptedTargets(lane: Lane): ClaimRef[] {
  const targets: ClaimRef[] = [];
  for (let i = lane.interrupted; i !== null; i = i.outer) targets.push(i.target);
  return targets;
}

/** The logger of one command's lines: every line carries its key and device (and scope). */
export function commandLogger(logger: Logger, record: CommandRecord): Logger {
  return logger.child({ key: record.key, device: record.device, scope: record.scope });
}
