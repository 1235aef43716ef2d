import { refId, type CommandRecord, type CommandRef, type JournalEvent } from '../core/journal.js';
import { summarizeOpen, type DeviceTiming, type StuckJournal } from '../core/open-commands.js';
import { latestNeverSent, type NeverSentCause } from '../core/redispatch.js';

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
  /** 0 when its accepted time lies ahead of the clock (`acceptedAheadMs`). */
  readonly ageMs: number;
  /**
   * How far its accepted time lies ahead of the clock, when it does: the gateway's wall clock was
   * set back after it was accepted, and its age cannot be told from the clock. Null otherwise.
   */
  readonly acceptedAheadMs: number | null;
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
  /**
   * For a `dispatched` command: its latest write was never sent, as its history says
   * (core/redispatch.ts, latestNeverSent), with why, since when (ISO) and whether it goes round
   * again; null otherwise. No readback settles a write that never left the gateway.
   */
  readonly neverSent: NeverSentWrite | null;
  /**
   * For an `accepted` command: the first (at most 3) of the open commands its device runs before
   * it, one at a time — one written and not settled first, then those accepted before it; for an
   * accepted stop, only the stops before it still waiting to run (SPEC §2: a stop is not queued
   * behind travel, nor behind a stop in flight whose effect is not seen). For a `dispatched` one:
   * the stops accepted after it, written or still to be, which paused it. Empty when nothing is
   * ahead.
   */
  readonly waitsBehind: readonly AheadCommand[];
  /** How many open commands its device runs before it (`waitsBehind` shows the first 3). */
  readonly waitsBehindCount: number;
}

/** A dispatched command's latest write that never left the gateway (StuckItem.neverSent). */
export interface NeverSentWrite {
  readonly cause: NeverSentCause;
  /** When its history said so: the take-up's line, the driver's refusal, the withdrawal. */
  readonly since: string;
  /** It goes round again: a fresh read decides, then its write. */
  readonly roundAgain: boolean;
  /**
   * The PLC its device is on (`plcs.<name>`), which `no-connection` names; null when the
   * configuration is not known (sluicectl without one).
   */
  readonly plc: string | null;
}

/** An open command of the same device, ahead of the one listed. */
export interface AheadCommand {
  readonly key: string;
  readonly scope: string;
  readonly state: string;
}

/** How many of the commands ahead are named: a queue of thousands is a count, not a list. */
const AHEAD_SHOWN = 3;

/**
 * `doubt-1 (dispatched) on its device, which runs one command at a time`: the words of
 * `sluicectl show` and the status page for the commands an accepted one waits behind.
 */
export function aheadText(ahead: readonly AheadCommand[], count: number): string {
  const shown = ahead.map((a) => `${a.key} (${a.state})`);
  const more = count > shown.length ? ` and ${count - shown.length} more` : '';
  return `${shown.join(', ')}${more} on its device, which runs one command at a time`;
}

/**
 * `the stop stop-1 (accepted), which came after it and paused it: …`: what a written command a
 * stop paused waits for, in the words of `sluicectl show` and the status page. The stop pauses it
 * from its acceptance (SPEC §2; Preemption acts at the claim), not from its write: a stop whose
 * read of the device is still to come has paused the travel already.
 */
export function pausedText(stops: readonly AheadCommand[], count: number): string {
  const more = count > stops.length ? ` and ${count - stops.length} more` : '';
  const which = count > 1 ? 'the stops' : 'the stop';
  const those = count > 1 ? 'those settle' : 'that settles';
  return (
    `${which} ${stops.map((a) => `${a.key} (${a.state})`).join(', ')}${more}, which came ` +
    `after it and paused it: once ${those}, the daemon takes this one up again by reading its ` +
    'device, never writing it again'
  );
}

/**
 * What becomes of an accepted command still waiting past its deadline: when its device takes it,
 * freshness is judged first (I3; execution.ts, carryOut), and it ends `rejected`
 * `STALE_COMMAND` without a read or a write — unless a stop supersedes it or an operator resolves
 * it first, neither of which writes it either. "Waiting for the command ahead" alone read as if
 * it would still run once the device was free.
 */
