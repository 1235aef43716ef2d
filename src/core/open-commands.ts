import type { OpenState } from './command.js';
import type { CommandRecord } from './journal.js';

/**
 * The open (non-terminal) commands at a glance, for `/metrics` and `/readyz`. A command is
 * *stuck* when it is still open past its deadline plus its confirm timeout (SPEC §2): by then
 * the pipeline would have ended it, so something needs a person (a device no longer
 * configured, a journal that cannot be written, a bug).
 */

/** Upper bounds (seconds) of the age buckets; the last bucket is everything older. */
export const OPEN_AGE_BUCKETS_S = [1, 10, 60, 600, 3_600] as const;

export interface StuckCommand {
  readonly scope: string;
  readonly key: string;
  readonly device: string;
  readonly state: OpenState;
  readonly ageMs: number;
  /** How long past its deadline plus confirm timeout. */
  readonly overdueMs: number;
}

export interface OpenCommands {
  readonly accepted: number;
  readonly dispatched: number;
  /** Cumulative counts: open commands at most `le` seconds old ("+Inf": all). */
  readonly byAge: readonly { readonly le: string; readonly count: number }[];
  readonly oldestAgeMs: number | null;
  readonly stuck: readonly StuckCommand[];
}

export function summarizeOpen(
  open: readonly CommandRecord[],
  now: number,
  confirmTimeoutMs: ReadonlyMap<string, number>,
): OpenCommands {
  let accepted = 0;
  let dispatched = 0;
  let oldest: number | null = null;
  const ages: number[] = [];
  const stuck: StuckCommand[] = [];
  for (const r of open) {
    if (r.state === 'accepted') accepted++;
    else if (r.state === 'dispatched') dispatched++;
    else continue;
    const age = Math.max(0, now - r.acceptedAt);
    ages.push(age);
    oldest = oldest === null ? age : Math.max(oldest, age);
    // A device no longer configured has no confirm timeout: stuck from its deadline.
    const overdue = now - (r.deadline + (confirmTimeoutMs.get(r.device) ?? 0));
    if (overdue > 0) {
      stuck.push({
        scope: r.scope,
        key: r.key,
        device: r.device,
        state: r.state,
        ageMs: age,
        overdueMs: overdue,
      });
    }
  }
  const byAge = [
    ...OPEN_AGE_BUCKETS_S.map((le) => ({
      le: String(le),
      count: ages.filter((a) => a <= le * 1000).length,
    })),
    { le: '+Inf', count: ages.length },
  ];
  stuck.sort((a, b) => b.overdueMs - a.overdueMs);
  return { accepted, dispatched, byAge, oldestAgeMs: oldest, stuck };
}
