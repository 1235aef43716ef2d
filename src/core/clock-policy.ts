import type { CommandRecord } from './journal.js';
import type { ClockPolicy, Lane } from './lane.js';

/**
 * SPEC §6 policy. A timestamped command (its issuer gave `issuedAt`) is judged fresh or stale
 * against the gateway's clock, so that judgement is only as good as the gateway's sync: with a
 * gateway clock UNLOCKED or UNKNOWN, such a command is refused `CLOCK_SKEW` (policy `reject`,
 * the production default) or run with a warning (`warn`). A command timed by the gateway's own
 * receipt does not depend on the gateway being in sync in the life that received it: its age
 * runs on the monotonic clock from that receipt. A restart loses that clock, and such a
 * command recovered from the journal is judged on the wall clock alone (its receipt's wall
 * time against the wall clock now), as a timestamped one is: a gateway that boots with its
 * clock behind (a real-time clock that lost time) would otherwise write it past its deadline
 * (I3). HOLDOVER still counts as synced: the clock was locked recently and free-runs within
 * its holdover bound.
 */

export type ClockVerdict =
  | { readonly kind: 'ok' }
  | { readonly kind: 'warn'; readonly state: string; readonly detail: string }
  | { readonly kind: 'reject'; readonly state: string; readonly detail: string };

const SYNCED = new Set(['LOCKED', 'HOLDOVER']);

/**
 * `receivedInThisLife`: the command was received by this process, so that a command timed by
 * its receipt has its age on the monotonic clock (ExecutionHost.receivedInThisLife).
 */
export function gatewayVerdict(
  policy: ClockPolicy,
  record: Pick<CommandRecord, 'issuedAtSource'>,
  receivedInThisLife: boolean,
): ClockVerdict {
  if (policy.gateway === null) return { kind: 'ok' };
  const timestamped = record.issuedAtSource === 'issuer';
  if (!timestamped && receivedInThisLife) return { kind: 'ok' };
  const status = policy.gateway.status();
  if (status.source === 'none' || SYNCED.has(status.state)) return { kind: 'ok' };
  const which = timestamped
    ? 'a timestamped command'
    : 'a command timed by its receipt before the daemon restarted (its age is known on the wall clock alone)';
  const detail = `the gateway clock is ${status.state} (${status.source}: ${status.detail}): ${which} cannot be judged fresh`;
  return policy.onUnsynced === 'reject'
    ? { kind: 'reject', state: status.state, detail: `${detail}; nothing was written` }
    : { kind: 'warn', state: status.state, detail: `${detail}; running it anyway (policy warn)` };
}

/** A controller clock beyond its bound: its commands are refused (`reject`) or warned about. */
export function controllerVerdict(policy: ClockPolicy, lane: Lane): ClockVerdict {
  const off = lane.clockOff;
  if (off === null) return { kind: 'ok' };
  const detail = `the controller clock of ${lane.binding.id} is ${Math.round(off.offsetMs)} ms off the gateway's, more than the allowed ${off.maxMs} ms`;
  return policy.onUnsynced === 'reject'
    ? { kind: 'reject', state: 'SKEWED', detail: `${detail}; nothing was written` }
    : { kind: 'warn', state: 'SKEWED', detail: `${detail}; running it anyway (policy warn)` };
}

/** One line for a command's history: the clocks as they were when it was dispatched. */
export function clockNote(policy: ClockPolicy, lane: Lane): string {
  const gateway = policy.gateway?.status();
  const g =
    gateway === undefined || gateway.source === 'none'
      ? 'gateway clock not checked'
      : `gateway clock ${gateway.state} (${gateway.source})`;
  const skew = lane.skew;
  // Signed after rounding: -0.3 ms reads "+0 ms", not "0 ms" (nor "-0 ms").
  const offset = skew === null ? 0 : Math.round(skew.offsetMs) + 0;
  const c =
    skew === null
      ? 'controller skew unknown'
      : `controller skew ${offset >= 0 ? '+' : ''}${offset} ms ± ${Math.ceil(skew.uncertaintyMs)} ms`;
  return `${g}; ${c}`;
}
