import type { Clock } from './clock.js';
import type { CommandRecord, Journal } from './journal.js';
import { commandLogger, PIPELINE, refId } from './lane.js';
import type { Logger } from './logger.js';
import { latestWriteNeverSent } from './open-commands.js';
import type { TimedReadback } from './skew.js';

/**
 * The endings of a written command that leave open whether the controller took its write: no
 * readback came in its window ("the command's effect is unknown"), the readbacks never settled
 * it (READBACK_TIMEOUT), or an operator resolved it while its write was out. A command that
 * ended any other way either showed its echo (confirmed, READBACK_MISMATCH, DEVICE_FAULT,
 * INTERRUPTED) or never had a write. A DEVICE_UNREACHABLE with an observation is not in doubt
 * either (inDoubt).
 */
const UNKNOWN_EFFECT_CODES: ReadonlySet<string> = new Set([
  'DEVICE_UNREACHABLE',
  'READBACK_TIMEOUT',
  'RESOLVED_BY_OPERATOR',
]);

/**
 * How many of a device's newest commands a start looks through for its last dispatch when the
 * journal does not name it (Journal.lastDispatched: a dispatch journaled by an earlier Sluice): a
 * bound on the rows read at start, whatever the journal holds.
 */
export const LAST_DISPATCH_WINDOW = 1_000;

export interface LateEchoHost {
  readonly journal: Journal;
  readonly clock: Clock;
  readonly logger: Logger;
  /** The sequence number the device's last readback echoed (null: none, or no echo). */
  echoed(device: string): number | null;
  /**
   * Whether the command's write is its device's last write as this process knows it (the
   * lane's lastWrite): handed to the driver, and not since found never sent (withdrawn while
   * it waited for the controller, no connection to send it on).
   */
  wrote(record: CommandRecord): boolean;
}

/** A command in doubt, watched for its echo. */
interface Watched {
  readonly record: CommandRecord;
  /**
   * Taken up from the journal at start: its write was an earlier life's, which this process
   * does not know (the lane's lastWrite is not its own).
   */
  readonly fromJournal: boolean;
  /**
   * Its settlement's barrier has returned (announced: on disk). Until then a readback showing
   * its echo is kept (`held`), not noted: a note journaled before the settlement is on disk
   * could outlive it (a batch lost at its COMMIT leaves the command open, and goes on).
   */
  announced: boolean;
  /**
   * The latest readback showing its echo that came between its settlement in the journal and
   * the announcement (a barrier takes as long as the disk does, the readbacks go on): noted
   * at the announcement. That echo was read after the command ended, not while it was open.
   */
  held?: TimedReadback;
  /**
   * Its note could not be journaled: said once, tried again no sooner than this (monotonic
   * ms) — a journal write waits up to the busy bound, on the event loop, and the monitor reads
   * every second.
   */
  retryAtMono?: number;
}

/** How long after a note the journal refused the next try waits. */
const NOTE_RETRY_MS = 10_000;

/**
 * A command that ended `failed` while its write's fate was unknown keeps its outcome (a
 * terminal state is final, and every replay returns the same result) — but when a later
 * readback of its device shows the command's sequence number echoed, which none had shown
 * while it was open, the controller took that write: the device may stand where the command sent it while the journal says only
 * that its effect was unknown (a reply lost on a link that recovered, a PLC that answered
 * after the window). That readback is noted in the command's history, once, with what it
 * showed, and logged (warn, with the command's key and device): an operator reading
 * `sluicectl show` or GET /v1/commands/{key}?history learns what became of the write. Watched
 * per device: the device's latest command in doubt, from its settlement in the journal until
 * the device's next dispatch (from then on the echo may be that command's), noted once the
 * settlement is on disk. Taken up at start from the journal: the command of the device's last
 * dispatch (an operator's resolve aside: whether its echo had been read before is not
 * journaled).
 */
export class LateEcho {
  private readonly host: LateEchoHost;
  /** By device: its latest command in doubt, watched for its echo. */
  private readonly watched = new Map<string, Watched>();
  /**
   * By device: the command of its latest dispatch in this life (refId, or at start the
   * journal's: takeUp), its sequence number, and whether a readback has shown that number
   * echoed since.
   */
  private readonly lastDispatched = new Map<string, LastDispatch>();

  constructor(host: LateEchoHost) {
    this.host = host;
  }

