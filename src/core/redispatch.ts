import { MAX_DISPATCHES, type JournalEvent, type Observation } from './journal.js';
import { RECOVERY } from './lane.js';
import type { DeviceProfile } from './profile.js';
import { POWER_UP_ECHO } from './sequence.js';
import { sourceWindow, type SkewEstimate, type TimedReadback } from './skew.js';

/**
 * The one rule for a second write (I1), used by the live path and by recovery alike.
 *
 * A write whose outcome is unknown (no acknowledgement: a timeout, a dropped reply, a crash)
 * may be sent once more only when it is *provably not applied*:
 * - the controller echoes sequence numbers, and its echo is still the one it showed before the
 *   write (not this command's, and not anybody else's since) — and, when that is its power-up
 *   echo, over the very connection the write went out on (a restart also shows the power-up
 *   echo, and a write it had taken would be lost unseen);
 * - the device still shows the state, fault and position it had before the write;
 * - and that image is fresh: its source time, corrected by a skew measured on this very
 *   connection, lies after the moment the outcome became unknown plus the redispatch guard
 *   (the controller's worst-case time to take a write that was on its way). A frozen or stale
 *   image, or one that cannot be placed in time, proves nothing.
 * Proven not applied, it is sent again only before its deadline (I3) and only once: of a
 * command's writes, at most two may ever have left the gateway. A write its driver refused
 * unsent (WriteNotSentError, its history says so) never left it and counts for none: a command
 * whose writes found no connection goes round again as often as its deadline allows
 * (execution.ts), each time after a fresh read and a durable dispatch record.
 */

/** The parts of a readback that "unchanged" compares. */
export interface DeviceImage {
  readonly state: string;
  readonly position: number | null;
  readonly faultCode: number | null;
  readonly seq: number | null;
}

export interface RedispatchFacts {
  readonly profile: DeviceProfile;
  readonly seq: number;
  /**
   * The command's journaled writes that may have reached the controller, the one judged
   * included (1, or 2 after a re-dispatch): writes its history says were never sent
   * (writesMaybeSent) are not counted.
   */
  readonly writesMaybeSent: number;
  /**
   * The command's journaled writes, those never sent included (its `attempts`): the journal
   * takes no dispatch past MAX_DISPATCHES.
   */
  readonly dispatches: number;
  /** Wall-clock deadline of the command. */
  readonly deadline: number;
  /** The device as read before the first write. */
  readonly before: DeviceImage;
  /** The newest readback, requested after the write; it does not echo `seq`. */
  readonly readback: TimedReadback;
  /** The lane's skew estimate; used only when measured on the readback's connection. */
  readonly skew: SkewEstimate | null;
  /** The controller acknowledged the write: it arrived, whatever became of it. */
  readonly acked: boolean;
  /**
   * A readback after the write showed its echo: the controller took it. A later image without
   * the echo (a controller restarted since, its echo volatile and back at its power-up value;
   * another command taken) proves nothing of it: sent again, it would act a second time (I1).
   */
  readonly echoSeen: boolean;
  /** Monotonic time at which the write's outcome became unknown. */
  readonly unknownSinceMono: number;
  readonly nowWall: number;
  /** The readback came over the connection the write went out on (no reconnect since). */
  readonly sameConnection: boolean;
}

export type RedispatchVerdict =
  /** Provably not applied, before the deadline, first write: send it once more. */
  | { readonly kind: 'redispatch'; readonly proof: string }
  /** Provably not applied, but not to be sent again: the write never reached the controller. */
  | { readonly kind: 'not-applied'; readonly proof: string; readonly why: string }
  /** Not provable from this readback; a fresher one may prove it. */
  | { readonly kind: 'wait'; readonly reason: string }
  /** Never provable any more: whether the write was applied stays unknown. */
  | { readonly kind: 'unprovable'; readonly reason: string };

export function imageOf(observation: Observation): DeviceImage {
  return {
    state: observation.state,
    position: observation.position,
    seq: observation.seq,
    faultCode: observation.faultCode === null ? null : Number.parseInt(observation.faultCode, 16),
  };
}

