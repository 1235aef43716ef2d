import type { ChronyObservation, ClockProbe } from '../core/gateway-clock.js';
import { execBounded, type Exec } from './exec.js';

/**
 * chrony's view of the system clock: `chronyc -c tracking`, one CSV line of the fields of
 * `chronyc tracking` in order (chronyc.c print_report() in CSV mode: no units, no "slow/fast"
 * words, the signed value instead, the reference time as seconds since the epoch):
 *
 *   0 Reference ID (8 hex digits)   1 name or address     2 Stratum
 *   3 Ref time (s.ns since epoch)   4 System time (s)     5 Last offset (s)
 *   6 RMS offset (s)                7 Frequency (ppm)     8 Residual freq (ppm)
 *   9 Skew (ppm)                   10 Root delay (s)     11 Root dispersion (s)
 *  12 Update interval (s)          13 Leap status
 *
 * The offset is "System time": chrony's current estimate of how far the system clock is from
 * true time, positive when the clock is slow (the correction still to be slewed in). "Last
 * offset" is the offset measured at the last clock update, before it was corrected: history.
 * CSV mode prints addresses, so chronyc does no DNS look-up here.
 */
export interface ChronyOptions {
  /** The chronyc binary (default `chronyc`). */
  readonly command?: string;
  /** Kill chronyc after this long (default 2000 ms; chronyc itself retries for longer). */
  readonly timeoutMs?: number;
  readonly exec?: Exec;
}

export const CHRONYC_ARGS = ['-c', 'tracking'];
const DEFAULT_TIMEOUT_MS = 2000;
const FIELDS = 14;
const NUMBER = /^[+-]?\d+(\.\d+)?$/;

export type ChronyParse =
  | { readonly ok: true; readonly observation: ChronyObservation }
  | { readonly ok: false; readonly error: string };

export function parseChronyTracking(text: string): ChronyParse {
  const line = text.split(/\r?\n/).find((l) => l.trim() !== '');
  if (line === undefined) return { ok: false, error: 'no output from chronyc' };
  const fields = line.trim().split(',');
  if (fields.length !== FIELDS)
    return {
      ok: false,
      error: `chronyc -c tracking: ${fields.length} fields, expected ${FIELDS}: ${line.slice(0, 200)}`,
    };
  const [referenceId, referenceName, stratum, refTime, systemTime] = fields;
  const rootDelay = fields[10];
  const rootDispersion = fields[11];
  const leapStatus = fields[13] ?? '';
  const numbers = { stratum, refTime, systemTime, rootDelay, rootDispersion };
  for (const [name, value] of Object.entries(numbers)) {
    if (value === undefined || !NUMBER.test(value))
      return { ok: false, error: `chronyc -c tracking: ${name} is not a number: ${value ?? ''}` };
  }
  if (referenceId === undefined || !/^[0-9A-F]{8}$/i.test(referenceId))
    return { ok: false, error: `chronyc -c tracking: bad reference ID ${referenceId ?? ''}` };

  // "System time" > 0: the clock is slow (behind). Reported as clock minus true time, like
  // PTP's master_offset (slave minus master).
  const offsetNs = -Number(systemTime) * 1e9;
  const maxErrorNs =
    Math.abs(offsetNs) + Number(rootDispersion) * 1e9 + (Number(rootDelay) * 1e9) / 2;
  return {
    ok: true,
    observation: {
      source: 'chrony',
      referenceId: referenceId.toUpperCase(),
      referenceName: referenceName ?? '',
      stratum: Number(stratum),
      leapStatus,
      offsetNs,
      maxErrorNs,
      refTimeMs: Number(refTime) * 1000,
    },
  };
}

/** A reader for the poller: one chronyc run per call, never throwing. */
export function chronyReader(
  options: ChronyOptions = {},
): (signal?: AbortSignal) => Promise<ClockProbe> {
  const exec = options.exec ?? execBounded;
  const command = options.command ?? 'chronyc';
  const timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
  const unreachable = (error: string): ClockProbe => ({
    kind: 'unreachable',
    source: 'chrony',
    error,
  });
  return async (signal?: AbortSignal): Promise<ClockProbe> => {
    const result = await exec(command, CHRONYC_ARGS, {
      timeoutMs,
      ...(signal === undefined ? {} : { signal }),
    });
    if (result.timedOut) return unreachable(`chronyc timed out after ${timeoutMs} ms`);
    if (result.error !== null) return unreachable(`chronyc could not run: ${result.error}`);
    if (result.code !== 0) {
      // e.g. "506 Cannot talk to daemon" (chronyd not running), "501 Not authorised".
      const stderr = result.stderr.trim().split('\n').join('; ');
      return unreachable(`chronyc exited with status ${result.code}${stderr ? `: ${stderr}` : ''}`);
    }
    const parsed = parseChronyTracking(result.stdout);
    return parsed.ok
      ? { kind: 'observed', observation: parsed.observation }
      : unreachable(parsed.error);
  };
}
