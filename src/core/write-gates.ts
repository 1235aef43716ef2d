import { checkFreshness, type OpenState } from './command.js';
import { controllerVerdict, gatewayVerdict } from './clock-policy.js';
import { claimId, type CommandRecord } from './journal.js';
import { freshnessDetail, settledMeanwhile, type ExecutionHost, type Lane } from './lane.js';
import type { Logger } from './logger.js';
import { observe } from './readback.js';
import { ordinal, type NeverSentCause } from './redispatch.js';
import type { TimedReadback } from './skew.js';

/**
 * The checks a command not yet written passes on its way to the controller (execution.ts,
 * carryOut): its deadline and issuer skew (I3) when it is taken up and in the step that
 * journals its dispatch, the clock policy (SPEC §6), and after the dispatch's barrier, just
 * before the write, whether it is still to be written at all. Each one that stops it settles
 * it truly, saying nothing was written.
 */

/**
 * A command not yet written: `accepted`, or `dispatched` with its write (`seq`) never sent —
 * withdrawn before it was sent, refused for want of a connection, or withheld when its
 * dispatch could not be made durable (`unsent`), as every one
 * before it but, when `proven` is a dispatch (1 its first), that one's write, sent and proven
 * not applied (redispatch.ts) — whose write goes out as a re-dispatch.
 */
export type NotWritten =
  | { readonly from: 'accepted' }
  | {
      readonly from: 'dispatched';
      readonly seq: number;
      readonly unsent: NeverSentCause;
      readonly proven: number | null;
    };

/** Rejects a write the clock policy forbids: gateway unsynced, controller clock off (§6). */
export function rejectIfUnsynced(
  host: ExecutionHost,
  lane: Lane,
  record: CommandRecord,
  before: TimedReadback,
  from: OpenState,
  log: Logger,
): boolean {
  for (const verdict of [
    gatewayVerdict(host.clockPolicy, record, host.receivedInThisLife(record)),
    controllerVerdict(host.clockPolicy, lane),
  ]) {
    if (verdict.kind === 'warn') log.warn({ clock: verdict.state }, verdict.detail);
    if (verdict.kind !== 'reject') continue;
    host.settle(log, record, from, {
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
export function notToBeWritten(
  host: ExecutionHost,
  lane: Lane,
  dispatched: CommandRecord,
  log: Logger,
): boolean {
  if (settledMeanwhile(host, lane, dispatched, log)) return true;
  const stop = lane.interrupted;
  if (aborted(lane) && stop !== null && claimId(stop.target) === claimId(dispatched)) {
    host.settle(log, dispatched, 'dispatched', {
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
  const now = host.deadlineNow(dispatched);
  if (checkFreshness(dispatched, now, host.freshness) !== 'STALE_COMMAND') return false;
  host.settle(log, dispatched, 'dispatched', {
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
 * command going round again after its write found no connection (execution.ts,
 * carryOutRounds) that is past its deadline ends as its wait for the connection does: `failed`
 * `DEVICE_UNREACHABLE`, naming the write of it that was sent and proven not applied before, if
 * one was (`proven`), as every end of such a round does.
 */
export function rejectIfStale(
  host: ExecutionHost,
  record: CommandRecord,
  before: TimedReadback | null,
  course: NotWritten,
  log: Logger,
): boolean {
  const { from } = course;
  const now = host.deadlineNow(record);
  const fresh = checkFreshness(record, now, host.freshness);
  if (fresh === 'FRESH') return false;
  if (
    fresh === 'STALE_COMMAND' &&
    course.from === 'dispatched' &&
    course.unsent === 'no-connection'
  ) {
    const unsent =
      course.proven === null
        ? `its write (sequence number ${course.seq})`
        : `its ${ordinal(course.proven)} write (sequence number ${course.seq}) was sent and proven not applied, its latest write`;
    host.settle(log, record, from, {
      to: 'failed',
      code: 'DEVICE_UNREACHABLE',
      faultCode: null,
      observed: before === null ? null : observe(before),
      detail: `the write never reached the controller: ${unsent} found no connection to the controller, and its deadline ${new Date(record.deadline).toISOString()} passed ${Math.round(now - record.deadline)} ms ago while the command went round again; nothing was applied`,
    });
    return true;
  }
  host.settle(log, record, from, {
    to: 'rejected',
    code: fresh,
    faultCode: null,
    observed: before === null ? null : observe(before),
    detail: freshnessDetail(fresh, record, now, host.freshness),
  });
  return true;
}

/** A function, not a property read: the flag changes across awaits (and narrowing forgets). */
function aborted(lane: Lane): boolean {
  return lane.signal.aborted;
}