  /**
   * A command of the device was dispatched (its dispatch journaled, before its write): from
   * now on the echo may be its own — a sequence number is never that of two open commands,
   * but one that provably never reached the controller may be given again — so the watch ends.
   */
  dispatched(record: CommandRecord): void {
    const earlier = this.lastDispatched.get(record.device);
    if (earlier?.ref !== refId(record) || earlier.seq !== record.seq) {
      this.lastDispatched.set(record.device, {
        ref: refId(record),
        seq: record.seq,
        echoed: false,
      });
    }
    const watched = this.watched.get(record.device);
    if (watched !== undefined && refId(watched.record) !== refId(record)) {
      this.watched.delete(record.device);
    }
  }

  /**
   * Every settled command of every device, as its settlement is journaled (in the same turn,
   * before its barrier): the readbacks received so far are those of the command while it was
   * open; a watch begins, to be noted on once the settlement is on disk (settled).
   */
  journaled(record: CommandRecord): void {
    // Settled anew (its earlier settlement lost with its batch, the command went on): that
    // settlement's watch is void, whatever this one's outcome.
    const earlier = this.watched.get(record.device);
    if (earlier !== undefined && refId(earlier.record) === refId(record)) {
      this.watched.delete(record.device);
    }
    if (!inDoubt(record)) return;
    // Its echo already read while it was open (a valve that took the write and did not move,
    // resolved by an operator): the write was taken before it ended, not after. Asked here and
    // not at the announcement: a readback received while the barrier ran was read after the
    // command ended, and showed a write no readback had shown before.
    if (this.host.echoed(record.device) === record.seq) return;
    // Not when another command of the device was dispatched after it (a stop that preempted
    // it): the echo may be that one's.
    const last = this.lastDispatched.get(record.device);
    if (last !== undefined && last.ref !== refId(record)) return;
    // Nor when a readback showed its echo while it was open and the controller's echo has
    // changed since (another master's write): its write was taken before it ended. Watched, a
    // later write of its number (another master's) was noted as the controller taking its
    // write, 'which no readback had shown before the command ended'.
    if (last?.echoed === true && last.seq === record.seq) return;
    // Its write never sent (no connection to the controller, or withdrawn while it waited
    // for one): the echo of its number can only be another master's.
    if (!this.host.wrote(record)) return;
    // Nor when its history says its latest write never left the gateway, which the lane's last
    // write does not always know: a take-up stands in a write for a command it finds
    // dispatched (take-up.ts), one an earlier life withheld among them, and a stop hands
    // the write of the command it preempted back once it is terminal (preemption.ts,
    // afterStop), a second write it withdrew among them. Both were watched, and another
    // master's write of their number noted as the controller taking it.
    if (this.historySaysUnsent(record)) return;
    this.watched.set(record.device, { record, fromJournal: false, announced: false });
  }

  /**
   * Every settled command of every device, once its settlement is on disk (announced): a
   * readback that showed its echo meanwhile is noted now.
   */
  settled(record: CommandRecord): void {
    const entry = this.watched.get(record.device);
    // The very settlement the watch began at (announce passes the journaled record on).
    if (entry === undefined || entry.announced || entry.record !== record) return;
    entry.announced = true;
    const held = entry.held;
    if (held === undefined) return;
    delete entry.held;
    this.readback(record.device, held);
  }

  /**
   * At start: the command of each device's last dispatch, as the journal recorded the
   * dispatches (not the latest by dispatchedAt, which a step of the gateway's clock reorders;
   * commands never dispatched since, however many: the dispatch's commit names its command,
   * Journal.lastDispatched), if it ended in doubt (still open, recovery takes it up),
   * not by an operator's resolve, and with a write the history does not show never sent.
   */
  takeUp(devices: Iterable<string>): void {
    const { journal } = this.host;
    for (const device of devices) {
      const last = journal.lastDispatched(device, LAST_DISPATCH_WINDOW);
      // The device's last dispatch as this life's would be: a command of the device dispatched
      // before it, still open and taken up now, begins no watch when it ends in doubt (journaled:
      // the echo may be this one's), as in the life that dispatched both. It began one, and
      // replaced this one's: the controller taking this write late went unsaid.
      if (last !== undefined && !this.lastDispatched.has(device)) {
        this.lastDispatched.set(device, { ref: refId(last), seq: last.seq, echoed: false });
      }
      // Not an operator's resolve: its outcome keeps the readback from before the write, so
      // whether a readback showed its echo while it was open (a valve that took the write and
      // did not move) is not journaled, and that echo, read again now, would be noted as new.
      if (last?.seq == null || last.code === 'RESOLVED_BY_OPERATOR' || !inDoubt(last)) continue;
      const history = journal.history(last);
      if (latestWriteNeverSent(history, last.seq)) continue;
      // Noted already, by an earlier life: the device shows the same echo until its next
      // command, and every restart noted it again.
      const noted = notePrefix(last.seq);
      if (history.some((e) => e.intake === PIPELINE && e.detail.startsWith(noted))) continue;
      this.watched.set(device, { record: last, fromJournal: true, announced: true });
    }
  }

