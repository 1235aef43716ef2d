import { refId, type CommandRecord, type Journal, type JournalEvent } from './journal.js';
import { PIPELINE, RECOVERY, type Lane, type LastWrite } from './lane.js';
import { LAST_DISPATCH_WINDOW } from './late-echo.js';
import { latestWriteNeverSent } from './open-commands.js';
import { resolvedWriteWas } from './operator-actions.js';
import {
  ackedWriteBoundName,
  ackedWriteSinceSendMs,
  ackedWriteTakenByMono,
  type DeviceProfile,
} from './profile.js';
import { mayStillLand } from './redispatch.js';
import type { SkewEstimate, TimedReadback } from './skew.js';
import { stopBehindWrite, type Decision } from './state-machine.js';

/**
 * The outcomes that end a written command while its write's fate is open: no readback showed
 * its echo (late-echo.ts, where the same endings are watched for a late echo). Any other ending
 * either showed the echo (the controller took the write) or had no write standing.
 */
const FATE_OPEN: ReadonlySet<string> = new Set([
  'RESOLVED_BY_OPERATOR',
  'READBACK_TIMEOUT',
  'DEVICE_UNREACHABLE',
]);

/**
 * The outcome's detail of a take-up that cannot judge its command (READBACK_TIMEOUT at once, no
 * readback taken: take-up.ts): unlike every other READBACK_TIMEOUT, it does not
 * come a confirm timeout or more after the command's write (earlierLastWrite).
 */
export const UNJUDGED_TAKE_UP =
  'taken up without a sequence number, a readback from before the write, or a profile that maps it to a write: whether it was applied cannot be judged';

/** The device's last write, of a command that has ended, which the controller may still take. */
export interface PendingWrite {
  readonly command: CommandRecord;
  readonly write: LastWrite;
  /** Why it may still be taken, as a clause of a sentence (for the history and the log). */
  readonly reason: string;
}

/**
 * The device's last write (the lane's: this process sent it), when it belongs to a command that
 * has ended with the write's fate open — an operator resolved it while the write was out, or no
 * readback showed its echo in its window — and the controller may still take it after `readback`:
 * - acknowledged, by a controller that echoes sequence numbers, and `readback`, asked for within
 *   the profile's bound on an acknowledged write (ackedWriteTakenByMono: a stated
 *   timing.ackedWriteTakenWithinMs from its acknowledgement, else the confirm timeout from its
 *   write), does not show its echo. The write is in the controller's
 *   hands (a held handshake: a PLC busy with a long task takes command writes at a later scan, in
 *   arrival order). The confirm timeout is the bound the daemon already takes for an
 *   acknowledged write (it ends READBACK_TIMEOUT after it, and Modbus 0x05 is judged so): a
 *   controller that holds one longer breaks that contract, as a write held past the redispatch
 *   guard does (mayStillLand), and the device is not held for it for ever;
 * - its outcome unknown (its answer lost) and `readback` produced before the redispatch guard
 *   after that (mayStillLand): it may still be on its way.
 * Null when none: no such write, the command's own, taken (echoed), or past its bound. A
 * controller that echoes nothing cannot show an acknowledged write taken: such a write is left
 * out, as before.
 *
 * A command judged on an image without that write — a close a no-op on CLOSED while an open
 * waits in the controller — is undone by it: the controller takes the open after the close was
 * confirmed, and the valve opens (I2). So the next command is decided only once the write is
 * seen taken, or can no longer be (execution.ts).
 */
export function previousWritePending(
  journal: Pick<Journal, 'get'>,
  lane: Lane,
  record: CommandRecord,
  readback: TimedReadback,
  skew: SkewEstimate | null,
  nowMono: number,
): PendingWrite | null {
  // The lane's last write and every write kept behind it (LastWrite.behind): a take-up's
  // stand-in for a write never sent holds nothing by itself, and the write handed to the driver
  // before it may still be taken; so may a write kept behind a stop's (preemption.ts), and, at a
  // start, a write of a device's former id (earlierLastWrite). Each is bounded by its own bound.
  // One whose outcome is unknown goes first: a stop is written at once behind an acknowledged
  // write only (stopAfterPending), and the unknown one could come after that stop.
  let found: PendingWrite | null = null;
  const seen = new Set<LastWrite>();
  for (
    let write: LastWrite | null | undefined = lane.lastWrite;
    write != null && !seen.has(write);
    write = write.behind
  ) {
    seen.add(write);
    const pending = writePending(journal, lane, record, write, readback, skew, nowMono);
    if (pending === null) continue;
    if (!pending.write.acked) return pending;
    found ??= pending;
  }
  return found;
}

