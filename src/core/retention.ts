import type { Clock } from './clock.js';
import type { Journal, PurgeStep } from './journal.js';
import type { Logger } from './logger.js';

export interface RetentionOptions {
  readonly journal: Journal;
  readonly clock: Clock;
  readonly logger: Logger;
  /** How long a settled key is kept (and replayed) before it is purged. Default 48 h. */
  readonly retentionMs?: number;
  /** Most commands deleted per transaction. Default 500. */
  readonly batchSize?: number;
  /**
   * How long one transaction may delete before it ends, whatever it has deleted: it holds the
   * event loop and the write lock meanwhile. Default 10 ms.
   */
  readonly batchBudgetMs?: number;
  /** Pause between batches, so intakes' claims interleave. Default 50 ms. */
  readonly pauseMs?: number;
  /** Time between sweeps. Default 10 min. */
  readonly intervalMs?: number;
  /** Most batches in one sweep; the rest waits for the next sweep. Default 1000. */
  readonly maxBatchesPerSweep?: number;
  /**
   * How often the settlements journaled since the last look are read between sweeps (see
   * look()), so that each read covers a second's events, not a sweep interval's. Default 1 s.
   */
  readonly lookIntervalMs?: number;
  /**
   * How often the looks between sweeps also take a reading of the clock and save the readings
   * in the journal (restore()): the time a run kept them after its last save counts for
   * nothing after a crash. Default 1 min.
   */
  readonly saveIntervalMs?: number;
}

export const DEFAULT_RETENTION_MS = 48 * 60 * 60 * 1000;

/** The journal's meta key under which the sweeper keeps its readings across restarts. */
export const RETENTION_READINGS_KEY = 'retention-readings';

/** The readings as saved (RetentionSweeper.save()), in times a restart does not change. */
interface SavedReadings {
  /** The journal's last event the readings cover (the sweeper's mark). */
  readonly mark: number;
  readonly readings: readonly {
    /** The reading extrapolated on the monotonic clock to the moment of the save. */
    readonly wall: number;
    /** How long before the save the reading after it was taken; null: the last reading. */
    readonly endedAgo: number | null;
  }[];
}

function parseSaved(text: string): SavedReadings | null {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== 'object' || value === null) return null;
  const { mark, readings } = value as { mark?: unknown; readings?: unknown };
  if (typeof mark !== 'number' || !Number.isInteger(mark) || mark < 0) return null;
  if (!Array.isArray(readings)) return null;
  const parsed: { wall: number; endedAgo: number | null }[] = [];
  for (const reading of readings as unknown[]) {
    if (typeof reading !== 'object' || reading === null) return null;
    const { wall, endedAgo } = reading as { wall?: unknown; endedAgo?: unknown };
    if (typeof wall !== 'number' || !Number.isFinite(wall)) return null;
    if (endedAgo !== null && (typeof endedAgo !== 'number' || !(endedAgo >= 0))) return null;
    parsed.push({ wall, endedAgo });
  }
  return { mark, readings: parsed };
}

/**
 * Purges settled commands older than the retention window, in bounded batches with pauses in
 * between, so that the command path is never blocked for long. Non-terminal commands are
 * never purged: the journal's query only selects settled ones.
 */
export class RetentionSweeper {
  private readonly journal: Journal;
  private readonly clock: Clock;
  private readonly logger: Logger;
  readonly retentionMs: number;
  private readonly batchSize: number;
  private readonly batchBudgetMs: number;
  private readonly pauseMs: number;
  private readonly intervalMs: number;
  private readonly maxBatches: number;
  private readonly lookIntervalMs: number;
  private readonly saveIntervalMs: number;
  /** The monotonic time of the last save (save()). */
  private savedAt = Number.NEGATIVE_INFINITY;
  private readonly stopping = new AbortController();
  private loop: Promise<void> | null = null;
  private looks: Promise<void> | null = null;
  /**
   * The wall clock's offset from the monotonic one (now() − elapsed()) as read at the sweeps of
   * the last `retentionMs`, with the monotonic time of the reading after it (until then, that
   * offset held as far as the sweeper knows): see cutoff(). Saved in the journal at each purge
   * and taken up again at the start (restore()).
   */
  private readonly offsets: {
    readonly offset: number;
    next: number | null;
  }[] = [];
  /** The readings of an earlier run were taken up at the start (restore()). */
  private readonly restored: boolean = false;
  /**
   * Whether the readings may be saved between sweeps: with readings taken up at the start, or
   * once a sweep has run. Before that, in a run that had none, they are of a clock not yet
   * trusted for the keys settled before the start (start()), and a restart would take them up
   * as the clock before it.
   */
  private saving = false;

