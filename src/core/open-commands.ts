import type { OpenState } from './command.js';
import type { CommandRecord, JournalEvent } from './journal.js';

/**
 * The open (non-terminal) commands at a glance, for `/metrics` and `/readyz`. A command is
 * *stuck* when it is still open past its deadline plus its confirm timeout (SPEC §2): by then
 * the pipeline would have ended it, so something needs a person (a device no longer
 * configured, a journal that cannot be written, a bug) — unless a worker is settling its
 * device's command taken up by recovery (docs/spec-notes.md, "Every open command ends"): that
 * reads the controller for the longest of the confirm timeout, the unreachable grace and the
 * time to the deadline from its take-up, so a command in doubt at a restart whose deadline
 * passed while the gateway was down is past its deadline plus confirm timeout while everything
 * works as designed. Its device's open commands are stuck only once that window has ended too.
 */

/**
 * How long taking up an open command keeps trying to reach its device at least, even past its
 * deadline (the pipeline's `unreachableGraceMs`): a driver may need that long to reconnect.
 */
export const UNREACHABLE_GRACE_MS = 15_000;

/** Upper bounds (seconds) of the age buckets; the last bucket is everything older. */
export const OPEN_AGE_BUCKETS_S = [1, 10, 60, 600, 3_600] as const;

export interface StuckCommand {
  readonly scope: string;
  readonly key: string;
  readonly device: string;
  readonly state: OpenState;
  readonly ageMs: number;
  /**
   * How long past its deadline plus confirm timeout — or past the end of its device's take-up
   * window, when that ends later.
   */
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

/** How a take-up by recovery is known, and how long it settles at least. */
export interface Settling {
  /**
   * When a worker took up this dispatched command to settle it by readback (gateway ms), if
   * one holds it now; null otherwise.
   */
  readonly takenUpAt: (record: CommandRecord) => number | null;
  /** The pipeline's unreachable grace (UNREACHABLE_GRACE_MS unless configured otherwise). */
  readonly graceMs?: number;
}

/**
 * The note the confirmation loop journals when it takes up a dispatched command to settle it by
 * readback (dispatched → dispatched): written by an earlier life of the daemon (`write` null),
 * or taken up again in this one. takeUpAt() finds it; both live here so that they cannot drift.
 */
export function takeUpNote(seq: number, write: { readonly acked: boolean } | null): string {
  return write === null
    ? `taken up: sequence number ${seq}, written by an earlier life of the daemon; settling by readback`
    : `taken up again: sequence number ${seq} (write ${write.acked ? 'acknowledged' : 'outcome unknown'}); settling by readback`;
}

const TAKE_UP_NOTE = /^taken up(?: again)?: sequence number \d+\b.*; settling by readback$/;

/**
 * When recovery took up this command to settle it by readback, by its history: the note the
 * confirmation loop journals at the take-up (takeUpNote); null when none. For a reader of the
 * journal alone (sluicectl, the status page), which cannot see the daemon's workers: the
 * take-up's window bounds how long it counts.
 */
export function takeUpAt(history: readonly JournalEvent[]): number | null {
  for (const e of [...history].reverse()) {
    if (e.from !== e.to || e.to !== 'dispatched') continue;
    if (TAKE_UP_NOTE.test(e.detail)) return e.at;
  }
  return null;
}

export function summarizeOpen(
  open: readonly CommandRecord[],
  now: number,
  confirmTimeoutMs: ReadonlyMap<string, number>,
  settling?: Settling,
): OpenCommands {
  // Each device's take-up window, where its worker settles a command taken up by recovery: it
  // reads for the longest of the confirm timeout, the grace and the time to the deadline
  // (which deadline + confirm timeout covers below). The device's other commands wait for it.
  // Looked up only for a device with a command past its bound (a history read per command),
  // so that a journal with nothing overdue costs no lookup.
  const windows = new Map<string, number | null>();
  const windowOf = (device: string): number | null => {
    if (settling === undefined) return null;
    const known = windows.get(device);
    if (known !== undefined) return known;
    const grace = settling.graceMs ?? UNREACHABLE_GRACE_MS;
    let window: number | null = null;
    for (const r of open) {
      if (r.device !== device || r.state !== 'dispatched') continue;
      const at = settling.takenUpAt(r);
      if (at === null) continue;
      const until = at + Math.max(confirmTimeoutMs.get(r.device) ?? 0, grace);
      window = Math.max(window ?? until, until);
    }
    windows.set(device, window);
    return window;
  };
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
    // A device no longer configured has no confirm timeout (nor a worker): stuck from its
    // deadline.
    const bound = r.deadline + (confirmTimeoutMs.get(r.device) ?? 0);
    if (now <= bound) continue;
    const overdue = now - Math.max(bound, windowOf(r.device) ?? bound);
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
