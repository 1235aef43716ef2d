import { isTerminal } from '../../src/core/command.js';
import type { CommandRecord, JournalEvent } from '../../src/core/journal.js';
import { claimsOver } from './site.js';

/**
 * The campaign's I5 check over MQTT: every publish of a key the broker acknowledged is delivered
 * to the gateway's persistent session until the gateway acknowledges it, which it does only
 * once the delivery is in the journal — as the command's claim, or as a `duplicate` event of a
 * command the journal holds. So the journal holds at least as many MQTT claims of the key as
 * the broker took publishes of it, with one exception, which the contract allows
 * (docs/mqtt-api.md "Duplicates and replays"): a redelivery of a command whose settlement is on
 * disk already is acknowledged without a durability barrier of its own — the command is durable
 * long before; its `duplicate` event is an audit line that rides on the journal's next commit —
 * so a SIGKILL (or power cut) right after that PUBACK loses the event, never the command.
 *
 * Such a lost event can only be of a delivery acknowledged before a kill that came after the
 * command's settlement, of a publish sent before that kill: those are excused, no more. What the
 * check cannot tell apart, and so excuses too: the lost event of another duplicate of such a
 * command (one that came while it was in flight: an audit line as well, which its own barrier
 * should have kept), and a delivery acknowledged before its claim committed (the I5 violation:
 * a new command lost) when the command was then claimed again, settled, and killed once more
 * after its settlement. A lost claim of a command never killed after its settlement is found.
 */

/** What the check knows of one key. */
export interface KeyDeliveries {
  /** When each publish of the key that the broker acknowledged was sent (epoch ms). */
  readonly sentAt: readonly number[];
  readonly record: Pick<CommandRecord, 'state' | 'settledAt'> | undefined;
  /** The record's journal history (empty without a record). */
  readonly history: readonly JournalEvent[];
}

export interface ClaimShortfall {
  readonly published: number;
  readonly claims: number;
  /** Deliveries that may be replays whose duplicate event was lost with a kill. */
  readonly excused: number;
}

/**
 * Null when the journal accounts for every publish the broker took (`kills`: when each SIGKILL
 * of a daemon life had ended it, epoch ms); otherwise what is missing.
 */
export function unclaimedDeliveries(
  key: KeyDeliveries,
  kills: readonly number[],
): ClaimShortfall | null {
  const published = key.sentAt.length;
  const claims = key.record === undefined ? 0 : claimsOver(key.history, 'mqtt');
  if (claims >= published) return null;
  const excused = replaysLostWithAKill(key, kills);
  if (published - claims <= excused) return null;
  return { published, claims, excused };
}

/** The publishes that may have been acknowledged as replays and lost with a later kill. */
function replaysLostWithAKill(key: KeyDeliveries, kills: readonly number[]): number {
  const r = key.record;
  if (r === undefined || !isTerminal(r.state) || r.settledAt === null) return 0;
  const settledAt = r.settledAt;
  const after = kills.filter((k) => k > settledAt);
  if (after.length === 0) return 0;
  const lastKill = Math.max(...after);
  return key.sentAt.filter((t) => t < lastKill).length;
}