/** Same state, fault, echo and (within half a percent) position. */
export function unchangedSince(before: DeviceImage, now: DeviceImage): string | null {
  if (now.seq !== before.seq) {
    // Back to the power-up value: the controller restarted (its echo is volatile), which says
    // nothing of what it took before; any other value is a command it took.
    return now.seq === POWER_UP_ECHO
      ? `the controller's echo fell from ${before.seq ?? 'none'} to ${POWER_UP_ECHO}, its power-up value (the controller restarted since)`
      : `the controller's echo moved from ${before.seq ?? 'none'} to ${now.seq ?? 'none'} (another command was taken)`;
  }
  if (now.state !== before.state) return `the device moved from ${before.state} to ${now.state}`;
  if (now.faultCode !== before.faultCode) {
    return `the fault register changed from ${before.faultCode ?? 0} to ${now.faultCode ?? 0}`;
  }
  if (
    before.position !== null &&
    now.position !== null &&
    Math.abs(now.position - before.position) >= 0.5
  ) {
    return `the position moved from ${before.position} % to ${now.position} %`;
  }
  return null;
}

/**
 * The skew only when it was measured on the connection the readback came from. A controller
 * that restarted between the two (a new connection) may have its clock set anywhere: an image
 * of the old connection placed with the new connection's estimate was measured, with a clock
 * set back an hour, as produced an hour after the write's outcome became unknown — a false
 * proof, and a second write. Callers re-measure the skew while they wait (notTaken, for a
 * preempted write), and it may then come from a new connection.
 */
function skewOfConnection(readback: TimedReadback, skew: SkewEstimate | null): SkewEstimate | null {
  return skew !== null && skew.epoch === readback.epoch ? skew : null;
}

export function judgeRedispatch(f: RedispatchFacts): RedispatchVerdict {
  if (f.acked) return { kind: 'unprovable', reason: 'the controller acknowledged the write' };
  if (f.echoSeen) return { kind: 'unprovable', reason: 'an earlier readback showed it taken' };
  if (!f.profile.controller.echoesSeq) {
    return { kind: 'unprovable', reason: 'the controller does not echo sequence numbers' };
  }
  const changed = unchangedSince(f.before, f.readback);
  if (changed !== null) return { kind: 'unprovable', reason: changed };
  if (f.before.seq === POWER_UP_ECHO && !f.sameConnection) {
    // A controller that restarted since the write (and lost a write it had taken or held)
    // would show exactly this: its power-up echo. Only a connection that never dropped rules
    // the restart out; with any other echo, a restart would show as a moved echo.
    return {
      kind: 'unprovable',
      reason: `the controller shows its power-up echo (${POWER_UP_ECHO}) and the connection was replaced since the write, as a controller restart would leave it`,
    };
  }
  if (f.readback.sourceTime === null) {
    return { kind: 'unprovable', reason: 'the controller gives no source time for its image' };
  }
  const window = sourceWindow(f.readback, skewOfConnection(f.readback, f.skew));
  if (window === null) {
    return { kind: 'wait', reason: 'no controller clock estimate on this connection yet' };
  }
  const provenAfter = f.unknownSinceMono + f.profile.timing.redispatchGuardMs;
  if (window.earliest < provenAfter) {
    const late = Math.round(provenAfter - window.earliest);
    return {
      kind: 'wait',
      reason: `the newest image is not fresh enough to prove anything (${late} ms short of the guard after the write's outcome became unknown)`,
    };
  }
  const proof = `sequence number ${f.seq} is not echoed and an image produced ${Math.round(
    window.earliest - f.unknownSinceMono,
  )} ms after the write's outcome became unknown still shows ${f.readback.state} with echo ${f.readback.seq ?? 'none'}`;
  if (f.writesMaybeSent >= 2) {
    return { kind: 'not-applied', proof, why: 'it was already dispatched twice' };
  }
  if (f.dispatches >= MAX_DISPATCHES) {
    // Its earlier writes found no connection: the one write that may have left is this one,
    // but the journal takes no further dispatch (JournalConflictError), which left the command
    // open, taken up again and again until its deadline.
    return {
      kind: 'not-applied',
      proof,
      why: `it was already dispatched ${f.dispatches} times (at most ${MAX_DISPATCHES})`,
    };
  }
  if (f.nowWall >= f.deadline) {
    return { kind: 'not-applied', proof, why: 'its deadline has passed' };
  }
  return { kind: 'redispatch', proof };
}