/** previousWritePending for one write of the device: its command's, when it may still land. */
function writePending(
  journal: Pick<Journal, 'get'>,
  lane: Lane,
  record: CommandRecord,
  write: LastWrite,
  readback: TimedReadback,
  skew: SkewEstimate | null,
  nowMono: number,
): PendingWrite | null {
  if (write.scope === record.scope && write.key === record.key) return null;
  if (readback.seq !== null && readback.seq === write.seq) return null;
  const command = journal.get({ scope: write.scope, key: write.key });
  if (command === undefined || command.seq !== write.seq || !endedFateOpen(command)) return null;
  const { profile } = lane.binding;
  const name = writeName(command, write.seq);
  if (write.acked) {
    if (!profile.controller.echoesSeq) return null;
    // Past its bound only for a readback asked for after it: its image is then the controller's
    // after that moment. One asked for before and answered after (a slow link: a read answered
    // 700 ms after its image) showed the controller still holding the write, and a close was
    // confirmed at CLOSED on it before the controller took the open (I2).
    const takenByMono = ackedWriteTakenByMono(profile.timing, write);
    if (readback.requestedMono >= takenByMono) return null;
    const leftMs = Math.max(0, takenByMono - nowMono);
    const from =
      write.epoch === null
        ? "from this process's start, the latest an earlier life of the daemon can have sent it"
        : profile.timing.ackedWriteTakenWithinMs !== undefined && write.ackedMono !== undefined
          ? 'from its acknowledgement'
          : 'from its write';
    return {
      command,
      write,
      reason: `${name}, was acknowledged by the controller and no readback shows it taken (its echo): the controller may still take it, before any write after it (for ${Math.ceil(leftMs)} ms more, and a readback asked for after that: ${ackedWriteBoundName(profile.timing)} ${from})`,
    };
  }
  const landing = mayStillLand({
    profile,
    readback,
    skew,
    acked: false,
    unknownSinceMono: write.unknownSinceMono ?? write.sentMono,
  });
  if (landing === null) return null;
  return { command, write, reason: `${name}; ${landing}` };
}

/**
 * How the reasons name the previous write (stopAfterPendingNote's, read back by previousOf): its
 * command's key, identity (scope: keys are per identity, SPEC §2), sequence number and ending.
 * Without the identity two commands of one device could fit the same line — the same key from
 * two identities, given the same number after a wrap of the device's 16-bit numbers — and the
 * line named neither: a start whose last dispatch was a stop written behind one of them, never
 * sent, held nothing after it (earlierLastWrite), and a close was confirmed a no-op while the
 * controller still held the open (I2).
 */
function writeName(command: Pick<CommandRecord, 'key' | 'scope' | 'code'>, seq: number): string {
  return `the write of ${command.key} (identity ${command.scope}, sequence number ${seq}), which ended ${command.code ?? ''}`;
}

/**
 * writeName as lines journaled before it named the identity read: still read (a journal
 * carries them across an upgrade), the identity told by the journal alone (previousOf).
 */
function writeNameUnscoped(command: Pick<CommandRecord, 'key' | 'code'>, seq: number): string {
  return `the write of ${command.key} (sequence number ${seq}), which ended ${command.code ?? ''}`;
}

/**
 * A command ended while its write's fate is open: `failed` with one of FATE_OPEN's codes, its
 * write not shown taken by the readback it ended on, nor said never sent by the operator's
 * resolve (operator-actions.ts, resolvedWriteWas): a write this process withheld when its
 * dispatch could not be made durable cannot be taken. The lane's last write may be a take-up's
 * stand-in for it (take-up.ts), and the next command waited the guard for it — so
 * did the first command of the next life before its take-up had said so in its history.
 */
