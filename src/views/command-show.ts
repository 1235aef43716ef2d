import type { CommandRecord, JournalEvent } from '../core/journal.js';
import { buildStory, type CommandStory } from './command-story.js';
import { stuckItems } from './open-commands.js';

/**
 * One command as `sluicectl show --json` and the status page's command page give it: its whole
 * story (command-story.ts) and, while it is open, how long it has been and whether it is stuck
 * (SPEC §2), judged as `sluicectl stuck` judges it.
 */

export interface OpenStatus {
  readonly ageMs: number;
  readonly stuck: boolean;
  /** How long past deadline + confirm timeout; null when not (yet) stuck. */
  readonly overdueMs: number | null;
  /** The device's confirm timeout; null when the configuration does not know the device. */
  readonly confirmTimeoutMs: number | null;
}

export interface CommandShow extends CommandStory {
  /** Null once the command is terminal. */
  readonly open: OpenStatus | null;
}

export function showCommand(
  record: CommandRecord,
  history: readonly JournalEvent[],
  now: number,
  /** Asked only for an open command: device → confirm timeout; null when unknown. */
  confirmTimeouts: () => ReadonlyMap<string, number> | null,
): CommandShow {
  const story = buildStory(record, history);
  const item =
    story.outcome === null
      ? (stuckItems([record], 0, now, confirmTimeouts(), () => history)[0] ?? null)
      : null;
  const open =
    item === null
      ? null
      : {
          ageMs: item.ageMs,
          stuck: item.stuck,
          overdueMs: item.overdueMs,
          confirmTimeoutMs: item.confirmTimeoutMs,
        };
  return { ...story, open };
}
