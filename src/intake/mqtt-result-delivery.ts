import {
  type CommandRecord,
  type Journal,
  type SettledAfter,
  type SettledPage,
} from '../core/journal.js';
import { readMetaObject } from '../core/journal-meta.js';
import type { Logger } from '../core/logger.js';
import type { Delivery } from './mqtt-publisher.js';

/** The journal's meta row of the results the broker has acknowledged (ResultDelivery). */
export const RESULTS_ACKNOWLEDGED_KEY = 'mqtt-results-acknowledged';

/** The longest the stop waits for the journal's barrier (a stalled disk), ms. */
const STOP_BARRIER_MS = 2_000;

/** What the delivery needs of the journal (SqliteJournal). */
export interface ResultJournal extends Pick<
  Journal,
  'readMeta' | 'writeMeta' | 'settledSince' | 'syncPending' | 'durable'
> {
  settledAfter(after: SettledAfter, limit: number): SettledPage;
}

/** What the delivery needs of the publisher (MqttPublisher). */
export interface ResultSink {
  publishResult(record: CommandRecord): Promise<Delivery>;
  /** Resolves once every publication made so far is acknowledged (or given up). */
  flush(): Promise<void>;
  /** Whether the client is connected to the broker now: what it is handed goes out. */
  linked(): boolean;
}

export interface ResultDeliveryOptions {
  readonly journal: ResultJournal;
  readonly sink: ResultSink;
  readonly logger: Logger;
  /** Wall clock, ms (Date.now). */
  readonly now?: () => number;
  /** How often the watermark is saved while results come and go (1 s). */
  readonly saveEveryMs?: number;
  /** Results read from the journal per page when re-sending (100). */
  readonly pageSize?: number;
}

/**
 * The meta row: every command settled (wall clock) before `before`, and every one whose
 * settlement is journaled at or before event `mark`, unless settled at or after `before`, had
 * its result acknowledged by the broker.
 */
interface Saved {
  readonly before: number;
  readonly mark: number;
}

/**
 * Results of `{prefix}/result/{device}` that survive a stop or a crash of the daemon (SPEC §5:
 * every terminal outcome). The publisher holds results in memory while the broker is away or
 * slow to acknowledge; a watermark in the journal's meta row says from where they may not all
 * have been acknowledged, and the next start publishes again, from the journal, the results of
 * the commands settled from there, in settlement order, before new ones (at least once).
 *
 * The watermark is the lowest settlement time among the results not yet acknowledged (and those
 * not published: past the most held, or left by a stop), never past the time of the previous
 * save; it is saved at most every `saveEveryMs` while results come and go, and at the stop
 * (journal writes of their own, not synced by themselves: the barrier asked for after each
 * save, shared with the commands', carries them; a watermark lost with a crash is an older one,
 * which re-sends more). Never per command: no fsync is added to a command's path. Settlement times are wall
 * clock: a clock stepped back settles commands before the watermark. The row also keeps the
 * journal's last event at the previous save, and the start takes the watermark down to the
 * lowest settlement time journaled after that event, so that a settlement made after a step
 * back is re-sent all the same. A start without the row (a new journal, or one kept by a
 * Sluice before this one) re-sends nothing.
 */
export class ResultDelivery {
  private readonly journal: ResultJournal;
  private readonly sink: ResultSink;
  private readonly logger: Logger;
  private readonly now: () => number;
  private readonly saveEveryMs: number;
  private readonly pageSize: number;
  /** Results handed to the publisher and not yet acknowledged: their settlement times. */
  private readonly outstanding = new Map<object, number>();
  /** The lowest settlement time of a result this process did not get acknowledged. */
  private pinned = Number.POSITIVE_INFINITY;
  /** Where re-sending from the journal is (or will begin once connected); null when done. */
  private cursor: SettledAfter | null = null;
  private resending = false;
  /**
   * The re-sending's last read of the journal failed (a damaged page, an I/O error), or the
   * barrier after it (the journal fails closed): it waits for the next connection, and results
   * settling meanwhile are published as they settle rather than left to it.
   */
  private unreadable = false;
  /** The re-sending's last barrier failed (said once until one returns: resend()). */
  private syncFailing = false;
  private stopped = false;
  /** Wall time and the journal's last event at the previous save (or the start). */
  private previous: Saved;
  /** Saves still to be made though nothing changed, so that the watermark catches up. */
  private dirty = 0;
  private lastSaved: string | null = null;
  private timer: NodeJS.Timeout | null = null;
  private resent = 0;

