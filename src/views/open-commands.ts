import type { CommandRecord, JournalEvent } from '../core/journal.js';
import { summarizeOpen, takeUpAt } from '../core/open-commands.js';

/**
 * Open commands as an operator sees them (`sluicectl stuck`, `show`, the status page): each with
 * its age and deadline, and marked *stuck* when it is still open past its deadline plus its
 * device's confirm timeout (SPEC §2) — the daemon would have ended it by then, so it needs a
 * person — or, on a device whose command recovery took up (its history's take-up note), past
 * the end of that take-up's window, as `/readyz` judges it (core/open-commands.ts). Pure: built
 * from journal records.
 */

export interface StuckItem {
  readonly key: string;
  readonly scope: string;
  readonly device: string;
  readonly action: string;
  readonly position: number | null;
  readonly state: string;
  readonly intake: string;
  readonly seq: number | null;
  readonly acceptedAt: string;
  readonly ageMs: number;
  readonly deadline: string;
  /** Past its deadline plus its device's confirm timeout (SPEC §2). */
  readonly stuck: boolean;
  /** How long past deadline + confirm timeout; null when not (yet) stuck. */
  readonly overdueMs: number | null;
  /** The device's confirm timeout; null when the configuration does not know the device. */
  readonly confirmTimeoutMs: number | null;
  readonly lastEvent: { readonly at: string; readonly detail: string } | null;
}

export function stuckItems(
  open: readonly CommandRecord[],
  olderThanMs: number,
  now: number,
  confirmTimeouts: ReadonlyMap<string, number> | null,
  /** The command's history, oldest first. */
  history: (record: CommandRecord) => readonly JournalEvent[],
): StuckItem[] {
  const timeouts = confirmTimeouts ?? new Map<string, number>();
  const histories = new Map<CommandRecord, readonly JournalEvent[]>();
  const historyOf = (r: CommandRecord): readonly JournalEvent[] => {
    let events = histories.get(r);
    if (events === undefined) {
      events = history(r);
      histories.set(r, events);
    }
    return events;
  };
  const overdue = new Map(
    summarizeOpen(open, now, timeouts, { takenUpAt: (r) => takeUpAt(historyOf(r)) }).stuck.map(
      (s) => [`${s.scope}\0${s.key}`, s.overdueMs],
    ),
  );
  return open
    .filter((r) => now - r.acceptedAt >= olderThanMs)
    .map((r) => {
      const late = overdue.get(`${r.scope}\0${r.key}`) ?? null;
      const event = historyOf(r).at(-1);
      return {
        key: r.key,
        scope: r.scope,
        device: r.device,
        action: r.action,
        position: r.position,
        state: r.state,
        intake: r.intake,
        seq: r.seq,
        acceptedAt: new Date(r.acceptedAt).toISOString(),
        ageMs: Math.max(0, now - r.acceptedAt),
        deadline: new Date(r.deadline).toISOString(),
        stuck: late !== null,
        overdueMs: late,
        confirmTimeoutMs: timeouts.get(r.device) ?? null,
        lastEvent:
          event === undefined
            ? null
            : { at: new Date(event.at).toISOString(), detail: event.detail },
      };
    });
}
