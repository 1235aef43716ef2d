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
}

export const DEFAULT_RETENTION_MS = 48 * 60 * 60 * 1000;

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
  private readonly stopping = new AbortController();
  private loop: Promise<void> | null = null;
  private looks: Promise<void> | null = null;
  /**
   * The wall clock's offset from the monotonic one (now() − elapsed()) as read at the sweeps of
   * the last `retentionMs`, with the monotonic time of the reading and of the reading after it
   * (until then, that offset held as far as the sweeper knows): see cutoff().
   */
  private readonly offsets: {
    readonly at: number;
    readonly offset: number;
    next: number | null;
  }[] = [];

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
    // Settlements journaled from here on are looked at by the sweeps (cutoff()).
    try {
      this.mark = this.journal.settledSince(Number.MAX_SAFE_INTEGER).mark;
    } catch (error) {
      // The first sweep reads the mark instead.
      this.logger.warn({ err: error }, 'retention could not read the journal at its start');
    }
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
   * Keys settled before the daemon started are judged by the wall clock at the first sweep (the
   * first reading), one interval after the start.
   */
  private cutoff(settled: number | null): number {
    const mono = this.clock.elapsed();
    const offset = Math.min(this.clock.now(), settled ?? Number.POSITIVE_INFINITY) - mono;
    const previous = this.offsets.at(-1);
    if (previous !== undefined) previous.next = mono;
    // An earlier reading no lower than this one can no longer be the lowest (this one stays in
    // the window longer): the readings kept rise from the first, which is the lowest, and
    // there are few of them whatever the sweeps' pace.
    for (let last = previous; last !== undefined && last.offset >= offset;) {
      this.offsets.pop();
      last = this.offsets.at(-1);
    }
    this.offsets.push({ at: mono, offset, next: null });
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

  /** One sweep: returns how many commands it purged. */
  async sweep(): Promise<number> {
    let purged = 0;
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
          this.look();
        } catch {
          // The journal cannot be read now: the next look (or the sweep's) reads from the same
          // mark, so nothing settled meanwhile is missed.
        }
      }
    })();
    this.loop = (async () => {
      // The first sweep waits one interval. Keys settled before the start can be judged only by
      // the wall clock (cutoff()), and a gateway that boots with its clock far ahead (a wrong
      // real-time clock) has it set right by its time source within moments of the start: a
      // sweep at once would purge by the wrong clock every key settled before the reboot, and
      // a client's retry of a command the reboot interrupted would then run again (I1).
      await this.clock.sleep(this.intervalMs, this.stopping.signal);
      while (!this.stopping.signal.aborted) {
        await this.sweep();
        await this.clock.sleep(this.intervalMs, this.stopping.signal);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    await Promise.all([this.loop, this.looks]);
  }
}