  /** The journal's last event when it was last looked at (Journal.settledSince); null: unread. */
  private mark: number | null = null;
  /** The lowest settlement time the looks have seen since the last cut-off; null: none. */
  private lowestSeen: number | null = null;

  constructor(options: RetentionOptions) {
    this.journal = options.journal;
    this.clock = options.clock;
    this.logger = options.logger;
    this.retentionMs = options.retentionMs ?? DEFAULT_RETENTION_MS;
    this.batchSize = options.batchSize ?? 500;
    this.batchBudgetMs = options.batchBudgetMs ?? 10;
    this.pauseMs = options.pauseMs ?? 50;
    this.intervalMs = options.intervalMs ?? 10 * 60 * 1000;
    // Batches are bounded by time (batchBudgetMs): on a large journal each deletes fewer than
    // batchSize, and a sweep must still keep up with a busy gateway's commands.
    this.maxBatches = options.maxBatchesPerSweep ?? 1000;
    this.lookIntervalMs = options.lookIntervalMs ?? 1_000;
    this.saveIntervalMs = options.saveIntervalMs ?? 60_000;
    try {
      this.restored = this.restore();
      this.saving = this.restored;
      if (!this.restored) {
        // Settlements journaled from here on are looked at by the sweeps (cutoff()).
        this.mark = this.journal.settledSince(Number.MAX_SAFE_INTEGER).mark;
        if (this.mark === 0) {
          // A journal without events holds no key to judge: saved with no reading, so that a
          // restart before the first sweep (a daemon restarted over and over) sweeps at once
          // too, judging what settled meanwhile by the times it settled with (restore()).
          this.save();
          this.restored = true;
          this.saving = true;
        }
      }
    } catch (error) {
      // The first sweep reads the mark instead, one interval after the start (start()).
      this.offsets.length = 0;
      this.mark = null;
      this.restored = false;
      this.saving = false;
      this.logger.warn(
        { err: error },
        'retention could not read its clock readings or the journal at its start; it judges the keys settled before the start by the wall clock one interval after the start',
      );
    }
  }

  /**
   * Takes up the readings the last run saved (save()): false when there are none to take up.
   * Keys settled before the start were stamped by the wall clock of an earlier run, and the
   * clock now may be far ahead (a gateway that booted with a wrong real-time clock, its time
   * source not reached yet): judged by it, every one of them would be purged early, and a
   * client's retry of one would run as a new command (I1). The readings are the clock as it
   * read before the restart, each taken here as a reading of now: the time the daemon was down
   * is not known, so it counts as none, and the cut-off lies below the true one by the
   * downtime — keys are kept longer, never less. Each reading goes once the one after it is
   * `retentionMs` old on the monotonic clock of the runs it was kept through (cutoff()); the
   * last saved one holds until this start. What settled after the save (between the last
   * purge and the stop) is read from the journal's order since the saved mark, as a look does.
   */
  private restore(): boolean {
    const text = this.journal.readMeta(RETENTION_READINGS_KEY);
    if (text === null) return false;
    const saved = parseSaved(text);
    if (saved === null) {
      this.logger.warn(
        { key: RETENTION_READINGS_KEY, value: text.slice(0, 200) },
        'retention cannot read the clock readings it saved in the journal; it judges the keys settled before the start by the wall clock one interval after the start',
      );
      return false;
    }
    const since = this.journal.settledSince(saved.mark);
    if (since.mark < saved.mark) {
      // Events past the saved mark were deleted (a purge after the save that was lost): events
      // journaled since may bear their ids, and a look from the mark would miss them.
      this.logger.warn(
        { savedMark: saved.mark, lastEvent: since.mark },
        'retention finds the journal shorter than when it saved its clock readings; it judges the keys settled before the start by the wall clock one interval after the start',
      );
      return false;
    }
    const mono = this.clock.elapsed();
    for (const reading of saved.readings) {
      this.keep(reading.wall - mono, reading.endedAgo === null ? null : mono - reading.endedAgo);
    }
    if (since.lowestSettledAt !== null) this.record(mono, since.lowestSettledAt - mono);
    this.mark = since.mark;
    return true;
  }

