import { isTerminal, type OpenState } from './command.js';
import {
  refId,
  type CommandRecord,
  type CommandRef,
  type JournalEvent,
  type OpenCounts,
  type PastDeadline,
} from './journal.js';
import { latestWriteMarked, latestWriteUnsent, withheldLine, withheldNote } from './redispatch.js';

/**
 * The open (non-terminal) commands at a glance, for `/metrics`, `/readyz`, `sluicectl stuck` and
 * the status page — one rule for all, built from the journal alone, so that the daemon and a
 * reader of the journal beside it (sluicectl) name the same commands stuck, for the same reason.
 * A command is *stuck* when it is still open past its bound (SPEC §2: its deadline plus its
 * confirm timeout): by then the pipeline would have ended it, so something needs a person (a
 * device no longer configured, a journal that cannot be written, a bug). Two things keep a
 * command open past that bound while everything works as designed (docs/spec-notes.md, "Every
 * open command ends"), and its history shows both:
 * - Recovery took it up (its take-up note): its worker reads the controller for the longest of
 *   the confirm timeout, its PLC's unreachable grace, the time to the deadline and the time past
 *   the proof that an earlier life's write was not applied (takeUpReach) from the take-up
 *   (again from a re-dispatch it made then: readback-confirmation.ts).
 * - A stop paused it (SPEC §2, "stop is not queued behind travel"; preemption.ts): it waits
 *   for the stop, which is bounded by its own deadline plus confirm timeout, and is then taken
 *   up again by readback as above.
 * Its device's other open commands wait behind it, so they share that window (not the stop
 * that paused it, which goes first). The daemon knows more (which worker holds what) but uses
 * no more: a command its worker dropped is stuck once the window its history gives has ended.
 */

/**
 * How long taking up an open command keeps trying to reach its device at least, even past its
 * deadline, unless its PLC sets its own (`plcs.<name>.unreachableGraceMs`): a driver may need
 * that long to reconnect.
 */
export const UNREACHABLE_GRACE_MS = 15_000;

/** What the stuck rule knows of a configured device: the two lengths its windows are made of. */
export interface DeviceTiming {
  /** Its profile's confirm timeout. */
  readonly confirmTimeoutMs: number;
  /** Its PLC's unreachable grace (UNREACHABLE_GRACE_MS unless the PLC sets its own). */
  readonly unreachableGraceMs: number;
  /**
   * How long a take-up reads at least, past the moment an earlier life's write can be proven not
   * applied (earlier-write-bounds.ts, takeUpReach: the daemon's, from its lanes). Omitted (a
   * reader without the daemon's lanes: sluicectl): none.
   */
  readonly takeUpReachMs?: number;
  /**
   * Its PLC's name (`plcs.<name>`), which the operator's views give for a write that found no
   * connection to it (views/open-commands.ts). Omitted: unnamed; the stuck rule does not use it.
   */
  readonly plc?: string;
}

/** Upper bounds (seconds) of the age buckets; the last bucket is everything older. */
export const OPEN_AGE_BUCKETS_S = [1, 10, 60, 600, 3_600] as const;

export interface StuckCommand {
  readonly scope: string;
  readonly key: string;
  readonly device: string;
  readonly state: OpenState;
  readonly ageMs: number;
  /** How long past its bound (`reason`). */
  readonly overdueMs: number;
  /** When it passed its bound (gateway ms). */
  readonly stuckSince: number;
  /**
   * The bound it is past, in the words every reporter uses after "past" (/readyz, sluicectl,
   * the status page): "its deadline plus its 8 s confirm timeout", ….
   */
  readonly reason: string;
}

export interface OpenCommands {
  readonly accepted: number;
  readonly dispatched: number;
  /** Cumulative counts: open commands at most `le` seconds old ("+Inf": all). */
  readonly byAge: readonly { readonly le: string; readonly count: number }[];
  readonly oldestAgeMs: number | null;
  /**
   * The stuck ones, the most overdue first: every one (summarizeOpen), or in the daemon's
   * summary (countOpen) the STUCK_LISTED_PER_DEVICE most overdue of each device (the rest
   * counted, not read), with those its rule needs whole (dispatched ones, a stop that paused one).
   */
  readonly stuck: readonly StuckCommand[];
  /** How many are stuck, listed or not. */
  readonly stuckCount: number;
}

/**
 * The stuck commands of a device that the daemon's summary lists (its most overdue): the rest
 * are counted. Every open command of a device no longer configured is stuck from its deadline,
 * and a device removed with a backlog leaves thousands; a configured device whose worker cannot
 * end its commands (its journal failing its writes) piles up as many past their deadline plus
 * confirm timeout. Read whole at every /metrics scrape and /readyz probe otherwise; /readyz
 * names five, the status page and the gauge count them, `sluicectl stuck` lists them all.
 */