/**
 * Why a write whose outcome is unknown may still reach the controller after the image
 * `readback` shows, or null when it no longer can: it was acknowledged, or the image was
 * produced past the guard after its outcome became unknown. A request that timed out may still
 * be on its way (held by a gateway, in a TCP retransmission) up to the guard, and the
 * controller takes it whatever it took meanwhile: a stop written on the connection that
 * replaced the lost one can be taken first, and the write after it. Without a source time
 * placed on the gateway's clock, the moment the readback was requested stands in (the
 * controller answered after it).
 */
export function mayStillLand(
  f: Pick<RedispatchFacts, 'profile' | 'readback' | 'skew' | 'acked' | 'unknownSinceMono'>,
): string | null {
  if (f.acked) return null;
  const landsBy = f.unknownSinceMono + f.profile.timing.redispatchGuardMs;
  const produced =
    sourceWindow(f.readback, skewOfConnection(f.readback, f.skew))?.earliest ??
    f.readback.requestedMono;
  if (produced >= landsBy) return null;
  return `its write's outcome is unknown and may still reach the controller: the newest image is ${Math.round(landsBy - produced)} ms short of the guard after the outcome became unknown`;
}

/**
 * The history line that says a readback after the command's write showed the valve in LOCAL
 * (the switch at the panel, set after the command's read): from then on the command is never
 * written again, also once the valve is back in REMOTE — a second write, decided on the state
 * before the operator's hand, would act after it. Journaled so that whoever takes the command
 * up next (after a journal stall, after a restart) goes by it too (localSeenIn).
 */
export function localLine(seq: number): string {
  return `the valve shows LOCAL after the write (sequence number ${seq}): it was switched after the command's read, so the command is not written again`;
}

/** Whether a readback after the command's write was journaled showing the valve in LOCAL. */
export function localSeenIn(history: readonly JournalEvent[], seq: number): boolean {
  return history.some((event) => event.intake === RECOVERY && event.detail === localLine(seq));
}

/**
 * The history line that says a command's write was withdrawn before it was sent: the driver
 * took it out of its queue (or found it withdrawn in the step that would have sent it) and
 * rejected it with WriteNotSentError, so it never left this process and never will
 * (command-writes.ts, `withdrawn`) — or it was withdrawn while it waited to be sent again after
 * the controller had answered it busy, unprocessed (busy-write.ts; `error` says so). Either
 * way the controller processed none of it. Only that process knows it; the line is how a
 * later life learns it. `then`, what its take-up does (execution.ts, takeUpUnsent):
 * - `not-yet-written`: every write of the command before it was never sent either: it is taken
 *   up as a command not yet written;
 * - `not-sent-again`: a write of it before may have left the gateway and a stop withdrew this
 *   one (it preempted the command): it is not sent again;
 * - `round-again`: a write of it before was sent and proven not applied, and no stop withdrew
 *   this one (the daemon stopped): it goes round as after a write refused for want of a
 *   connection (provenThenUnsent), unless a stop was accepted after the command.
 */
export type UnsentThen = 'not-yet-written' | 'not-sent-again' | 'round-again';

export function unsentLine(
  seq: number,
  why: string,
  error: string,
  then: UnsentThen = 'not-yet-written',
): string {
  const next =
    then === 'not-sent-again'
      ? 'and as the command was already dispatched twice it is not sent again'
      : then === 'round-again'
        ? 'and as its write sent before this one was proven not applied, it goes round again unless a stop was accepted after the command: a fresh read decides, then its write, the second that may leave the gateway'
        : 'and it is taken up as a command not yet written';
  return `${unsentPrefix(seq)} ${why} (${error}); the controller processed none of it, ${next}`;
}

function unsentPrefix(seq: number): string {
  return `the write (sequence number ${seq}) was not sent: withdrawn`;
}

/**
 * The history line that says a command's first write was refused by its driver before it was
 * sent because there was no connection to the controller (WriteNotSentError `no-connection`:
 * the connection dropped just before, its reconnect not yet due, or the connect failed), and
 * that the command waits for the connection and goes round again (execution.ts, carryOut): a
 * fresh read, the state-machine check, then the write as its second dispatch, within its
 * deadline. Like an unsent line it says the write never left this process, and a later life, a
 * stop that preempts the command meanwhile and an operator's resolve go by it alike
 * (latestWriteUnsent).
 */