  /**
   * Saves the readings (restore()) with the mark they cover. Called in the same synchronous
   * step as each purge: events journaled after a purge that deleted the journal's last events
   * take their ids again (sweep()), and a save after them would let a restart miss them.
   */
  private save(): void {
    if (this.mark === null) return;
    const mono = this.clock.elapsed();
    const saved: SavedReadings = {
      mark: this.mark,
      readings: this.offsets.map((reading) => ({
        wall: mono + reading.offset,
        endedAgo: reading.next === null ? null : mono - reading.next,
      })),
    };
    this.journal.writeMeta(RETENTION_READINGS_KEY, JSON.stringify(saved));
    this.savedAt = mono;
  }

  /**
   * A reading of the clock as a sweep takes it (with what settled since the last), saved: the
   * readings a restart takes up are then this old at most.
   */
  private takeAndSave(): void {
    this.cutoff(this.settledSinceLastCutoff());
    this.save();
  }

  /**
   * Reads the lowest time a key was stamped with when it settled since the last look, from the
   * journal's order, into `lowestSeen`. The read scans every event journaled since the last
   * look, on the event loop: a sweep interval's events at a busy gateway's pace (240,000 at
   * 100 commands a second over ten minutes) took 35 ms in one read, where a purge batch is
   * bounded at 10 ms. So the looks also run every `lookIntervalMs` between sweeps, and the one
   * before each batch covers only the moments since the last.
   */
  private look(): void {
    if (this.mark === null) {
      this.mark = this.journal.settledSince(Number.MAX_SAFE_INTEGER).mark;
      return;
    }
    const seen = this.journal.settledSince(this.mark);
    this.mark = seen.mark;
    if (seen.lowestSettledAt !== null) {
      this.lowestSeen = Math.min(this.lowestSeen ?? seen.lowestSettledAt, seen.lowestSettledAt);
    }
  }

  /**
   * The lowest settlement time since the last cut-off (null: none): a look, then what the looks
   * have gathered. Read with the purge that follows it, in one synchronous step: nothing
   * settles in between.
   */
  private settledSinceLastCutoff(): number | null {
    this.look();
    const lowest = this.lowestSeen;
    this.lowestSeen = null;
    return lowest;
  }

  /**
   * Commands settled before this wall time are purged. A key is kept for `retentionMs` after
   * it settled — a duration, measured on the monotonic clock (SPEC §6) — and the journal knows
   * when it settled only by the wall clock. A wall clock stepped forward (a wrong time source,
   * an operator) would otherwise purge at once every key settled within the step: a retry of
   * one of them — a command timed by its receipt at any time, any command once the clock is set
   * back — would run as a new command, a second actuation (I1). So the cut-off advances no faster
   * than the monotonic clock: it is the lowest extrapolation to now of the wall clock as read
   * at the sweeps of the last `retentionMs` (a reading before a forward step extrapolates
   * below the stepped clock), and never above the wall clock now. Once a step is older than
   * `retentionMs`, every key settled before it has been kept that long in real time, and the
   * cut-off follows the stepped clock again.
   *
   * The wall clock as the sweeps read it is not all: a clock set back for a while between two
   * sweeps (and forward again) stamped the keys settled meanwhile with times the sweeps never
   * saw, and would have had them purged early by the length of the dip — a day's dip, at once.
   * So the lowest time a key settled with since the last reading counts as a reading too, now
   * (`settled`: below the offset the clock had when it settled, as it settled before now).
   * Keys settled before the daemon started are judged by the readings of the runs before, as
   * saved in the journal (restore()); without any, by the wall clock at the first sweep (the
   * first reading), one interval after the start.
   */
  private cutoff(settled: number | null): number {
    const mono = this.clock.elapsed();
    const offset = Math.min(this.clock.now(), settled ?? Number.POSITIVE_INFINITY) - mono;
    this.record(mono, offset);
    // A reading goes once the one after it (when its offset ended, as far as the sweeper knows)
    // is older than the window: a key settled within the window bears a later wall time.
    for (
      let first = this.offsets[0];
      first !== undefined && first.next !== null && first.next <= mono - this.retentionMs;
    ) {
      this.offsets.shift();
      first = this.offsets[0];
    }
    return mono + (this.offsets[0]?.offset ?? offset) - this.retentionMs;
  }

