import type { Logger as PinoLogger } from 'pino';
import { watchdogIntervalMs, type ServiceNotifier } from './notify.js';

/**
 * A long start under systemd. With Type=notify, systemd gives the start TimeoutStartSec= (90 s in
 * the unit) to send READY=1, then kills the daemon and, with Restart=on-failure, starts it again
 * from the beginning. WATCHDOG=1 does not move that time: it feeds the watchdog, which runs
 * during the start too (seen with systemd 252: a service pinging every 0.5 s with
 * WatchdogSec=2s was stopped at its TimeoutStartSec= of 4 s). Some phases of the start grow with
 * the journal or the backlog: the check of the whole journal (quick_check reads every page: on
 * 2026-12-04, 23–29 s for 1,000,000 retained commands from a cold page cache on this machine's
 * disk, and a gateway's eMMC may be several times slower) and the settling of the commands found
 * open. A gateway whose journal had grown past what TimeoutStartSec= covers was killed in its
 * check at every start, and never came up (reproduced with systemd 252 and a start of 5–7 s
 * under TimeoutStartSec=4s: "start operation timed out" at every restart). Raising
 * TimeoutStartSec= to the largest journal would also leave a start that hangs (a dead disk)
 * undetected for as long.
 *
 * What systemd offers for it (sd_notify(3), systemd.service(5) TimeoutStartSec=):
 * EXTEND_TIMEOUT_USEC=, repeated within the time it names until READY=1. It is sent here only
 * while a long phase shows progress, each message for a bounded time: every half WatchdogSec=
 * (WATCHDOG_USEC; 10 s at most, and without a watchdog) the phase is looked at, and when it
 * advanced since the last look the start is extended by twice that period (WatchdogSec=) from
 * now. A phase that stops advancing gets no more: once TimeoutStartSec= has passed, systemd ends
 * the start at most two periods after its last progress, as it ends a running daemon whose event
 * loop stops for WatchdogSec=. The messages go from a timer on the event loop (a blocked loop
 * sends none), while the work runs elsewhere (the check and an older journal's upgrade in
 * processes of their own, the settling on the drivers' I/O).
 *
 * Past TimeoutStartSec=, systemd ends the start as soon as the last extension runs out, so the
 * extensions form a chain up to READY=1, each sent before the one before it ends. A phase's
 * first look comes one period after it begins; so the end of each step of the start is progress
 * too, and extends it at once by a whole extension (extendAfterStep): the check or upgrade
 * ended, the journal opened, the drivers loaded, the gateway clock checked. The settling READY
 * waits for is looked at as it begins. Between two messages there is then one step of the start
 * or one period of a long phase: the chain breaks only where a step takes longer than an
 * extension, or a phase stops advancing. The steps between the check and the settling's first
 * look used to have one period in all: a start past TimeoutStartSec= whose steps after the check
 * (node-opcua's load, the first check of the gateway clock, recovery, the intakes) took longer
 * was ended there, and began again with the check.
 *
 * A step with a bound of its own that may be longer than an extension, the first check of the
 * gateway clock (its tool killed at `clock.chrony.timeoutMs` or twice `clock.ptp.timeoutMs`, up
 * to 60 s and 120 s), is a phase too (boundedStepPhase): it advances while its bound is ahead,
 * so the start is extended every period while the step runs, and no more once the bound has
 * passed, when systemd ends a step held past it. With the one extension at its beginning alone,
 * a check longer than an extension (a slow chronyd, a timeout above WatchdogSec=) broke the
 * chain, and a start past TimeoutStartSec= was ended there and began again with the check.
 *
 * A step that holds the event loop cannot be looked at while it runs, and no WATCHDOG=1 goes out
 * meanwhile either: node-opcua's load, for an OPC UA PLC (OPCUA_LOAD_BOUND_MS). systemd moves the
 * watchdog's deadline with each extension as well as the start's (service_extend_timeout in its
 * src/core/service.c), so the extension sent as it begins is one of its bound
 * (extendBeforeHeldStep), which covers both; the pings wait for the step's end, since a ping
 * sets the watchdog's deadline to WatchdogSec= from it, earlier than the extension's. With the
 * one extension of WatchdogSec= before it, a load longer than that (a gateway's ARM core, a cold
 * page cache at boot) was killed by the watchdog, within TimeoutStartSec= or past it, and began
 * again at every restart.
 */

/** What a look at a phase found. */
export interface PhaseLook {
  /**
   * Whether it advanced since the last look (the first: since it began): the only ground for
   * an extension.
   */
  readonly advanced: boolean;
  /**
   * What it is doing, for STATUS= and the log: "checking the journal (915 MB): 312 MB read so
   * far".
   */
  readonly status: string;
  /** Numbers for the log line. */
  readonly fields: Record<string, unknown>;
  /** When it did not advance: why, for the log. */
  readonly stall?: string;
}