export function expiredText(deadline: number, now: number): string | null {
  if (now <= deadline) return null;
  return 'its deadline has passed: it will not be written; when its turn comes it ends rejected STALE_COMMAND';
}

/**
 * `a readback that settles its write (seq 7), sent 3s ago: until one does, …`: what a written
 * command no stop paused waits for, in the words of `sluicectl show` and the status page. Its
 * dispatch's own history line (the clocks it was judged on) says nothing of why it is open.
 */
export function settlingText(seq: number | null, sentAgo: string | null): string {
  const which = seq === null ? '' : ` (seq ${seq})`;
  const sent = sentAgo === null ? '' : `, sent ${sentAgo}`;
  return (
    `a readback that settles its write${which}${sent}: until one does, the write's effect is ` +
    'unknown (the device may move)'
  );
}

/**
 * `its write (seq 7) was never sent (withheld: …); being decided again since …`: what a written
 * command waits for when its latest write never left the gateway (StuckItem.neverSent), in the
 * words of `sluicectl show` and the status page; `since` as each view gives a time. A readback
 * that settles that write, as settlingText says, would never come: the command is decided again
 * (a fresh read, then its write), waits for a connection to its PLC first (named: the operator
 * goes to that one), or, when a write of it before may have left the gateway, a readback
 * settles that one.
 */
export function neverSentText(seq: number | null, never: NeverSentWrite, since: string): string {
  const which = seq === null ? '' : ` (seq ${seq})`;
  const plc = never.plc === null ? 'its PLC' : `its PLC ${never.plc}`;
  const why =
    never.cause === 'withheld'
      ? 'withheld: the journal failed before its dispatch was on disk'
      : never.cause === 'withdrawn'
        ? 'withdrawn before it was sent'
        : `no connection to ${plc}`;
  if (!never.roundAgain) {
    return (
      `its latest write${which} was never sent (${why}; said ${since}): a readback settles its ` +
      'write before it, whose effect is unknown until then (the device may move)'
    );
  }
  const course =
    never.cause === 'no-connection'
      ? `waiting for a connection to ${plc} since ${since}, then a fresh read decides`
      : `being decided again since ${since}: a fresh read`;
  return `its write${which} was never sent (${why}); ${course}, then its write`;
}

/**
 * What each open command waits for on its device, read from the journal alone: the device runs
 * one command at a time, in the order the journal took them (its ids: the order the daemon
 * queues them, also after a restart — accepted_at would reverse two commands taken either side
 * of a step back of the gateway's clock), and a written one holds it until settled; a stop is
 * written at once, and pauses a written command until it settles. `open` is in the journal's
 * order (Journal.listOpen). Without this an operator saw "accepted" and no reason it had not run.
 */