export function endedFateOpen(command: CommandRecord): boolean {
  return (
    command.state === 'failed' &&
    command.seq !== null &&
    FATE_OPEN.has(command.code ?? '') &&
    // With an observation, DEVICE_UNREACHABLE says nothing was applied (late-echo.ts, inDoubt).
    !(command.code === 'DEVICE_UNREACHABLE' && command.observed !== null) &&
    command.observed?.seq !== command.seq &&
    resolvedWriteWas(command) !== 'never sent'
  );
}

/**
 * At a start (recovery): the device's last write as the journal knows it, when an earlier life
 * of the daemon ended its command with the write's fate open — the lane's last write that life
 * had in memory, and previousWritePending went by. Without it, a close after a restart (a
 * SIGKILL, the daemon started again at once) was confirmed a no-op at CLOSED while the
 * controller still held the open an operator had resolved, and took it after (I2). The
 * device's last dispatch (Journal.lastDispatched, as late-echo.ts takes it up), not shown
 * never sent by its history nor by the operator's resolve (endedFateOpen: a write withheld and
 * resolved before its take-up said so); null when it is open (its take-up knows its write) or
 * ended otherwise. When that dispatch is a stop whose history says an operator resolved the
 * command it preempted while that command's write could still land (preemptedResolvedNote),
 * that write too, open or ended as the stop is: behind the stop's own (LastWrite.behind), or
 * alone when the stop's own is not waited for. The stop was written while it was on its way,
 * and the life that knew it held the device's next command for it (preemption.ts, afterStop).
 *
 * A device renamed across a restart (its configured address is the one the journal records
 * for `formerIds`: daemon/renamed-devices.ts) writes to the same valve as its former ids did:
 * their last writes are looked up as its own, and kept behind it. Looked up by its new id
 * alone, the write an operator resolved just before the rename was not found, and a close
 * under the new id was confirmed a no-op at CLOSED while the controller still held the open.
 *
 * The journal has no monotonic time of that write, only that it was sent before this process
 * took the journal's writer lock (Lane.earlierLivesEndedMono), as cf78dc9 counts an earlier
 * life's write for the guard: its bounds are counted from there, the latest they can end.
 * Whether the controller acknowledged it, the journal says only in an operator's resolve
 * (its detail says what the daemon knew then: operator-actions.ts, resolvedWriteWas):
 * - acknowledged: sent before the lock, taken within the profile's bound on an acknowledged
 *   write (ackedWriteBoundMs: timing.ackedWriteTakenWithinMs, or the confirm timeout) after its
 *   write if ever — so within that bound from the lock (the earlier life's, when longer:
 *   Lane.earlierWriteSentMono; a stop goes at once behind it, as in
 *   the life that knew it);
 * - its outcome unknown (its answer lost): taken within the guard after the end of its request
 *   timeout, which came before the lock plus the request timeout
 *   (Lane.earlierWriteUnknownSinceMono);
 * - READBACK_TIMEOUT, DEVICE_UNREACHABLE at the end of a readback loop's window (windowReadFor:
 *   at least the confirm timeout from the write, or from a take-up, later than the write, as
 *   the detail says): had the controller acknowledged it, that bound was over when the command
 *   ended, but for what a longer confirm timeout (this life's, or a saved one) runs past the
 *   window. Only the bound of a write of unknown outcome can still run: the request timeout and
 *   guard (Lane.earlierWriteLostSinceMono). So the first command after a restart does not wait a
 *   confirm timeout for a write whose command ended long before;
 * - READBACK_TIMEOUT, DEVICE_UNREACHABLE otherwise (a take-up that could not judge its command,
 *   UNJUDGED_TAKE_UP: at once; an ending whose detail names no window): whether an acknowledged
 *   write's bound was over is not known: as a write of unknown outcome whose answer may have
 *   been acknowledged (Lane.earlierWriteUnknownSinceMono: that bound from the lock too),
 *   or, for UNJUDGED_TAKE_UP, as below;
 * - anything else (a resolve while the write was on its way, or of a write an earlier life sent
 *   and this one had not taken up): either may hold, and taken as unknown, the safer of the
 *   two — a stop waits for it rather than going at once (a write of unknown outcome could come
 *   after it), a controller that echoes nothing is waited for too — its guard counted so that it
 *   ends no sooner than an acknowledged write's confirm timeout from the lock would.
 */