/** A phase of the start whose length grows with the journal or the backlog. */
export interface StartPhase {
  /** Its name in the log: "journal check", "recovery". */
  readonly name: string;
  look(): PhaseLook;
}

export interface StartProgressOptions {
  readonly notifier: ServiceNotifier;
  readonly logger: PinoLogger;
  /** How often a phase is looked at; each extension is twice this. */
  readonly intervalMs: number;
}

/**
 * Without a watchdog, as with the unit's WatchdogSec=20s; and at most: the first extension must
 * reach systemd before TimeoutStartSec= has passed (systemd.service(5)), and a long WatchdogSec=
 * would put the first look past it.
 */
const LONGEST_INTERVAL_MS = 10_000;

/** The look period for this process: half WatchdogSec= (WATCHDOG_USEC), at most 10 s. */
export function startProgressIntervalMs(env: NodeJS.ProcessEnv): number {
  return Math.min(watchdogIntervalMs(env) ?? LONGEST_INTERVAL_MS, LONGEST_INTERVAL_MS);
}

/**
 * A step of the start has ended (its end is progress): the start is extended at once by a whole
 * extension, which the next step has to end within (or the next long phase to advance). Not
 * once `until` is aborted: a stop has begun, and nothing more says "starting".
 */
export function extendAfterStep(
  status: string,
  options: StartProgressOptions & { readonly until?: AbortSignal },
): void {
  if (options.until?.aborted === true) return;
  options.notifier.extendStart(2 * options.intervalMs, `starting: ${status}`);
}

/**
 * How long node-opcua's load may hold the event loop (the drivers of an OPC UA PLC): about 1,500
 * CommonJS modules, required in one synchronous call that no timer interrupts. Measured on
 * 2026-12-07 on a 2-core x86 machine with the files in the page cache: 1.5 s of CPU, 3.8–5.8 s
 * with other work on the machine. Sixty seconds leave a gateway's ARM core and a cold disk ten
 * times that, and still end a start held there (a disk that no longer answers the reads of the
 * modules) within a minute.
 */
export const OPCUA_LOAD_BOUND_MS = 60_000;

/**
 * A step of the start that holds the event loop (node-opcua's load) is about to begin: no look
 * and no WATCHDOG=1 can come before it ends, so the start is extended at once by its bound (at
 * least a whole extension), which moves systemd's watchdog as well. The pings are held from
 * here until the function returned is called as the step ends: one sent before the loop is held
 * would set the watchdog's deadline back to WatchdogSec= from it. Not once `until` is aborted.
 */
export function extendBeforeHeldStep(
  status: string,
  boundMs: number,
  options: StartProgressOptions & { readonly until?: AbortSignal },
): () => void {
  if (options.until?.aborted === true) return () => undefined;
  const release = options.notifier.holdPings();
  options.notifier.extendStart(Math.max(boundMs, 2 * options.intervalMs), `starting: ${status}`);
  return release;
}

/**
 * Runs until `work` settles, extending the start while `phase` advances; with `thenExtend`, once
 * more when it has succeeded (its end is progress: extendAfterStep). With `lookAtOnce`, the
 * phase is looked at as it begins too, not only one period in: for a phase whose progress shows
 * from its beginning (recovery's wait, its bound ahead). Each look is logged, so that
 * `journalctl -u sluiced` says why the start is long.
 */
export async function extendWhile<T>(
  phase: StartPhase,
  work: Promise<T>,
  options: StartProgressOptions & {
    readonly thenExtend?: string;
    readonly lookAtOnce?: boolean;
    /** Aborted when a stop begins: the start is over, and nothing more says "starting". */
    readonly until?: AbortSignal;
  },
): Promise<T> {
  const { notifier, logger, intervalMs } = options;
  const extensionMs = 2 * intervalMs;
  const began = performance.now();
  const seconds = (): number => Math.round((performance.now() - began) / 100) / 10;
  let stalled = false;
  const lookOnce = (): void => {
    const look = phase.look();
    const fields = { phase: phase.name, elapsedS: seconds(), ...look.fields };
    if (look.advanced) {
      stalled = false;
      notifier.extendStart(extensionMs, `starting: ${look.status}`);
      logger.info(
        { ...fields, extendedMs: extensionMs },
        `start: ${look.status} (${seconds()} s so far; start time extended)`,
      );
    } else if (!stalled) {
      // Once per stall: the log says when progress stopped, and when it resumes (above).
      stalled = true;
      logger.warn(
        fields,
        `start: ${phase.name}: ${look.stall ?? 'no progress'}; the start time is not extended (systemd ends the start when it runs out)`,
      );
    }
  };
  if (options.lookAtOnce === true && options.until?.aborted !== true) lookOnce();
  const timer = setInterval(() => {
    if (options.until?.aborted === true) {
      clearInterval(timer);
      return;
    }
    lookOnce();
  }, intervalMs);
  // What runs the phase (a thread, sockets) keeps the process alive, not this timer.
  timer.unref();
  try {
    const result = await work;
    if (options.thenExtend !== undefined) extendAfterStep(options.thenExtend, options);
    return result;
  } finally {
    clearInterval(timer);
  }
}

