import type { Clock } from './clock.js';
import type { Journal } from './journal.js';
import type { Logger } from './logger.js';

export interface RetentionOptions {
  readonly journal: Journal;
  readonly clock: Clock;
  readonly logger: Logger;
  /** How long a settled key is kept (and replayed) before it is purged. Default 48 h. */
  readonly retentionMs?: number;
  /** Commands deleted per transaction: keeps each write-lock hold short. Default 500. */
  readonly batchSize?: number;
  /** Pause between batches, so intakes' claims interleave. Default 50 ms. */
  readonly pauseMs?: number;
  /** Time between sweeps. Default 10 min. */
  readonly intervalMs?: number;
  /** Most batches in one sweep; the rest waits for the next sweep. Default 100. */
  readonly maxBatchesPerSweep?: number;
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
  private readonly pauseMs: number;
  private readonly intervalMs: number;
  private readonly maxBatches: number;
  private readonly stopping = new AbortController();
  private loop: Promise<void> | null = null;

  constructor(options: RetentionOptions) {
    this.journal = options.journal;
    this.clock = options.clock;
    this.logger = options.logger;
    this.retentionMs = options.retentionMs ?? DEFAULT_RETENTION_MS;
    this.batchSize = options.batchSize ?? 500;
    this.pauseMs = options.pauseMs ?? 50;
    this.intervalMs = options.intervalMs ?? 10 * 60 * 1000;
    this.maxBatches = options.maxBatchesPerSweep ?? 100;
  }

  /** One sweep: returns how many commands it purged. */
  async sweep(): Promise<number> {
    const before = this.clock.now() - this.retentionMs;
    let purged = 0;
    for (let batch = 0; batch < this.maxBatches; batch++) {
      if (this.stopping.signal.aborted) break;
      let n: number;
      try {
        n = this.journal.purgeSettled(before, this.batchSize);
      } catch (error) {
        this.logger.warn({ err: error }, 'retention sweep could not purge; will try again');
        break;
      }
      purged += n;
      if (n < this.batchSize) break;
      await this.clock.sleep(this.pauseMs, this.stopping.signal);
    }
    if (purged > 0) this.logger.info({ purged }, 'retention sweep purged settled commands');
    return purged;
  }

  start(): void {
    if (this.loop !== null) return;
    this.loop = (async () => {
      while (!this.stopping.signal.aborted) {
        await this.sweep();
        await this.clock.sleep(this.intervalMs, this.stopping.signal);
      }
    })();
  }

  async stop(): Promise<void> {
    this.stopping.abort();
    await this.loop;
  }
}