export function noConnectionLine(seq: number, error: string): string {
  return `${noConnectionPrefix(seq)} (${error}); the controller processed none of it, so the command waits for the connection and goes round again within its deadline: a fresh read decides, then the write`;
}

function noConnectionPrefix(seq: number): string {
  return `the write (sequence number ${seq}) was not sent: no connection to the controller`;
}

/** Why the command's latest write was never sent, as its history says; null when it does not. */
export type UnsentCause = 'withdrawn' | 'no-connection';

/**
 * Who withheld a command's write (its dispatch's barrier failed, so the write was never handed
 * to the driver: lane.ts, `withheld`): this process (true), or an earlier life of the daemon
 * whose take-up said so in the command's history before the process ended.
 */
export type WithheldBy = true | 'by an earlier life';

/**
 * The line a take-up journals for a command whose latest write (`seq`) was withheld, never sent
 * (`by`: who withheld it), and what it does with it (`then`): `readback`, settled by readback
 * (take-up.ts: a write of it before may have left the gateway, or a stop was accepted after a
 * withheld stop; execution.ts, writeWithheld — and every withheld command in histories of an
 * earlier version); `decided again`, handled as a command not yet written, a fresh read
 * deciding, then its write (execution.ts, takeUpUnsent), a stop's line naming the stop as it
 * did when only a stop went so; `{ proven }`, its one write that may have left (dispatch
 * `proven`) was proven not applied and every write since never sent, so it goes round again,
 * a fresh read deciding its write, the second that may leave the gateway. The daemon's own words, journaled only when nothing of the
 * write left the process: a later life, an operator's resolve and the count of the writes
 * that may have left (writesMaybeSent) learn it from them (withheldLine).
 */
export function withheldNote(
  seq: number,
  by: WithheldBy,
  then: 'readback' | 'decided again' | { readonly proven: number },
  action = '',
): string {
  const never =
    by === true
      ? 'never sent by this process (the journal failed before its dispatch was on disk)'
      : 'never sent (an earlier life of the daemon withheld it: the journal failed before its dispatch was on disk)';
  const course =
    then === 'readback'
      ? '; settling by readback'
      : then === 'decided again'
        ? `, so the ${action === 'stop' ? 'stop' : 'command'} is handled as one not yet written: a fresh read decides, then its write`
        : // `proven`: the dispatch whose write was sent and proven not applied, every write
          // since never sent (provenThenUnsent): it goes round again, as after a write refused
          // for want of a connection (execution.ts, takeUpUnsent).
          `, after its ${ordinal(then.proven)} write was sent and proven not applied, so the command goes round again: a fresh read decides, then its write, the second that may leave the gateway`;
  return `taken up: sequence number ${seq}, ${never}${course}`;
}

/** Whether an event is a take-up's line saying the write `seq` was withheld (withheldNote). */
export function withheldLine(seq: number): (event: JournalEvent) => boolean {
  const lines = new Set<string>();
  for (const by of [true, 'by an earlier life'] as const) {
    lines.add(withheldNote(seq, by, 'readback'));
    lines.add(withheldNote(seq, by, 'decided again', 'stop'));
    lines.add(withheldNote(seq, by, 'decided again'));
    for (let proven = 1; proven < MAX_DISPATCHES; proven++) {
      lines.add(withheldNote(seq, by, { proven }));
    }
  }
  return (event) =>
    event.from === 'dispatched' && event.to === 'dispatched' && lines.has(event.detail);
}

/**
 * Why a dispatched command taken up is known never sent (execution.ts, takeUpUnsent): its history
 * says so (UnsentCause), or its write was withheld when its dispatch could not be made durable
 * (`withheld`: this process's memory, or the take-up's line of this life or an earlier one).
 */
export type NeverSentCause = UnsentCause | 'withheld';

/**
 * Whether the command's latest journaled write (sequence number `seq`) was proven never sent:
 * an unsent line (unsentLine or noConnectionLine, the daemon's own) for it, with no dispatch or
 * re-dispatch journaled after it — a write journaled later may have gone out.
 */
export function latestWriteUnsent(history: readonly JournalEvent[], seq: number): boolean {
  return latestUnsentCause(history, seq) !== null;
}

