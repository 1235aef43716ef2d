import { refId, type CommandRecord, type CommandRef, type JournalEvent } from '../core/journal.js';
import { summarizeOpen, type DeviceTiming, type StuckJournal } from '../core/open-commands.js';

/**
 * Open commands as an operator sees them (`sluicectl stuck`, `show`, the status page): each with
 * its age and deadline, and marked *stuck* when it is still open past its bound, judged by the
 * rule `/readyz` and `/metrics` use (core/open-commands.ts): its deadline plus its device's
 * confirm timeout (SPEC §2), or the end of a window its device's history gives — a take-up by
 * recovery (at least its PLC's unreachable grace), a pause for a stop. Each stuck one says which bound, in the same words. Pure: built
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
  /** Open past its bound (SPEC §2; `stuckReason`). */
  readonly stuck: boolean;
  /** How long past its bound; null when not (yet) stuck. */
  readonly overdueMs: number | null;
  /** The bound it is past, as every reporter words it after "past"; null when not stuck. */
  readonly stuckReason: string | null;
  /** The device's confirm timeout; null when the configuration does not know the device. */
  readonly confirmTimeoutMs: number | null;
  /** Its PLC's unreachable grace; null when the configuration does not know the device. */
  readonly unreachableGraceMs: number | null;
  readonly lastEvent: { readonly at: string; readonly detail: string } | null;
}

export function stuckItems(
  /** Every open command of the devices listed: a device's commands are judged together. */
  open: readonly CommandRecord[],
  olderThanMs: number,
  now: number,
  /** Each configured device's confirm timeout and unreachable grace; null when unknown. */
  timings: ReadonlyMap<string, DeviceTiming> | null,
  journal: StuckJournal,
  /** Which of them to list (all by default). */
  listed: (record: CommandRecord) => boolean = () => true,
): StuckItem[] {
  const histories = new Map<string, readonly JournalEvent[]>();
  const historyOf = (r: CommandRef): readonly JournalEvent[] => {
    const id = refId(r);
    let events = histories.get(id);
    if (events === undefined) {
      events = journal.history(r);
      histories.set(id, events);
    }
    return events;
  };
  const stuck = new Map(
    summarizeOpen(open, now, {
      devices: timings,
      journal: { history: historyOf, stopsAfter: (r, limit) => journal.stopsAfter(r, limit) },
    }).stuck.map((s) => [refId(s), s]),
  );
  return open
    .filter((r) => listed(r) && now - r.acceptedAt >= olderThanMs)
    .map((r) => {
      const late = stuck.get(refId(r)) ?? null;
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
        overdueMs: late?.overdueMs ?? null,
        stuckReason: late?.reason ?? null,
        confirmTimeoutMs: timings?.get(r.device)?.confirmTimeoutMs ?? null,
        unreachableGraceMs: timings?.get(r.device)?.unreachableGraceMs ?? null,
        lastEvent:
          event === undefined
            ? null
            : { at: new Date(event.at).toISOString(), detail: event.detail },
      };
    });
}