/** Megabytes, whole. */
function mb(bytes: number): number {
  return Math.round(bytes / 1_000_000);
}

/**
 * The journal check (src/journal/integrity.ts) as a phase: it advances when its process has read
 * more of the file since the last look.
 */
export function journalCheckPhase(
  bytesRead: () => number | null,
  journalBytes: number,
): StartPhase {
  let last = 0;
  return {
    name: 'journal check',
    look: () => {
      const read = bytesRead();
      const size = `${mb(journalBytes)} MB`;
      if (read === null) {
        return {
          advanced: false,
          status: `checking the journal (${size})`,
          fields: { journalMb: mb(journalBytes) },
          stall:
            "the check process's reads cannot be seen (/proc/<pid>/io): no proof that it is getting on",
        };
      }
      const advanced = read > last;
      last = Math.max(last, read);
      return {
        advanced,
        // More than the file in the end: quick_check reads some pages twice (a table's, for
        // its constraints, besides its B-tree walk).
        status: `checking the journal (${size}): ${mb(read)} MB read so far`,
        fields: { readMb: mb(read), journalMb: mb(journalBytes) },
        stall: `the check has read nothing since the last look (${mb(read)} MB read so far)`,
      };
    },
  };
}

/**
 * The upgrade of an older journal to this Sluice's schema (src/journal/upgrade.ts) as a phase:
 * it advances when its process has read or written more since the last look (the old tables
 * read, the new ones written to the log and the file, SQLite's sorts spilled to their temporary
 * files). A copy held in a write the disk never answers moves nothing more.
 */
export function journalUpgradePhase(
  bytesMoved: () => number | null,
  journalBytes: number,
  from: number,
  to: number,
): StartPhase {
  let last = 0;
  return {
    name: 'journal upgrade',
    look: () => {
      const moved = bytesMoved();
      const what = `upgrading the journal (${mb(journalBytes)} MB) from schema version ${from} to ${to}`;
      const fields = { journalMb: mb(journalBytes), from, to };
      if (moved === null) {
        return {
          advanced: false,
          status: what,
          fields,
          stall:
            "the upgrade process's reads and writes cannot be seen (/proc/<pid>/io): no proof that it is getting on",
        };
      }
      const advanced = moved > last;
      last = Math.max(last, moved);
      return {
        advanced,
        status: `${what}: ${mb(moved)} MB read and written so far`,
        fields: { ...fields, movedMb: mb(moved) },
        stall: `the upgrade has read and written nothing since the last look (${mb(moved)} MB so far)`,
      };
    },
  };
}

/**
 * A step of the start with a bound of its own (the first check of the gateway clock, whose tool
 * is killed at its timeout) as a phase: it advances while its bound is ahead, however long the
 * bound is; past it (a step held beyond what bounds it) it does not.
 */
export function boundedStepPhase(name: string, status: string, boundMs: number): StartPhase {
  const began = performance.now();
  return {
    name,
    look: () => {
      const elapsedMs = performance.now() - began;
      return {
        advanced: elapsedMs < boundMs,
        status: `${status}: ${Math.round(elapsedMs / 1000)} s so far, ${Math.ceil(boundMs / 1000)} s at most`,
        fields: { boundMs },
        stall: `the ${name} has run past its bound of ${boundMs} ms`,
      };
    },
  };
}

/**
 * The wait of READY for the commands found open at start (Daemon.announceReady) as a phase: it
 * ends by itself at its bound (a timer on the event loop), so it advances while the bound is
 * ahead; past it (the wait's last step syncs the journal, which a dead disk can hold) it does not.
 */
export function recoveryPhase(total: number, stillOpen: () => number, boundMs: number): StartPhase {
  const began = performance.now();
  return {
    name: 'recovery',
    look: () => {
      const open = stillOpen();
      const leftS = Math.max(0, Math.ceil((boundMs - (performance.now() - began)) / 1000));
      return {
        advanced: leftS > 0,
        status: `settling the commands the journal held open: ${open} of ${total} still open (READY in ${leftS} s at the latest)`,
        fields: { open, recovered: total, boundMs },
        stall: `the wait for the ${total} recovered commands passed its bound`,
      };
    },
  };
}