/** latestWriteUnsent, with what the line said: withdrawn, or no connection to the controller. */
export function latestUnsentCause(
  history: readonly JournalEvent[],
  seq: number,
): UnsentCause | null {
  const cause = unsentCauseOf(seq);
  // An object, not a `let`: its assignments in the callback are not narrowed away.
  const latest: { cause: UnsentCause | null } = { cause: null };
  const marked = latestWriteMarked(history, (event) => {
    const found = cause(event);
    if (found === null) return false;
    latest.cause = found;
    return true;
  });
  return marked ? latest.cause : null;
}

/** What an unsent line (unsentLine, noConnectionLine) of the write `seq` says; null for any other event. */
function unsentCauseOf(seq: number): (event: JournalEvent) => UnsentCause | null {
  const withdrawn = `${unsentPrefix(seq)} `;
  const noConnection = `${noConnectionPrefix(seq)} `;
  return (event) => {
    if (event.intake !== RECOVERY || event.from !== 'dispatched' || event.to !== 'dispatched') {
      return null;
    }
    if (event.detail.startsWith(withdrawn)) return 'withdrawn';
    if (event.detail.startsWith(noConnection)) return 'no-connection';
    return null;
  };
}

/**
 * The line after the command's latest journaled write (sequence number `seq`) that says it was
 * never sent, for the operator's views (views/open-commands.ts, neverSentText): what it said
 * (NeverSentCause: withdrawn or refused for want of a connection, latestUnsentCause; withheld,
 * as its take-up said, withheldLine), when it was journaled, and whether the command goes round
 * again (a fresh read decides, then its write): no write of it may have left the gateway, or
 * its one that may have was proven not applied (provenThenUnsent). Otherwise a write before it
 * may have left, and readback settles that one. Null when no such line follows its latest write.
 */
export function latestNeverSent(
  history: readonly JournalEvent[],
  seq: number,
): { readonly cause: NeverSentCause; readonly at: number; readonly roundAgain: boolean } | null {
  const cause = unsentCauseOf(seq);
  const withheld = withheldLine(seq);
  // An object, not a `let`: its assignments in the callback are not narrowed away.
  const latest: { line: { cause: NeverSentCause; at: number } | null } = { line: null };
  const marked = latestWriteMarked(history, (event) => {
    const found = cause(event) ?? (withheld(event) ? 'withheld' : null);
    if (found === null) return false;
    latest.line = { cause: found, at: event.at };
    return true;
  });
  if (!marked || latest.line === null) return null;
  const roundAgain = writesMaybeSent(history, seq) === 0 || provenThenUnsent(history, seq) !== null;
  return { ...latest.line, roundAgain };
}

/**
 * How many of the command's journaled writes (its dispatch, then each re-dispatch) may have
 * reached the controller: all but those followed, before the next, by a line that says the
 * write never left the process — the driver never sent it (unsentLine, noConnectionLine), or
 * this process withheld it at a failed barrier and its take-up said so (withheldLine): the
 * daemon's own lines. `latest: false` leaves the latest write out: the writes before it, which
 * a re-dispatch of the latest must count — none, when every one of them was never sent
 * (redispatch rule above). A write withheld whose take-up has not said so yet is counted (a
 * write with no such line counts as one that may have left): counted, a stop withheld at its
 * dispatch and again at its re-dispatch was taken for one whose first write may have gone
 * out, and settled by readback (execution.ts, writeWithheld).
 */
export function writesMaybeSent(
  history: readonly JournalEvent[],
  seq: number,
  latest = true,
): number {
  const cause = unsentCauseOf(seq);
  const withheld = withheldLine(seq);
  const sent: boolean[] = [];
  for (const event of history) {
    if (
      (event.from === 'accepted' && event.to === 'dispatched') ||
      event.detail.startsWith('redispatch:')
    ) {
      sent.push(true);
    } else if (sent.length > 0 && (cause(event) !== null || withheld(event))) {
      sent[sent.length - 1] = false;
    }
  }
  if (!latest) sent.pop();
  return sent.filter(Boolean).length;
}

/** "first", "second", … "tenth" (MAX_DISPATCHES): a command's write by its dispatch. */
export function ordinal(n: number): string {
  return ORDINALS[n - 1] ?? `${n}th`;
}

