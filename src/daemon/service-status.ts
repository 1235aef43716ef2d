import type { Logger as PinoLogger } from 'pino';
import type { Clock } from '../core/clock.js';
import type { CommandRef } from '../core/journal.js';
import type { CommandPipeline } from '../core/pipeline.js';
import type { ServiceNotifier } from './notify.js';
import { statusLine, type ProbeCache, type ReadinessParts, type StatusView } from './readiness.js';
import { extendWhile, recoveryPhase, type StartProgressOptions } from './start-progress.js';

/** How often the STATUS= line is looked at after READY (sent only when it changed). */
const STATUS_REFRESH_MS = 1_000;

/**
 * What the service manager is told of the running daemon: READY=1 once the commands recovered
 * at start have settled (or their bound has passed), then a STATUS= line whenever what it says
 * changes, and the log lines that go with them: the journal's state at READY, its loss and its
 * return. One per daemon.
 *
 * The journal is what the gateway cannot run without (I5), and it can fail or stall with no
 * command under way: the line proves it with a write while it is known to fail (readiness.ts),
 * so that its return shows without a command or a probe to make it write, and once it is back
 * the line keeps a note of the outage (what, from when to when) for `systemctl status`.
 */
export class ServiceStatus {
  /** READY=1 has been sent: from then on a reload says RELOADING=1, then READY=1 again. */
  private readySent = false;
  /** The recovered commands READY waited for, and how many of them are still open. */
  private recovery: { total: number; open: number } = { total: 0, open: 0 };
  /** The STATUS= line sent last, and the timer that sends a new one when it changes. */
  private sent = '';
  private timer: NodeJS.Timeout | null = null;
  /** Aborted when a stop begins: ends the wait of followRecovery and the line's refreshes. */
  private readonly end = new AbortController();
  /**
   * Since when the journal fails its check (wall clock and monotonic), and how it failed:
   * `unread` when recovery could not read it (pipeline.ts, recoveryFailed), else it could not be
   * written or synced.
   */
  private journalDown: { at: Date; mono: number; brief: string; unread: boolean } | null = null;
  /** The last outage of the journal, once over, as the line notes it. */
  private journalNote: string | null = null;

  constructor(
    private readonly o: {
      readonly notifier: ServiceNotifier;
      readonly logger: PinoLogger;
      readonly clock: Clock;
      readonly pipeline: CommandPipeline;
      readonly parts: () => ReadinessParts;
      /** Shared with /readyz: the journal's sync asked for and timed (readiness.ts). */
      readonly probes: ProbeCache;
      readonly startProgress: StartProgressOptions;
    },
  ) {}

  get ready(): boolean {
    return this.readySent;
  }

  /**
   * READY=1 once the intakes listen (Daemon.start has returned) and the commands the journal
   * held open at start have settled, within `boundMs`. Not sent once a stop has begun.
   *
   * READY=1 is sent on a journal that cannot be written, or that recovery could not read, as
   * well: the start has finished, the intakes answer (refusing commands: HTTP 503, no PUBACK,
   * I5), and commands are taken again without a restart once the journal can be written, or
   * once a run of the sweep has read it (pipeline.ts, recover()); withheld, systemd would end
   * the start at TimeoutStartSec= and restart the daemon onto the same disk. The log line and the STATUS=
   * line say it: the journal is proved with a write first, as /readyz proves it.
   */
  async announceReady(
    at: {
      readonly refs: readonly CommandRef[];
      /** Those not settled yet, as their settlements have been seen. */
      readonly stillOpen: ReadonlySet<string>;
      readonly unfollow: () => void;
    },
    boundMs: number,
  ): Promise<void> {
    const recovered = at.refs;
    let open: number;
    try {
      // A start made long by the journal check is past TimeoutStartSec= already: this wait is
      // extended too, or systemd would end the start in it.
      const waiting = this.o.pipeline.waitForAllSettled(recovered, boundMs);
      open =
        recovered.length === 0
          ? await waiting
          : await extendWhile(
              recoveryPhase(recovered.length, () => at.stillOpen.size, boundMs),
              waiting,
              // A stop while READY waits: STOPPING=1 was sent, and no "starting" extension
              // may follow it for the rest of the shutdown bound. Looked at as it begins: the
              // extension before it covers the intakes' opening, not also a period of this wait.
              { ...this.o.startProgress, until: this.end.signal, lookAtOnce: true },
            );
    } catch (error) {
      this.o.logger.warn({ err: error }, 'recovery: the journal cannot be read');
      open = recovered.length;
    } finally {
      at.unfollow();
    }
    if (this.end.signal.aborted) return;
    if (open > 0) {
      this.o.logger.warn({ open, boundMs }, 'ready with recovered commands still open');
    }
    this.recovery = { total: recovered.length, open };
    // The journal's word for its last write is no proof here: a start on a full disk wrote
    // nothing that could fail (its records unchanged), and the line said "ready" while every
    // command was refused. Proved with a write, as /readyz does.
    const view = this.view({ prove: true });
    this.sent = view.line;
    this.o.notifier.ready(this.sent);
    this.readySent = true;
    if (view.journal.ok) {
      this.o.logger.info({ recovered: recovered.length, open }, 'sluiced ready');
    } else {
      const unread = this.o.pipeline.recoveryFailed() !== null;
      this.journalDown = {
        at: new Date(),
        mono: this.o.clock.elapsed(),
        brief: view.journal.brief ?? view.journal.detail,
        unread,
      };
      this.o.logger.warn(
        { recovered: recovered.length, open, journal: view.journal.detail },
        `sluiced serving, but not ready: ${view.journal.detail}. Every command is refused (HTTP 503, no MQTT PUBACK) until ${unread ? 'recovery has read the journal' : 'the journal can be written'}; it is taken again then, without a restart`,
      );
    }
    // `systemctl status` shows the last STATUS= line for as long as the service runs: the one
    // sent with READY said "MQTT connecting" (READY does not wait for the broker) and "still
    // settling" long after the broker had connected, and "MQTT connected" while it was down.
    // A new line goes out whenever what it says has changed.
    this.timer = setInterval(() => {
      this.refresh();
    }, STATUS_REFRESH_MS);
    this.timer.unref();
    if (open > 0) void this.followRecovery(recovered);
  }