export const STUCK_LISTED_PER_DEVICE = 32;

/** What the rule reads of the journal beyond the open commands (the daemon's or read-only). */
export interface StuckJournal {
  /** The command's history, oldest first. */
  history(ref: CommandRef): readonly JournalEvent[];
  /** The stops on its device claimed after it, newest first (Journal.stopsAfter). */
  stopsAfter(ref: CommandRef, limit: number): readonly CommandRecord[];
}

export interface StuckRule {
  /**
   * Each configured device's confirm timeout and unreachable grace, as its worker uses them. A
   * device not in it has no worker: its commands are stuck from their deadline. Null when the
   * configuration is unknown (sluicectl without one): every command is then judged from its
   * deadline alone, and the reason says why.
   */
  readonly devices: ReadonlyMap<string, DeviceTiming> | null;
  readonly journal: StuckJournal;
}

/**
 * The note the confirmation loop journals when it takes up a dispatched command to settle it by
 * readback (dispatched → dispatched): written by an earlier life of the daemon (`write` null),
 * taken up again in this one, or `withheld` by this one (its dispatch's barrier failed, so it
 * was never sent: lane.ts) or by an earlier life (whose take-up said so before the process
 * ended; redispatch.ts, withheldNote). takeUpAt() finds it; both live here so that they cannot
 * drift.
 */
export function takeUpNote(
  seq: number,
  write: { readonly acked: boolean } | null,
  withheld: boolean | 'by an earlier life' = false,
): string {
  if (withheld !== false) return withheldNote(seq, withheld, 'readback');
  return write === null
    ? `taken up: sequence number ${seq}, written by an earlier life of the daemon; settling by readback`
    : `taken up again: sequence number ${seq} (write ${write.acked ? 'acknowledged' : 'outcome unknown'}); settling by readback`;
}

const TAKE_UP_NOTE = /^taken up(?: again)?: sequence number \d+\b.*; settling by readback$/;

/**
 * Whether the latest write of sequence number `seq` in this history was withheld, never sent:
 * its dispatch's barrier failed and the take-up says so (redispatch.ts, withheldNote), with no
 * dispatch or redispatch after it. The daemon's own line, journaled when it took the command
 * up: an echo of that number can only be another master's write.
 */
export function latestWriteWithheld(history: readonly JournalEvent[], seq: number): boolean {
  return latestWriteMarked(history, withheldLine(seq));
}

/**
 * Whether the history shows the latest write of sequence number `seq` never sent: withdrawn
 * before it was sent (the daemon's own line, unsentLine, which the take-up of a dispatched
 * command goes by too), or withheld when its dispatch could not be made durable (the take-up's
 * own line), and not dispatched again since. It never left the gateway: an echo of its number
 * can only be another master's (late-echo.ts), and nothing of it can reach the controller
 * after a stop that preempted it (preemption.ts).
 */
export function latestWriteNeverSent(history: readonly JournalEvent[], seq: number): boolean {
  return latestWriteUnsent(history, seq) || latestWriteWithheld(history, seq);
}

/**
 * When recovery took up this command to settle it by readback, by its history: the note the
 * confirmation loop journals at the take-up (takeUpNote); null when none. The daemon and the
 * readers of the journal alone (sluicectl, the status page) go by it alike: the take-up's
 * window bounds how long it counts.
 */
export function takeUpAt(history: readonly JournalEvent[]): number | null {
  for (const e of [...history].reverse()) {
    if (e.from !== e.to || e.to !== 'dispatched') continue;
    if (TAKE_UP_NOTE.test(e.detail)) return e.at;
  }
  return null;
}

/** A device's settling window: until when its commands wait, and why (the words after "past"). */
interface Window {
  readonly until: number;
  readonly reason: (key: string) => string;
  /** The stop that paused the command: it goes first, so it does not wait for the window. */
  readonly notFor: string | null;
  /** That stop's record (countOpen hands it over to the rule whatever its place). */
  readonly stop: CommandRecord | null;
}

export function summarizeOpen(
  open: readonly CommandRecord[],
  now: number,
  rule: StuckRule,
): OpenCommands {
  return summarize(open, now, rule, windowsFrom(open, rule));
}

/** Each device's settling windows, by device (summarizeOpen, countOpen). */
type WindowsOf = (device: string, timing: DeviceTiming) => readonly Window[];

/**
 * Each device's windows, from its dispatched commands among `open` (read when first asked, then
 * kept): looked up only for a device with a command past its deadline plus confirm timeout (a
 * history read per dispatched command), so that a journal with nothing overdue costs no lookup.
 */