const ORDINALS = [
  'first',
  'second',
  'third',
  'fourth',
  'fifth',
  'sixth',
  'seventh',
  'eighth',
  'ninth',
  'tenth',
];

/**
 * How the re-dispatch after a write proven not applied ends its line (readback-confirmation.ts):
 * which write it proved, by its dispatch (`n`: 1 the first). Before 2026-12-06 every such line
 * said "the first write", also when the write proven was not the first (its earlier ones refused
 * unsent for want of a connection); provenThenUnsent takes those too.
 */
export function notAppliedEnd(n: number): string {
  return `: the ${ordinal(n)} write was not applied`;
}

/** notAppliedEnd(1): the line's end for a first write, and every line's before 2026-12-06. */
export const FIRST_NOT_APPLIED = notAppliedEnd(1);

/**
 * Whether this history proves that the command's one write that may have left the gateway was
 * proven not applied and that every write of it since was never sent: of its journaled writes
 * (its dispatch, then each re-dispatch), exactly one is not followed by an unsent line; the
 * re-dispatch right after it is the one its proof made (its line: the proof of write `seq`, an
 * image produced past the guard without its echo, "the <n-th> write was not applied",
 * notAppliedEnd, or an earlier version's "the first write"); and each write after it has an
 * unsent line: refused for want of a connection (noConnectionLine) or withdrawn before it was
 * sent (unsentLine: a shutdown, a stop) — the driver proved it never left the process
 * (WriteNotSentError) — or withheld at a failed barrier, as its take-up said (withheldLine),
 * or, the latest, as the caller knows (`latestWithheld`: this process withheld it, or its
 * history's take-up says so: execution.ts, writeWithheld). Then the proven write can no longer land and none since left the
 * gateway: a write now is the second that may leave it (I1), as on the live path (execution.ts,
 * goRoundAgain). Returns the dispatch whose write was proven (1 the first), which is not always
 * the first (earlier ones refused unsent); null for any other history: a write with no unsent
 * line after it counts as one that may have left, whatever became of it (a line the journal
 * failed to take proves nothing). A stop accepted after the command is the caller's to judge.
 */
export function provenThenUnsent(
  history: readonly JournalEvent[],
  seq: number,
  latestWithheld = false,
): number | null {
  const cause = unsentCauseOf(seq);
  const withheld = withheldLine(seq);
  const proof = `redispatch: sequence number ${seq} is not echoed and an image produced `;
  const writes: { proofOf: string | null; unsent: NeverSentCause | null }[] = [];
  for (const event of history) {
    if (event.from === 'accepted' && event.to === 'dispatched') {
      writes.push({ proofOf: null, unsent: null });
    } else if (event.detail.startsWith('redispatch:')) {
      writes.push({
        proofOf:
          event.from === 'dispatched' && event.to === 'dispatched' && event.detail.startsWith(proof)
            ? event.detail
            : null,
        unsent: null,
      });
    } else {
      const found = cause(event) ?? (withheld(event) ? 'withheld' : null);
      const last = writes.at(-1);
      if (found !== null && last !== undefined) last.unsent = found;
    }
  }
  const latest = writes.at(-1);
  if (latestWithheld && latest !== undefined) latest.unsent ??= 'withheld';
  const sent = writes.filter((w) => w.unsent === null);
  const [only] = sent;
  if (sent.length !== 1 || only === undefined) return null;
  const n = writes.indexOf(only) + 1;
  const after = writes.slice(n);
  const proofOf = after[0]?.proofOf ?? null;
  if (
    proofOf === null ||
    !(proofOf.endsWith(notAppliedEnd(n)) || proofOf.endsWith(FIRST_NOT_APPLIED)) ||
    !after.every((w) => w.unsent !== null)
  ) {
    return null;
  }
  return n;
}

/**
 * Whether the latest dispatch or re-dispatch in this history is followed by an event `marked`:
 * a line the daemon journals about that write (unsent, withheld). A write journaled later may
 * have gone out.
 */
export function latestWriteMarked(
  history: readonly JournalEvent[],
  marked: (event: JournalEvent) => boolean,
): boolean {
  let found = false;
  for (const event of history) {
    if (event.from === 'accepted' && event.to === 'dispatched') found = false;
    else if (event.detail.startsWith('redispatch:')) found = false;
    else if (marked(event)) found = true;
  }
  return found;
}