  /** Counts the recovered commands still open until none is (for the status line). */
  private async followRecovery(recovered: readonly CommandRef[]): Promise<void> {
    while (!this.end.signal.aborted && this.recovery.open > 0) {
      try {
        const open = await this.o.pipeline.waitForAllSettled(recovered, 5_000);
        this.recovery = { total: recovered.length, open };
      } catch {
        // The journal cannot be read: counted again at the next round (readiness says why).
        await this.o.clock.sleep(5_000, this.end.signal);
      }
    }
    this.refresh();
  }

  /** Sends the status line when it says something else than the one sent last. */
  private refresh(): void {
    if (this.end.signal.aborted) return;
    const { line } = this.view({ prove: false });
    if (line === this.sent) return;
    this.sent = line;
    this.o.notifier.status(line);
  }

  /** The line a reload's READY=1 carries (its certificate verdict is the new one). */
  reloadedLine(): string {
    this.sent = this.view({ prove: false }).line;
    return this.sent;
  }

  /** The line, the journal's turns logged (its loss, its return) and noted once over. */
  private view(options: { prove: boolean }): StatusView {
    const parts = this.o.parts();
    const first = statusLine(parts, this.recovery, this.o.probes, {
      ...options,
      note: this.journalNote,
    });
    const journal = first.journal;
    const down = this.journalDown;
    if (!journal.ok && down === null && this.readySent) {
      this.journalDown = {
        at: new Date(),
        mono: this.o.clock.elapsed(),
        brief: journal.brief ?? journal.detail,
        unread: this.o.pipeline.recoveryFailed() !== null,
      };
      this.o.logger.warn({ journal: journal.detail }, `not ready: ${journal.detail}`);
    }
    if (!journal.ok || down === null) return first;
    this.journalDown = null;
    const seconds = Math.max(0, Math.round((this.o.clock.elapsed() - down.mono) / 1000));
    const back = new Date();
    this.journalNote = `journal back at ${clockTime(back)} after ${seconds} s unavailable (${cause(down.brief)}, from ${clockTime(down.at)})`;
    // Said of what failed when the outage began, as its cause is: recovery's reads, or writes.
    this.o.logger.info(
      { unavailableS: seconds, since: down.at.toISOString(), was: down.brief },
      `journal ${down.unread ? 'readable' : 'writable'} again after ${seconds} s unavailable (${cause(down.brief)}): commands are taken again`,
    );
    return statusLine(parts, this.recovery, this.o.probes, {
      prove: false,
      note: this.journalNote,
    });
  }

  /** A stop has begun: no more lines (STOPPING=1 is the last). */
  stop(): void {
    if (this.timer !== null) clearInterval(this.timer);
    this.end.abort();
  }
}

/** `2026-12-06T20:14:05Z`: to the second, in UTC. */
function clockTime(at: Date): string {
  return `${at.toISOString().slice(0, 19)}Z`;
}

/** What made the journal unavailable, in a few words: `sync`, `check, SQLITE_FULL`. */
function cause(brief: string): string {
  const m = /^journal unavailable \(([^)]+)\)(?::\s*(SQLITE_[A-Z_]+))?/.exec(brief);
  const what = m?.[1];
  if (what === undefined) return brief.length > 80 ? `${brief.slice(0, 79)}…` : brief;
  return m?.[2] === undefined ? what : `${what}, ${m[2]}`;
}