export function earlierLastWrite(
  journal: Pick<Journal, 'lastDispatched' | 'history' | 'findByKey'>,
  lane: Lane,
  formerIds: readonly string[] = [],
): LastWrite | null {
  const own = journal.lastDispatched(lane.binding.id, LAST_DISPATCH_WINDOW);
  const lasts = [own];
  for (const former of formerIds) {
    const last = journal.lastDispatched(former, LAST_DISPATCH_WINDOW);
    // Passed over when the device's own last command was accepted after it ended: a command of
    // the new id, decided by a life that waited for that write (waited for at every start, it
    // held the first command after each for up to its bound). Otherwise (the new id has
    // dispatched nothing, or only before it was renamed away and back) it may be the valve's
    // last write. Told apart by the wall times of two lives: a step of the gateway's clock back
    // after the rename keeps it waited for; only one back between the new id's earlier
    // dispatch and the rename, by more than the time between them, passes it over.
    if (own !== undefined && last?.settledAt != null && own.acceptedAt > last.settledAt) continue;
    lasts.push(last);
  }
  // Each one kept behind another (LastWrite.behind): which of them reached the valve last the
  // journal does not say for sure, and each is waited for within its own bound.
  let first: LastWrite | null = null;
  let end: LastWrite | null = null;
  for (const last of lasts) {
    const write = last === undefined ? null : lastWriteOf(journal, lane, last);
    if (write === null) continue;
    if (end === null) first = write;
    else end.behind = write;
    end = write;
    while (end.behind != null) end = end.behind;
  }
  return first;
}

/**
 * The sequence numbers of `write` and the writes kept behind it (LastWrite.behind); null when
 * there is none. At a start, a renamed device's numbers go past them (Lane.formerSeqs).
 */
export function keptSeqs(write: LastWrite | null): number[] | null {
  const seqs: number[] = [];
  const seen = new Set<LastWrite>();
  for (let w: LastWrite | null | undefined = write; w != null && !seen.has(w); w = w.behind) {
    seen.add(w);
    seqs.push(w.seq);
  }
  return seqs.length === 0 ? null : seqs;
}

/** earlierLastWrite for the commands of one device id, whose last dispatch is `last`. */
function lastWriteOf(
  journal: Pick<Journal, 'history' | 'findByKey'>,
  lane: Lane,
  last: CommandRecord,
): LastWrite | null {
  const preempted = preemptedResolved(journal, last);
  const behind = preempted?.seq == null ? null : earlierWrite(lane, preempted, preempted.seq);
  // A last dispatch whose write was never sent is no write: the device's last write is the one
  // before it. Known only for a stop written at once behind a write the controller may still
  // take (stopAfterPending): its history names that write. Any other command was decided once
  // the write before it could no longer land (execution.ts, afterPreviousWrite).
  const command = writeNeverSent(journal, last) ? decidedBehind(journal, last) : last;
  if (command?.seq == null || !endedFateOpen(command)) return behind;
  if (command !== last && writeNeverSent(journal, command)) return behind;
  const write = earlierWrite(lane, command, command.seq);
  if (behind !== null && refId(behind) !== refId(write)) write.behind = behind;
  return write;
}

/**
 * The write of `command` (ended with its fate open, written by an earlier life) as
 * earlierLastWrite gives it: its bounds counted from the lock (see there).
 */