function windowsFrom(open: readonly CommandRecord[], rule: StuckRule): WindowsOf {
  const windows = new Map<string, readonly Window[]>();
  return (device, timing) => {
    const known = windows.get(device);
    if (known !== undefined) return known;
    const found: Window[] = [];
    for (const r of open) {
      if (r.device !== device || r.state !== 'dispatched') continue;
      const w = settlingWindow(r, timing, rule.journal);
      if (w !== null) found.push(w);
    }
    windows.set(device, found);
    return found;
  };
}

function summarize(
  open: readonly CommandRecord[],
  now: number,
  rule: StuckRule,
  windowsOf: WindowsOf,
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
    const timing = rule.devices?.get(r.device);
    let bound: number;
    let reason: string;
    if (timing === undefined) {
      // A device no longer configured has no confirm timeout (nor a worker): stuck from its
      // deadline.
      bound = r.deadline;
      reason =
        rule.devices === null
          ? 'its deadline (no configuration: its confirm timeout is unknown)'
          : 'its deadline (its device is not in the configuration: no worker can settle it)';
    } else {
      bound = r.deadline + timing.confirmTimeoutMs;
      reason = `its deadline plus its ${spoken(timing.confirmTimeoutMs)} confirm timeout`;
    }
    if (now <= bound) continue;
    if (timing !== undefined) {
      const id = refId(r);
      for (const w of windowsOf(r.device, timing)) {
        if (w.notFor === id || w.until <= bound) continue;
        bound = w.until;
        reason = w.reason(r.key);
      }
    }
    if (now <= bound) continue;
    stuck.push({
      scope: r.scope,
      key: r.key,
      device: r.device,
      state: r.state,
      ageMs: age,
      overdueMs: now - bound,
      stuckSince: bound,
      reason,
    });
  }
  const byAge = [
    ...OPEN_AGE_BUCKETS_S.map((le) => ({
      le: String(le),
      count: ages.filter((a) => a <= le * 1000).length,
    })),
    { le: '+Inf', count: ages.length },
  ];
  stuck.sort((a, b) => b.overdueMs - a.overdueMs);
  return { accepted, dispatched, byAge, oldestAgeMs: oldest, stuck, stuckCount: stuck.length };
}

/** What countOpen() reads of the journal (Journal.openCounts, .openDevices, .openPastDeadline). */
export interface OpenCounter {
  openCounts(acceptedSince: readonly number[]): OpenCounts;
  openDevices(): readonly string[];
  openPastDeadline(device: string, before: number, limit: number): PastDeadline;
}

/**
 * What summarizeOpen() says of every open command, without reading them all: the counts by
 * state and age from the journal's counts, the stuck ones judged by summarizeOpen() itself over
 * the commands that can be stuck, device by device. Nothing else can be: a command's bound is
 * never before its deadline plus its device's confirm timeout (its deadline alone on a device no
 * longer configured), and a device's windows come from its dispatched commands alone. A device
 * no longer configured has no windows: every one of its open commands past its deadline is
 * stuck. A configured device's accepted ones past their deadline plus confirm timeout are held
 * by each of its windows (but a stop by the pause it made, and that stop is handed over): they
 * are stuck once the last one has ended. So either way they are counted by the journal and only
 * the most overdue handed over (STUCK_LISTED_PER_DEVICE). A backlog within its deadlines costs
 * the event loop its counts, not its rows, and a backlog past them its count and a page
 * (Sweep.openCommands).
 */
export function countOpen(journal: OpenCounter, now: number, rule: StuckRule): OpenCommands {
  const counts = journal.openCounts(OPEN_AGE_BUCKETS_S.map((le) => now - le * 1000));
  const candidates: CommandRecord[] = [];
  // A device's windows, from its dispatched commands (handed over whole below, before they are
  // asked for): read once, here or by the rule.
  const windowsOf = windowsFrom(candidates, rule);
  // Stuck commands beyond those handed over.
  let unlisted = 0;
  for (const device of journal.openDevices()) {
    const timing = rule.devices?.get(device);
    if (timing !== undefined) {
      // Past its deadline plus its confirm timeout: a configured device's worker ends its
      // commands by then, so these are few unless it cannot (a journal that fails its writes, a
      // worker gone: thousands may build up). Its most overdue handed over, and its dispatched
      // ones whole (its windows come from them).
      const before = now - timing.confirmTimeoutMs;
      const past = journal.openPastDeadline(device, before, STUCK_LISTED_PER_DEVICE);
      candidates.push(...past.records);
      let listed = past.records.filter((r) => r.deadline < before).length;
      if (past.total > listed) {
        // The others are accepted ones past the bound, and each is stuck unless a window of its
        // device holds it: every window does (a stop's pause frees the stop alone, which is
        // handed over here so that the rule judges it whatever its place), so they are stuck
        // exactly when the last window has ended.
        const have = new Set(past.records.map(refId));
        let until = Number.NEGATIVE_INFINITY;
        for (const w of windowsOf(device, timing)) {
          until = Math.max(until, w.until);
          const stop = w.stop;
          if (stop === null || have.has(refId(stop))) continue;
          if (isTerminal(stop.state) || stop.deadline >= before) continue;
          have.add(refId(stop));
          candidates.push(stop);
          listed++;
        }
        if (now > until) unlisted += Math.max(0, past.total - listed);
      }
    } else {
      const past = journal.openPastDeadline(device, now, STUCK_LISTED_PER_DEVICE);
      candidates.push(...past.records);
      // Each past its deadline is stuck (summarizeOpen: no worker, no window); the dispatched
      // ones handed over within their deadline are not.
      const listed = past.records.filter((r) => r.deadline < now).length;
      unlisted += Math.max(0, past.total - listed);
    }
  }
  const { stuck } = summarize(candidates, now, rule, windowsOf);
  const all = counts.accepted + counts.dispatched;
  return {
    accepted: counts.accepted,
    dispatched: counts.dispatched,
    // An age is at most `le` seconds exactly when its command was accepted at now - le or after.
    byAge: [
      ...OPEN_AGE_BUCKETS_S.map((le, i) => ({
        le: String(le),
        count: counts.acceptedSince[i] ?? 0,
      })),
      { le: '+Inf', count: all },
    ],
    oldestAgeMs:
      counts.oldestAcceptedAt === null ? null : Math.max(0, now - counts.oldestAcceptedAt),
    stuck,
    stuckCount: stuck.length + unlisted,
  };
}

