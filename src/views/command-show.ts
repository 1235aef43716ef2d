import type { CommandRecord, JournalEvent } from '../core/journal.js';
import type { DeviceTiming, StuckJournal } from '../core/open-commands.js';
import { buildStory, type CommandStory } from './command-story.js';
import {
  stuckItems,
  type AheadCommand,
  type NeverSentWrite,
  type StuckItem,
} from './open-commands.js';

/**
 * One command as `sluicectl show --json` and the status page's command page give it: its whole
 * story (command-story.ts) and, while it is open, how long it has been and whether it is stuck
 * (SPEC §2), judged as `sluicectl stuck` judges it: beside its device's other open commands,
 * since one recovery took up or a stop paused holds those behind it.
 */

export interface OpenStatus {
  readonly ageMs: number;
  /** How far its accepted time lies ahead of the clock (StuckItem.acceptedAheadMs); else null. */
  readonly acceptedAheadMs: number | null;
  readonly stuck: boolean;
  /** How long past its bound; null when not (yet) stuck. */
  readonly overdueMs: number | null;
  /** The bound it is past, in the words of `sluicectl stuck` and /readyz; null when not stuck. */
  readonly stuckReason: string | null;
  /** The device's confirm timeout; null when the configuration does not know the device. */
  readonly confirmTimeoutMs: number | null;
  /** Its PLC's unreachable grace; null when the configuration does not know the device. */
  readonly unreachableGraceMs: number | null;
  /** Accepted: the first open commands its device runs first (open-commands.ts); else empty. */
  readonly waitsBehind: readonly AheadCommand[];
  /** How many its device runs first. */
  readonly waitsBehindCount: number;
  /** Dispatched: its latest write was never sent (StuckItem.neverSent); else null. */
  readonly neverSent: NeverSentWrite | null;
}

export interface CommandShow extends CommandStory {
  /** Null once the command is terminal. */
  readonly open: OpenStatus | null;
}

export function showCommand(
  record: CommandRecord,
  /** The journal, read: the command's history, and (while it is open) its device's commands. */
  journal: StuckJournal & { listOpen(): readonly CommandRecord[] },
  now: number,
  /**
   * Asked only for an open command: device → confirm timeout and unreachable grace; null when
   * unknown.
   */
  timings: () => ReadonlyMap<string, DeviceTiming> | null,
): CommandShow {
  const history: readonly JournalEvent[] = journal.history(record);
  const story = buildStory(record, history);
  const same = (r: { readonly scope: string; readonly key: string }): boolean =>
    r.scope === record.scope && r.key === record.key;
  let item: StuckItem | null = null;
  if (story.outcome === null) {
    // As it was read, in its place in the journal's order (it may have settled since the list
    // was read: judged as it was, last).
    const open = journal.listOpen().filter((r) => r.device === record.device);
    const device = open.some(same) ? open.map((r) => (same(r) ? record : r)) : [...open, record];
    item =
      stuckItems(
        device,
        0,
        now,
        timings(),
        {
          history: (r) => (same(r) ? history : journal.history(r)),
          stopsAfter: (r, limit) => journal.stopsAfter(r, limit),
        },
        same,
      )[0] ?? null;
  }
  const open =
    item === null
      ? null
      : {
          ageMs: item.ageMs,
          acceptedAheadMs: item.acceptedAheadMs,
          stuck: item.stuck,
          overdueMs: item.overdueMs,
          stuckReason: item.stuckReason,
          confirmTimeoutMs: item.confirmTimeoutMs,
          unreachableGraceMs: item.unreachableGraceMs,
          waitsBehind: item.waitsBehind,
          waitsBehindCount: item.waitsBehindCount,
          neverSent: item.neverSent,
        };
  return { ...story, open };
}