  /** A reading of `offset` at `mono`: the last one's offset held until now. */
  private record(mono: number, offset: number): void {
    const previous = this.offsets.at(-1);
    if (previous !== undefined) previous.next = mono;
    this.keep(offset, null);
  }

  /**
   * Appends a reading. An earlier reading no lower than this one can no longer be the lowest
   * (this one stays in the window longer): the readings kept rise from the first, which is the
   * lowest, and there are few of them whatever the sweeps' pace.
   */
  private keep(offset: number, next: number | null): void {
    for (let last = this.offsets.at(-1); last !== undefined && last.offset >= offset;) {
      this.offsets.pop();
      last = this.offsets.at(-1);
    }
    this.offsets.push({ offset, next });
  }

  /** One sweep: returns how many commands it purged. */
  async sweep(): Promise<number> {
    let purged = 0;
    this.saving = true;
    for (let batch = 0; batch < this.maxBatches; batch++) {
      if (this.stopping.signal.aborted) break;
      let step: PurgeStep;
      try {
        // Each batch cuts anew: keys settle during the pauses between batches.
        const before = this.cutoff(this.settledSinceLastCutoff());
        step = this.journal.purgeSettled(before, this.batchSize, this.batchBudgetMs);
        // A purge that deleted the journal's last events lets the next events take their ids
        // again (SQLite gives the largest id plus one): the mark goes back to the last one left.
        this.mark = Math.min(
          this.mark ?? 0,
          this.journal.settledSince(Number.MAX_SAFE_INTEGER).mark,
        );
      } catch (error) {
        this.logger.warn({ err: error }, 'retention sweep could not purge; will try again');
        break;
      }
      try {
        this.save();
      } catch (error) {
        // The readings saved before stay: older, so lower, they keep keys longer after a
        // restart, never less.
        this.logger.warn(
          { err: error },
          'retention could not save its clock readings in the journal',
        );
      }
      purged += step.purged;
      if (!step.more) break;
      await this.clock.sleep(this.pauseMs, this.stopping.signal);
    }
    if (purged > 0) this.logger.info({ purged }, 'retention sweep purged settled commands');
    return purged;
  }

  start(): void {
    if (this.loop !== null) return;
    this.looks = (async () => {
      for (;;) {
        await this.clock.sleep(this.lookIntervalMs, this.stopping.signal);
        if (this.stopping.signal.aborted) return;
        try {
          if (this.saving && this.clock.elapsed() - this.savedAt >= this.saveIntervalMs) {
            this.takeAndSave();
          } else {
            this.look();
          }
        } catch {
          // The journal cannot be read or written now: the next look (or the sweep's) reads
          // from the same mark, so nothing settled meanwhile is missed; the readings saved
          // before stay, older, so lower: they keep keys longer after a restart, never less.
        }
      }
    })();
    this.loop = (async () => {
      // With the readings of the runs before (restore()), the first sweep runs at once: the
      // keys settled before the start are judged by the clock as it read then, whatever it
      // reads now, and a daemon restarted more often than the interval sweeps too. Without
      // them (the journal's first run, or readings lost), it waits one interval: such keys can
      // be judged only by the wall clock now, and a gateway that boots with its clock far ahead
      // (a wrong real-time clock) has it set right by its time source within moments of the
      // start; a sweep at once would purge by the wrong clock every key settled before the
      // reboot, and a client's retry of one would then run again (I1).
      if (!this.restored) await this.clock.sleep(this.intervalMs, this.stopping.signal);
      while (!this.stopping.signal.aborted) {
        await this.sweep();
        await this.clock.sleep(this.intervalMs, this.stopping.signal);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    await Promise.all([this.loop, this.looks]);
    if (!this.saving || this.mark === null) return;
    // The time this run kept the readings counts after the restart, however short the run.
    try {
      this.takeAndSave();
    } catch (error) {
      this.logger.warn(
        { err: error },
        'retention could not save its clock readings in the journal',
      );
    }
  }
}