/**
 * How long a dispatched command is being settled past its deadline plus confirm timeout, by its
 * history: null when neither a take-up nor a stop holds it.
 */
function settlingWindow(
  r: CommandRecord,
  timing: DeviceTiming,
  journal: StuckJournal,
): Window | null {
  const timeout = timing.confirmTimeoutMs;
  // A take-up reads for the longest of these and the time to the deadline (take-up.ts).
  const readMs = Math.max(timeout, timing.unreachableGraceMs, timing.takeUpReachMs ?? 0);
  const history = journal.history(r);
  // The command's own window, or that of the command it waits behind on its device.
  const its = (key: string, what: string, detail: string): string =>
    key === r.key
      ? `its ${what} (${detail})`
      : `the ${what} of ${r.key}, which it waits behind on its device (${detail})`;
  // The newest stop claimed after it preempted it, unless it is a stop itself (preemption.ts).
  // Stops refused at the door preempt nothing and are not among them (Journal.stopsAfter):
  // nor may a stream of them keep a stuck command from showing.
  const stop = r.action === 'stop' ? undefined : journal.stopsAfter(r, 1)[0];
  if (stop !== undefined && !isTerminal(stop.state)) {
    // Paused: it is taken up again once the stop is terminal, which is by the stop's own
    // bound at the latest, and then read for its take-up window.
    const until = stop.deadline + timeout + readMs;
    return {
      until,
      notFor: refId(stop),
      stop,
      reason: (key) =>
        its(
          key,
          `pause for the stop ${stop.key}`,
          `the stop's deadline plus its ${spoken(timeout)} confirm timeout, then ${spoken(readMs)} to settle it by readback`,
        ),
    };
  }
  // Taken up by recovery, or again once the stop that paused it was terminal (its note comes
  // right after: until it is journaled, the stop's settlement stands in for it).
  let start: number | null = null;
  let from = '';
  const at = takeUpAt(history);
  if (at !== null) {
    start = at;
    from = `taken up ${new Date(at).toISOString()}`;
  }
  const settled = stop?.settledAt ?? null;
  if (settled !== null && (start === null || settled > start)) {
    start = settled;
    from = `the stop ${stop?.key ?? ''} settled ${new Date(settled).toISOString()}`;
  }
  if (start === null) return null;
  const begun = start;
  // The take-up reads for the longest of the confirm timeout, the grace and the time to the
  // deadline; a re-dispatch it makes reads that long again from its write (readback-confirmation.ts).
  const windowMs = Math.max(readMs, r.deadline - begun);
  const redispatch = history.findLast((e) => e.at >= begun && isRedispatch(e));
  let until = begun + windowMs;
  if (redispatch !== undefined) {
    until = redispatch.at + windowMs;
    from += `, re-dispatched ${new Date(redispatch.at).toISOString()}`;
  }
  return {
    until,
    notFor: null,
    stop: null,
    reason: (key) => its(key, 'take-up by readback', `${from}; read for ${spoken(windowMs)}`),
  };
}

function isRedispatch(e: JournalEvent): boolean {
  return e.from === 'dispatched' && e.to === 'dispatched' && e.detail.startsWith('redispatch: ');
}

/** A duration as the reasons say it: "8 s", "2 min 5 s", "1 h 3 min". */
function spoken(ms: number): string {
  const s = Math.round(ms / 1000);
  if (s < 120) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 120 ? `${m} min ${s % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}