function earlierWrite(lane: Lane, command: CommandRecord, seq: number): LastWrite {
  const { timing } = lane.binding.profile;
  const lock = lane.earlierLivesEndedMono;
  // The lock, or later when an earlier life's bound on an acknowledged write was longer than
  // this life's (ackedWriteBoundMs).
  const sent = lane.earlierWriteSentMono;
  // Whether acknowledged is not known below: it may have reached the controller up to the
  // request timeout after its sending (ackedWriteSinceSendMs).
  const acked = ackedWriteSinceSendMs(timing, lane.binding.requestTimeoutMs);
  const write = { scope: command.scope, key: command.key, seq, epoch: null };
  const resolved = resolvedWriteWas(command);
  if (resolved === 'acknowledged') {
    return { ...write, sentMono: sent, acked: true, unknownSinceMono: null };
  }
  const unknown =
    resolved === 'unknown' ||
    (command.code !== 'RESOLVED_BY_OPERATOR' && command.detail !== UNJUDGED_TAKE_UP);
  const read = resolved === null ? windowReadFor(command) : null;
  const unknownSinceMono =
    read !== null
      ? // Read for `read` ms after its write before it ended, in the life that sent it: an
        // acknowledged write's bound (ackedWriteSinceSendMs, this life's or an earlier one's when
        // longer, from the write) leaves at most what it runs past that window.
        Math.max(lane.earlierWriteLostSinceMono, sent + acked - read - timing.redispatchGuardMs)
      : unknown
        ? lane.earlierWriteUnknownSinceMono
        : Math.max(lane.earlierWriteUnknownSinceMono, sent + acked - timing.redispatchGuardMs);
  return { ...write, sentMono: lock, acked: false, unknownSinceMono };
}

/** The details that end a readback loop whose window ran out (readback-confirmation.ts). */
const WINDOW_ENDED: Readonly<Record<string, RegExp>> = {
  READBACK_TIMEOUT: /^not confirmed within (\d+(?:\.\d+)?) ms: /,
  DEVICE_UNREACHABLE:
    /^no readback after the write within (\d+(?:\.\d+)?) ms; the command's effect is unknown$/,
};

/**
 * How long (ms) the readback loop read for a command's latest write before it ended the
 * command READBACK_TIMEOUT or DEVICE_UNREACHABLE with no readback, as its detail says: that
 * loop ends only once the monotonic clock of the life that ran it has passed the write plus
 * the window (its confirmByMono: a first write's or a second's sentMono, or a take-up's start,
 * later than the write, plus the window: at least the confirm timeout). A duration measured on
 * the monotonic clock, which no step of the wall clock fakes. Null for any other ending — a
 * resolve (it may come at any moment after the write), a take-up that could not judge its
 * command (at once), a proof not applied, a deadline — which proves no such window.
 */
export function windowReadFor(
  command: Pick<CommandRecord, 'code' | 'detail' | 'observed'>,
): number | null {
  const pattern = WINDOW_ENDED[command.code ?? ''];
  if (pattern === undefined || command.detail === null) return null;
  if (command.code === 'DEVICE_UNREACHABLE' && command.observed !== null) return null;
  const match = pattern.exec(command.detail);
  const ms = match?.[1] === undefined ? NaN : Number(match[1]);
  return Number.isFinite(ms) ? ms : null;
}

/**
 * Whether the command's latest write was never sent: its history says it was withdrawn or
 * withheld (latestWriteNeverSent), or the operator's resolve says it was withheld.
 */
function writeNeverSent(journal: Pick<Journal, 'history'>, command: CommandRecord): boolean {
  if (command.seq === null) return false;
  if (resolvedWriteWas(command) === 'never sent') return true;
  return latestWriteNeverSent(journal.history(command), command.seq);
}

/**
 * The command whose write a stop was decided behind (its stopAfterPendingNote line, as its
 * take-up reads it: stopTakenUpAfterPending); null for any other command, or a line that
 * names no command for sure.
 */
function decidedBehind(
  journal: Pick<Journal, 'history' | 'findByKey'>,
  stop: CommandRecord,
): CommandRecord | null {
  if (stop.action !== 'stop') return null;
  const note = decisionNote(journal.history(stop));
  const fits = note === null ? [] : commandsNamed(journal, stop, note);
  // The read the stop's dispatch was decided on (its observedBefore) shows that write taken (its
  // echo): no stop is decided behind a write on a read that shows it taken (writePending), so
  // the line is not this dispatch's. A life journaled it and ended before its dispatch, and the
  // life that dispatched the stop decided on its read alone, behind no write. Taken for the
  // decision, it held the next command for a write the controller had taken before the stop.
  // (Every command that fits the line has its sequence number.)
  const seq = fits[0]?.seq;
  if (seq != null && stop.observedBefore?.seq === seq) return null;
  // A line of an earlier version (no identity) may fit two commands: the same key from two
  // identities, with the same number after a wrap. Here the next command is held for the write
  // or not: one that may still be taken is waited for (the wait is the safe side, bounded; what
  // the wait looks for, that number's echo, is the same for both).
  return fits.find((c) => endedFateOpen(c) && !writeNeverSent(journal, c)) ?? fits[0] ?? null;
}

