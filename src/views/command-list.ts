import type { CommandRecord } from '../core/journal.js';

/**
 * A command in a list, as `sluicectl list --json` and the status page show it: who, what, where
 * it stands, and when. Pure: built from a journal record.
 */

/** One command; `--json` gives these fields, times in RFC 3339. */
export interface ListItem {
  readonly key: string;
  readonly scope: string;
  readonly device: string;
  readonly action: string;
  readonly position: number | null;
  readonly state: string;
  readonly code: string | null;
  readonly faultCode: string | null;
  readonly seq: number | null;
  readonly intake: string;
  readonly acceptedAt: string;
  /** 0 when its accepted time lies ahead of the clock (`acceptedAheadMs`). */
  readonly ageMs: number;
  /**
   * How far its accepted time lies ahead of the clock, when it does (the gateway's wall clock
   * was set back after it was accepted: its age cannot be told), as StuckItem has it; else null.
   */
  readonly acceptedAheadMs: number | null;
  readonly settledAt: string | null;
  readonly detail: string | null;
}

export function listItem(r: CommandRecord, now: number): ListItem {
  return {
    key: r.key,
    scope: r.scope,
    device: r.device,
    action: r.action,
    position: r.position,
    state: r.state,
    code: r.code,
    faultCode: r.faultCode,
    seq: r.seq,
    intake: r.intake,
    acceptedAt: new Date(r.acceptedAt).toISOString(),
    ageMs: Math.max(0, now - r.acceptedAt),
    acceptedAheadMs: r.acceptedAt > now ? r.acceptedAt - now : null,
    settledAt: r.settledAt === null ? null : new Date(r.settledAt).toISOString(),
    detail: r.detail,
  };
}

/** `open`, or `move 40%`. */
export function actionText(action: string, position: number | null): string {
  return position === null ? action : `${action} ${position}%`;
}