  constructor(options: ResultDeliveryOptions) {
    this.journal = options.journal;
    this.sink = options.sink;
    this.logger = options.logger;
    this.now = options.now ?? Date.now;
    this.saveEveryMs = options.saveEveryMs ?? 1_000;
    this.pageSize = options.pageSize ?? 100;
    this.previous = { before: this.now(), mark: Number.MAX_SAFE_INTEGER };
    try {
      const saved = readMetaObject(this.journal, RESULTS_ACKNOWLEDGED_KEY);
      const mark = saved?.['mark'];
      const since = this.journal.settledSince(
        typeof mark === 'number' && Number.isSafeInteger(mark) ? mark : Number.MAX_SAFE_INTEGER,
      );
      const before = saved?.['before'];
      if (typeof before === 'number' && Number.isFinite(before)) {
        const from = Math.min(before, since.lowestSettledAt ?? Number.POSITIVE_INFINITY);
        this.cursor = { settledAt: from, id: 0 };
      }
      this.previous = { before: this.now(), mark: since.mark };
    } catch (error) {
      // The journal cannot be read now (the start goes on, its intakes refusing commands):
      // nothing is re-sent, and the row is saved anew.
      this.logger.warn(
        { err: error },
        'could not read which results the MQTT broker acknowledged: none is published again',
      );
    }
  }

  /** Saving begins (the intake's start). */
  start(): void {
    // Saved at once: a journal without the row re-sends nothing at the next start.
    this.dirty = 2;
    this.save(false);
    this.timer = setInterval(() => {
      this.tick();
    }, this.saveEveryMs);
    this.timer.unref();
  }

  /**
   * A command settled (its settlement on disk): its result is published, or left to the
   * re-sending from the journal while that is to come or under way and will reach it.
   */
  settled(record: CommandRecord): void {
    this.dirty = 2;
    const at = record.settledAt ?? this.now();
    const cursor = this.cursor;
    if (cursor !== null && at > cursor.settledAt && !this.unreadable) return;
    const token = {};
    this.outstanding.set(token, at);
    // Deferred: settlement can happen inside submit(), which runs inside handleMessage, where
    // publishing stalls mqtt.js (mqtt.js issue #2026), and before the requester's Response
    // Topic is recorded.
    setImmediate(() => {
      void this.track(token, at, this.sink.publishResult(record));
    });
  }

  /**
   * Connected to the broker: results to re-send from the journal go out, a page at a time —
   * those of the start's watermark, and those this process did not get acknowledged (`pinned`:
   * not held, past the most held through an outage, or given up with a connection), from the
   * earliest of them on. Until 2026-12-07 the latter waited for the next start.
   */
  connected(): void {
    if (this.stopped || this.resending) return;
    this.foldPinned();
    if (this.cursor === null) return;
    this.resending = true;
    this.resend()
      .catch((error: unknown) => {
        // Unawaited: a rejection here would be unhandled, and Node ends the process on one.
        this.logger.error({ err: error }, 'publishing results again from the journal failed');
      })
      .finally(() => {
        this.resending = false;
        // Given up on this connection after the re-sending's last look (foldPinned), or a page
        // not held: once more, behind what the publisher holds.
        if (this.pinnedWhileLinked()) this.connected();
      });
  }

  /**
   * The intake's stop begins (before it stops listening to settlements): this moment bounds the
   * watermark saved at the stop, once the journal's barrier has returned. A settlement journaled
   * before it is then on disk and announced to settled(); one journaled after it (a command
   * settling late in the stop, no longer published) is after its mark, and re-sent.
   */
  async stopping(): Promise<void> {
    this.stopped = true;
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
    try {
      const moment = {
        before: this.now(),
        mark: this.journal.settledSince(this.previous.mark).mark,
      };
      if (await this.barrier()) this.previous = moment;
    } catch {
      // Kept: an older moment re-sends more.
    }
  }

  /**
   * The intake has stopped publishing: the watermark is saved where the results left it, and
   * on disk before the journal closes (one barrier).
   */
  async stop(): Promise<void> {
    if (!this.stopped) await this.stopping();
    this.save(true);
    // Not on disk within the bound: the row keeps an older watermark, which re-sends more.
    await this.barrier();
  }

