import type { Logger } from './logger.js';

/**
 * A device whose reads keep failing says why: the device view and /readyz show the last error
 * and since when reads fail, and the log says it at warn — once per distinct error in a run of
 * failures, and once more (info) when reads recover. Not once per poll: a failing device is
 * polled every second or faster, and a warning each time would flood the journal.
 *
 * Kept per device and per kind of read, in the core: a driver's health belongs to its
 * connection, which a Modbus PLC shares between its devices — one device whose register map
 * points at registers the PLC does not have fails every read on a connection that stays up.
 */

/** The run of failed reads a device is in. */
export interface ReadFailure {
  /** The last failed read's error. */
  readonly message: string;
  /** Wall time of the run's first failed read, epoch ms. */
  readonly since: number;
  /** Wall time of its last failed read, epoch ms. */
  readonly lastAt: number;
  /** Reads failed in a row. */
  readonly failures: number;
  /** Monotonic time of the run's first failed read: how long reads failed, for the log. */
  readonly sinceMono: number;
}

/** One kind of read of one device (its status, its controller clock). */
export interface ReadFailures {
  /** The run of failures in progress; null when the last read succeeded or none was made. */
  current: ReadFailure | null;
  /** Failed reads since the process started (metrics). */
  total: number;
  /** The errors of the current run already logged at warn, numbers blanked (errorShape). */
  readonly warned: Set<string>;
}

/** When a read happened: wall time for reports, monotonic time for durations. */
export interface ReadTime {
  readonly now: number;
  readonly mono: number;
}

/**
 * At most this many distinct errors are logged at warn in one run of failures; further ones
 * go to debug (the view still shows the last one).
 */
const MAX_WARNED = 16;

export function noReadFailures(): ReadFailures {
  return { current: null, total: 0, warned: new Set() };
}

/**
 * An error's text with its decimal numbers blanked: drivers put countdowns and attempt counts
 * in their messages ("not connected; next attempt in 734 ms", "connection attempt 5 failed"),
 * which change on every poll without saying anything new. Hexadecimal codes ("Modbus
 * exception 0x02") are kept: the word boundary does not fall inside them.
 */
export function errorShape(message: string): string {
  return message.replace(/\b\d+(?:\.\d+)*\b/g, '#');
}

/**
 * A failed read: the run of failures grows, and the error is logged at warn when it is the
 * run's first or one the run has not shown yet (an error that alternates with another is
 * logged once each), at debug otherwise. `what` names the reads in the log ("device reads").
 */
export function readFailed(
  failures: ReadFailures,
  what: string,
  message: string,
  at: ReadTime,
  log: Logger,
): void {
  failures.total++;
  const previous = failures.current;
  const run: ReadFailure =
    previous === null
      ? { message, since: at.now, lastAt: at.now, failures: 1, sinceMono: at.mono }
      : { ...previous, message, lastAt: at.now, failures: previous.failures + 1 };
  failures.current = run;
  const context = {
    error: message,
    failures: run.failures,
    since: new Date(run.since).toISOString(),
  };
  const shape = errorShape(message);
  if (failures.warned.has(shape) || failures.warned.size >= MAX_WARNED) {
    log.debug(context, `${what} failed`);
    return;
  }
  failures.warned.add(shape);
  if (previous === null) log.warn(context, `${what} fail`);
  else log.warn({ ...context, previousError: previous.message }, `${what} fail with another error`);
}

/** A read that succeeded: a run of failures ends, and its end is logged (info). */
export function readSucceeded(
  failures: ReadFailures,
  what: string,
  at: ReadTime,
  log: Logger,
): void {
  const run = failures.current;
  if (run === null) return;
  failures.current = null;
  failures.warned.clear();
  log.info(
    {
      failures: run.failures,
      failedForMs: Math.max(0, Math.round(at.mono - run.sinceMono)),
      lastError: run.message,
    },
    `${what} recovered`,
  );
}

/** An error quoted in an outcome's detail is cut to this many characters. */
const QUOTED_ERROR_CHARS = 200;

/**
 * The words a READBACK_TIMEOUT adds when every read of the device failed after its last
 * readback (the PLC stopped answering: its link cut, powered off, refusing connections): the
 * reason the detail gives is that readback's, `ageMs` old when the window ended, and the device
 * was not seen since. Without them an operator read "travelling (OPENING)" as the valve still
 * travelling and looked at the valve rather than at the PLC's link.
 */
export function unansweredSince(
  ageMs: number,
  failed: { readonly count: number; readonly lastError: string },
): string {
  const error =
    failed.lastError.length > QUOTED_ERROR_CHARS
      ? `${failed.lastError.slice(0, QUOTED_ERROR_CHARS - 1)}…`
      : failed.lastError;
  return `, at the last readback, taken ${ageMs} ms before the window ended; the device has not answered since: ${failed.count} ${failed.count === 1 ? 'read of it' : 'reads of it'} failed (the last: ${error}); the command's effect is unknown: check the PLC and its link; once it answers, see where the device is (sluicectl devices) before sending the command again`;
}