  /**
   * Whether the command's history says its latest write never left the gateway
   * (latestWriteNeverSent). A history that cannot be read now counts as saying so: a note
   * missed is better than a false one, and the settlement it is asked at must go on.
   */
  private historySaysUnsent(record: CommandRecord): boolean {
    if (record.seq === null) return true;
    try {
      return latestWriteNeverSent(this.host.journal.history(record), record.seq);
    } catch (error) {
      commandLogger(this.host.logger, record).warn(
        { err: error },
        'late echo: the history of a command in doubt cannot be read; it is not watched',
      );
      return true;
    }
  }

  /** Every readback of a device. */
  readback(device: string, readback: TimedReadback): void {
    const last = this.lastDispatched.get(device);
    if (last !== undefined && readback.seq !== null && readback.seq === last.seq) {
      last.echoed = true;
    }
    const entry = this.watched.get(device);
    if (entry === undefined || readback.seq === null || readback.seq !== entry.record.seq) return;
    if (!entry.announced) {
      entry.held = readback;
      return;
    }
    if (entry.retryAtMono !== undefined && this.host.clock.elapsed() < entry.retryAtMono) return;
    const watched = entry.record;
    // An operator resolved it while its write waited for the controller, which then was not
    // sent after all (the resolve withdrew it): nothing of it reached the controller.
    if (!entry.fromJournal && !this.host.wrote(watched)) {
      this.watched.delete(device);
      return;
    }
    const log = commandLogger(this.host.logger, watched);
    const shown = [
      readback.state,
      readback.position === null ? null : `at ${readback.position} %`,
      readback.faultCode === null ? null : `fault code ${readback.faultCode}`,
    ]
      .filter((part) => part !== null)
      .join(' ');
    const when =
      readback.sourceTime === null
        ? ''
        : ` (image of ${new Date(readback.sourceTime).toISOString()}, controller clock)`;
    const detail = `${notePrefix(entry.record.seq)} the controller took its write, which no readback had shown before the command ended ${watched.code ?? watched.state}; the device shows ${shown}${when}`;
    try {
      this.host.journal.note(watched, this.host.clock.now(), detail, PIPELINE);
    } catch (error) {
      // Tried again at a readback that shows it a while later; said once.
      if (entry.retryAtMono === undefined) {
        log.error(
          { err: error },
          'late echo of a command in doubt not journaled; tried again at a later readback that shows it',
        );
      }
      entry.retryAtMono = this.host.clock.elapsed() + NOTE_RETRY_MS;
      return;
    }
    this.watched.delete(device);
    log.warn(
      {
        seq: watched.seq,
        code: watched.code,
        state: readback.state,
        position: readback.position,
        faultCode: readback.faultCode,
      },
      'the controller took the write of a command that ended with its write in doubt',
    );
  }
}

/** A device's latest dispatch (LateEcho.lastDispatched). */
interface LastDispatch {
  readonly ref: string;
  readonly seq: number | null;
  /** A readback has shown `seq` echoed since the dispatch (or since the start). */
  echoed: boolean;
}

/** How the note of a late echo begins (one note per command: takeUp looks for it). */
function notePrefix(seq: number | null): string {
  return `a later readback shows its sequence number ${seq ?? 'none'} echoed:`;
}

/**
 * Ended failed with a write out and no readback showing its echo. DEVICE_UNREACHABLE is in
 * doubt only without an observation ("no readback after the write …; the command's effect is
 * unknown"): with one, the daemon knew nothing was applied — the write never sent (no connection
 * to the controller: the readback from before the write) or proven not applied past the
 * redispatch guard, when it can no longer land (the readback that proved it) — and a later echo
 * of its number is another master's, which a note would call this command's.
 */
function inDoubt(record: CommandRecord): boolean {
  return (
    record.state === 'failed' &&
    record.seq !== null &&
    record.dispatchedAt !== null &&
    UNKNOWN_EFFECT_CODES.has(record.code ?? '') &&
    (record.code !== 'DEVICE_UNREACHABLE' || record.observed === null) &&
    record.observed?.seq !== record.seq
  );
}