/** How the history line of a stop begins that names a preempted write (preemptedResolvedNote). */
const PREEMPTED_RESOLVED = 'the command this stop preempted was resolved by an operator: ';

/**
 * The history line of a stop whose preempted command an operator resolved while its write
 * could still land (endedFateOpen; preemption.ts, resolvedUnderStop): the stop waits for that
 * write, and the device's next command after it (afterStop), in this life; a later one goes by
 * this line (earlierLastWrite).
 */
export function preemptedResolvedNote(command: CommandRecord & { readonly seq: number }): string {
  return `${PREEMPTED_RESOLVED}${writeName(command, command.seq)}, may still reach the controller after this stop's write; the device's next command waits for it`;
}

/**
 * The command a stop's history names in a preemptedResolvedNote line, when its write's fate is
 * still open by the journal (its ending, and its history: not shown never sent); null for any
 * other command, or a line that names none.
 */
function preemptedResolved(
  journal: Pick<Journal, 'history' | 'findByKey'>,
  stop: CommandRecord,
): CommandRecord | null {
  if (stop.action !== 'stop') return null;
  for (const event of journal.history(stop)) {
    if (event.intake !== PIPELINE || !event.detail.startsWith(PREEMPTED_RESOLVED)) continue;
    for (const command of commandsNamed(journal, stop, event.detail, PREEMPTED_RESOLVED)) {
      if (endedFateOpen(command) && !writeNeverSent(journal, command)) return command;
    }
  }
  return null;
}

/**
 * A stop's decision when the device's previous write may still be taken (`actual`: the table's,
 * on the image without it). A stop does not wait for that write (SPEC §2: a stop is not queued
 * behind travel): it is written whenever it would be from the state that write leads to, as a
 * stop written over a preempted write not taken yet is (preemption.ts, stopOverPreempted) — the
 * controller takes writes in arrival order, so it takes the stop after that write, or the stop
 * alone when its one command register kept only the last — and it is confirmed by any state a
 * stop leaves the device in from either. Only for an acknowledged write: one whose outcome is
 * unknown may still come after the stop, which then waits out its guard before deciding
 * (execution.ts). `actual` when the stop would be no write from there either, or is refused.
 */
export function stopAfterPending(
  profile: DeviceProfile,
  pending: PendingWrite,
  before: { readonly state: string },
  actual: Decision,
): Decision {
  const from = pending.command.observedBefore;
  if (actual.kind === 'reject' || from === null || !pending.write.acked) return actual;
  return stopBehindWrite(profile, from.state, pending.command.action, before.state, actual);
}

/** How the history line of a stop decided by stopAfterPending begins. */
const STOP_AFTER_PENDING = "decided on the state the device's previous write leads to: ";

/**
 * The history line of a stop decided on the state the device's previous write leads to
 * (execution.ts, afterPreviousWrite): why, and what it is confirmed by. Its take-up goes by it
 * (stopTakenUpAfterPending).
 */
export function stopAfterPendingNote(pending: PendingWrite): string {
  return `${STOP_AFTER_PENDING}${pending.reason}; the stop is written after it, and confirmed by any state a stop leaves the device in`;
}

/**
 * A stop taken up (take-up.ts: after a journal stall, after a restart) is judged on
 * the decision it was written on: when its history says it was decided on the state the
 * device's previous write leads to (stopAfterPendingNote, journaled before the dispatch it
 * belongs to), that decision again, rebuilt from the journal — the previous command's state
 * before its write and its action (the table is data: stopBehindWrite gives the same answer it
 * gave then). Judged on its read alone, a stop behind a held open read at CLOSED is no write:
 * the take-up ended it READBACK_TIMEOUT at once, "whether it was applied cannot be judged",
 * while the controller held both writes and then took them, the valve STOPPED (a false
 * failure). `actual` when there is no such line, or the command it names cannot be told for
 * sure (its key as the line gives it, its device, number and ending).
 */