function aheadOfEach(
  open: readonly CommandRecord[],
): (record: CommandRecord) => { readonly first: AheadCommand[]; readonly count: number } {
  // Per device, in the journal's order, and each command's place there: a queue of thousands
  // is counted by its place, not scanned for each of its commands.
  const byDevice = new Map<string, CommandRecord[]>();
  const place = new Map<string, number>();
  for (const r of open) {
    const list = byDevice.get(r.device) ?? [];
    place.set(refId(r), list.length);
    list.push(r);
    byDevice.set(r.device, list);
  }
  const written = new Map<string, { readonly record: CommandRecord; readonly at: number }[]>();
  for (const [device, list] of byDevice) {
    written.set(
      device,
      list.flatMap((record, at) => (record.state === 'dispatched' ? [{ record, at }] : [])),
    );
  }
  return (record) => {
    const id = refId(record);
    const at = place.get(id) ?? Infinity;
    if (record.state === 'dispatched') {
      // A stop accepted after it has paused it (SPEC §2), from the stop's acceptance, written or
      // not yet (its read of the device still to come): travel, and a stop in flight too — a
      // later stop takes a stop over at its claim when that one's effect is not seen
      // (Preemption.stopOvertakes), as always after a restart, and a stop whose effect is seen
      // settles at its next readback, before anyone reads this. Said paused only once the later
      // stop was written, a stop overtaken while the device did not answer the later one's read
      // was said to wait for nothing. It is taken up again once the stops settle.
      const stops = (byDevice.get(record.device) ?? [])
        .slice(at + 1)
        .filter((r) => r.action === 'stop');
      return {
        first: stops
          .slice(0, AHEAD_SHOWN)
          .map((o) => ({ key: o.key, scope: o.scope, state: o.state })),
        count: stops.length,
      };
    }
    if (record.state !== 'accepted') return { first: [], count: 0 };
    const list = byDevice.get(record.device) ?? [];
    if (record.action === 'stop') {
      // SPEC §2, a stop is not queued behind travel: the written command it found is paused
      // until it settles, and those accepted before it end superseded. Only a stop still waiting
      // to run goes first; a stop in flight (written) is overtaken by this one when its effect
      // is not seen, and settles at its next readback when it is (Preemption.stopOvertakes):
      // the journal does not say which, and the first is the one that lasts.
      const stops = list
        .slice(0, Math.min(at, list.length))
        .filter((r) => r.action === 'stop' && r.state === 'accepted');
      return {
        first: stops
          .slice(0, AHEAD_SHOWN)
          .map((o) => ({ key: o.key, scope: o.scope, state: o.state })),
        count: stops.length,
      };
    }
    // Those before it in the journal's order came in before it: every one is ahead.
    const before = Math.min(at, list.length);
    // And one written though it came in after it (a stop, dispatched at once): it holds the device.
    const writing = written.get(record.device) ?? [];
    const writtenAfter = writing.filter((w) => w.at > at).length;
    // The written ones first (they hold the device now), then in the journal's order.
    const first = [
      ...writing.map((w) => w.record),
      ...list
        .slice(0, Math.min(before, AHEAD_SHOWN + writing.length))
        .filter((r) => r.state !== 'dispatched'),
    ]
      .slice(0, AHEAD_SHOWN)
      .map((o) => ({ key: o.key, scope: o.scope, state: o.state }));
    return { first, count: before + writtenAfter };
  };
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
  const aheadOf = aheadOfEach(open);
  const stuck = new Map(
    summarizeOpen(open, now, {
      devices: timings,
      journal: { history: historyOf, stopsAfter: (r, limit) => journal.stopsAfter(r, limit) },
    }).stuck.map((s) => [refId(s), s]),
  );
  // Listed oldest first (what each waits behind is judged in the journal's order above). No
  // bound (0) lists every one: after the gateway clock stepped back, a command accepted before
  // the step has a negative age, and was left out of the page's list and of `show`. Nor does a
  // bound leave one out: its age cannot be told, and it may be older than any bound.
  return open
    .filter(
      (r) =>
        listed(r) && (olderThanMs <= 0 || r.acceptedAt > now || now - r.acceptedAt >= olderThanMs),
    )
    .sort((a, b) => a.acceptedAt - b.acceptedAt)
    .map((r) => {
      const late = stuck.get(refId(r)) ?? null;
      const behind = aheadOf(r);
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
        acceptedAheadMs: r.acceptedAt > now ? r.acceptedAt - now : null,
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
        neverSent: neverSentOf(r, historyOf(r), timings?.get(r.device)?.plc ?? null),
        waitsBehind: behind.first,
        waitsBehindCount: behind.count,
      };
    });
}

function neverSentOf(
  r: CommandRecord,
  history: readonly JournalEvent[],
  plc: string | null,
): NeverSentWrite | null {
  if (r.state !== 'dispatched' || r.seq === null) return null;
  const never = latestNeverSent(history, r.seq);
  return never === null
    ? null
    : {
        cause: never.cause,
        since: new Date(never.at).toISOString(),
        roundAgain: never.roundAgain,
        plc,
      };
}