  /**
   * The journal's barrier, waited for at most STOP_BARRIER_MS: a stalled disk does not hold
   * the stop. True when it returned.
   */
  private async barrier(): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => {
        resolve(false);
      }, STOP_BARRIER_MS);
    });
    try {
      return await Promise.race([this.journal.durable().then(() => true), timeout]);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * The results this process did not get acknowledged (`pinned`) join the re-sending: from the
   * earliest of them on, where that is before the cursor. Results settled after it and
   * acknowledged already may go again (at least once); settlements from now on at or after it
   * are left to the re-sending, which reaches them (settled()).
   */
  private foldPinned(): void {
    if (this.pinned === Number.POSITIVE_INFINITY) return;
    if (this.cursor === null || this.pinned < this.cursor.settledAt) {
      this.cursor = { settledAt: this.pinned, id: 0 };
    }
    this.pinned = Number.POSITIVE_INFINITY;
  }

  /** Methods, not property reads: both change across the re-sending's awaits (stop()). */
  private cursorNow(): SettledAfter | null {
    return this.cursor;
  }

  private hasStopped(): boolean {
    return this.stopped;
  }

  private async resend(): Promise<void> {
    while (!this.stopped) {
      // Those given up while the re-sending ran (a page's wait is long through an outage).
      this.foldPinned();
      if (this.cursor === null) break;
      // Behind what the publisher has already (the results held through an outage, as many as
      // it holds): a page handed beside them would find it full, and be given up again.
      await this.sink.flush();
      const cursor = this.cursorNow();
      if (this.hasStopped() || cursor === null) break;
      let page: SettledPage;
      try {
        page = this.journal.settledAfter(cursor, this.pageSize);
        this.unreadable = false;
      } catch (error) {
        this.unreadable = true;
        this.logger.warn(
          { err: error, resent: this.resent },
          'could not read the results to publish again from the journal: tried again at the next connection to the MQTT broker, and results settling meanwhile are published as they settle',
        );
        return;
      }
      if (page.last === null) {
        // Done, in the same turn as the read that found nothing more: a command settled
        // from now on is published as it settles (settled()).
        this.cursor = null;
        break;
      }
      // The page's settlements on disk first: the read sees what group commit committed and
      // has not synced yet, the batch still open (the same connection), and what a failed
      // fdatasync left unproven. Published as read, such a result could be lost with its
      // settlement, and went out while the journal failed closed (I5; until 2026-12-07).
      try {
        await this.journal.durable();
      } catch (error) {
        // As an unreadable page: the next connection, results settling meanwhile published as
        // they settle (on disk by then: settled()).
        this.unreadable = true;
        this.logger[this.syncFailing ? 'debug' : 'warn'](
          { err: error, resent: this.resent },
          'could not make the results to publish again from the journal durable (the journal fails closed): not published; tried again at the next connection to the MQTT broker',
        );
        this.syncFailing = true;
        return;
      }
      this.syncFailing = false;
      if (this.hasStopped()) break;
      const deliveries = page.records.map((record) => {
        const at = record.settledAt ?? 0;
        const token = {};
        this.outstanding.set(token, at);
        return this.track(token, at, this.sink.publishResult(record));
      });
      this.resent += page.records.length;
      // The next page once this one is acknowledged: in memory a page at a time.
      const outcomes = await Promise.all(deliveries);
      // Not held (others took the publisher's room meanwhile): again once this returns
      // (connected()); disconnected and ended: the next connection.
      if (outcomes.includes('unsent')) return;
      this.cursor = page.last;
      this.dirty = 2;
    }
    if (this.cursor === null && this.resent > 0) {
      this.logger.info(
        { resent: this.resent },
        'published again the results of commands settled before this start whose acknowledgement by the MQTT broker was not on record',
      );
    }
  }

  private async track(token: object, at: number, delivery: Promise<Delivery>): Promise<Delivery> {
    const outcome = await delivery;
    this.outstanding.delete(token);
    if (outcome === 'unsent') this.pinned = Math.min(this.pinned, at);
    this.dirty = 2;
    // Not held while connected (a burst past the most held, faster than the broker
    // acknowledges): re-sent from the journal on this connection, once the publisher has sent
    // what it holds (resend()), as after a reconnection. Until 2026-12-07 it waited for the
    // next reconnection, days on a steady link. A re-sending under way folds it in itself.
    if (outcome === 'unsent' && this.pinnedWhileLinked()) this.connected();
    return outcome;
  }

  /**
   * Results given up while the client is connected, the journal readable: the re-sending is
   * started for them now rather than at the next connection. An unreadable journal waits for
   * the next connection (resend()).
   */
  private pinnedWhileLinked(): boolean {
    return (
      this.pinned !== Number.POSITIVE_INFINITY &&
      !this.stopped &&
      !this.resending &&
      !this.unreadable &&
      this.sink.linked()
    );
  }

  private tick(): void {
    if (this.dirty === 0) return;
    this.dirty -= 1;
    this.save(false);
    // This moment bounds what the next save leaves to re-send, once the journal's barrier
    // has returned: a settlement journaled before it is then on disk and announced (its result
    // given to settled()) before the next save, a second on. One barrier a second while results
    // come and go, shared with the commands' (group commit).
    let moment: Saved;
    try {
      moment = { before: this.now(), mark: this.journal.settledSince(this.previous.mark).mark };
    } catch {
      return; // Kept: an older moment re-sends more.
    }
    this.journal.durable().then(
      () => {
        this.previous = moment;
      },
      () => undefined,
    );
  }

  private save(final: boolean): void {
    let before = Math.min(this.previous.before, this.pinned);
    for (const at of this.outstanding.values()) before = Math.min(before, at);
    if (this.cursor !== null) before = Math.min(before, this.cursor.settledAt);
    const text = JSON.stringify({ before, mark: this.previous.mark });
    if (text === this.lastSaved) return;
    try {
      this.journal.writeMeta(RESULTS_ACKNOWLEDGED_KEY, text);
      this.lastSaved = text;
    } catch (error) {
      // The journal is unavailable: the row keeps an older watermark, which re-sends more.
      if (final) {
        this.logger.warn(
          { err: error },
          'could not save which results the MQTT broker acknowledged: the next start may publish more of them again',
        );
      }
    }
  }
}