export function stopTakenUpAfterPending(
  journal: Pick<Journal, 'history' | 'findByKey'>,
  profile: DeviceProfile,
  stop: CommandRecord,
  before: { readonly state: string },
  actual: Decision,
): Decision {
  if (stop.action !== 'stop' || actual.kind === 'reject') return actual;
  const note = decisionNote(journal.history(stop));
  const previous = note === null ? null : previousOf(journal, stop, note);
  const from = previous?.observedBefore ?? null;
  if (previous === null || from === null) return actual;
  return stopBehindWrite(profile, from.state, previous.action, before.state, actual);
}

/**
 * The stopAfterPendingNote line that decided the command's latest write: the last one before
 * the dispatch that made a fresh decision — its first, or a second after a first write withdrawn
 * unsent (execution.ts, takeUpUnsent: decided again on a fresh read) — not a second write of a
 * first proven not applied, which goes out on the same decision.
 */
function decisionNote(history: readonly JournalEvent[]): string | null {
  let noted: string | null = null;
  let decided: string | null = null;
  for (const event of history) {
    if (event.intake === RECOVERY && event.detail.startsWith(STOP_AFTER_PENDING)) {
      noted = event.detail;
    } else if (
      (event.from === 'accepted' && event.to === 'dispatched') ||
      (event.detail.startsWith('redispatch: ') && event.detail.includes(DECIDED_AGAIN))
    ) {
      decided = noted;
      noted = null;
    }
  }
  return decided;
}

/** Words of the redispatch of a write withdrawn unsent: decided again (execution.ts). */
export const DECIDED_AGAIN = 'decided again on a fresh read';

/**
 * The command a stopAfterPendingNote line names (commandsNamed), or null when the line fits none
 * or two: the take-up rebuilds the stop's decision from it, and a decision rebuilt from the
 * wrong command could confirm the stop on a state it does not lead to.
 */
function previousOf(
  journal: Pick<Journal, 'findByKey'>,
  stop: CommandRecord,
  note: string,
): CommandRecord | null {
  const fits = commandsNamed(journal, stop, note);
  return fits.length === 1 ? (fits[0] ?? null) : null;
}

/**
 * The commands a stopAfterPendingNote line fits (or a preemptedResolvedNote line: `opening`,
 * how it begins before the write's name): of the stop's device, dispatched, whose key,
 * identity, sequence number and ending the line gives (writeName: one command at most, keys
 * being per identity) — or, in a line of an earlier version (writeNameUnscoped), its key,
 * number and ending, which two identities' commands may share. Keys have no spaces (SPEC §2,
 * command.ts), but every place the key could end is tried all the same.
 */
function commandsNamed(
  journal: Pick<Journal, 'findByKey'>,
  stop: CommandRecord,
  note: string,
  opening = STOP_AFTER_PENDING,
): CommandRecord[] {
  const lead = `${opening}the write of `;
  if (!note.startsWith(lead)) return [];
  const rest = note.slice(lead.length);
  const found = new Map<string, CommandRecord>();
  for (let at = rest.indexOf(' ('); at > 0; at = rest.indexOf(' (', at + 1)) {
    if (!rest.startsWith(' (identity ', at) && !rest.startsWith(' (sequence number ', at)) continue;
    for (const r of journal.findByKey(rest.slice(0, at))) {
      if (
        r.device !== stop.device ||
        r.seq === null ||
        r.dispatchedAt === null ||
        refId(r) === refId(stop) ||
        !(
          note.startsWith(`${opening}${writeName(r, r.seq)}, `) ||
          note.startsWith(`${opening}${writeNameUnscoped(r, r.seq)}, `)
        )
      ) {
        continue;
      }
      found.set(refId(r), r);
    }
  }
  return [...found.values()];
}
