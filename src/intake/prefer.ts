/**
 * The `Prefer` request header (RFC 7240) as the HTTPS intake honours it: `wait=N` and
 * `respond-async`. Other preferences are ignored, as RFC 7240 §2 asks of preferences a server
 * does not understand.
 */

export interface Preferences {
  /** `wait=N` in seconds, or null when absent or malformed. */
  readonly wait: number | null;
  readonly respondAsync: boolean;
}

export interface WaitPolicy {
  /** Seconds waited for a terminal state when the client states no preference. */
  readonly defaultWaitS: number;
  /** Ceiling on `wait=N`, seconds. */
  readonly maxWaitS: number;
}

export interface WaitPlan {
  /** How long to wait for the command to settle before answering 202. */
  readonly waitMs: number;
  /** The `Preference-Applied` header value, or null when no preference was applied. */
  readonly applied: string | null;
}

/**
 * RFC 7240 §4.3: `wait` is delta-seconds, any run of digits (RFC 9111 §1.2.2). One too long for
 * a number is still a wait, the longest there is: it is capped like any other (planWait), not
 * taken as malformed and replaced by the shorter default.
 */
const DELTA_SECONDS = /^\d+$/;

/**
 * Parses every `Prefer` header of a request (Node joins repeated headers with ", "). Names are
 * case-insensitive; only the first instance of a preference counts (RFC 7240 §2); parameters
 * after `;` are ignored.
 */
export function parsePrefer(header: string | readonly string[] | undefined): Preferences {
  const values = header === undefined ? [] : typeof header === 'string' ? [header] : header;
  let wait: number | null | undefined;
  let respondAsync = false;
  for (const value of values) {
    for (const item of value.split(',')) {
      const [preference = ''] = item.split(';');
      const eq = preference.indexOf('=');
      const name = (eq === -1 ? preference : preference.slice(0, eq)).trim().toLowerCase();
      const raw = eq === -1 ? '' : preference.slice(eq + 1).trim();
      const token =
        raw.startsWith('"') && raw.endsWith('"') && raw.length >= 2 ? raw.slice(1, -1) : raw;
      if (name === 'respond-async') respondAsync = true;
      else if (name === 'wait' && wait === undefined) {
        wait = DELTA_SECONDS.test(token) ? Number(token) : null;
      }
    }
  }
  return { wait: wait ?? null, respondAsync };
}

/**
 * How long a command request waits. `respond-async` alone answers at once; `wait=N` waits up
 * to N seconds (capped at the configured ceiling); both together mean "answer asynchronously
 * if it takes longer than N seconds" (RFC 7240 §4.3's own example). Without either, the
 * configured default applies and nothing is reported as applied.
 */
export function planWait(prefs: Preferences, policy: WaitPolicy): WaitPlan {
  const applied: string[] = [];
  let waitS = Math.min(policy.defaultWaitS, policy.maxWaitS);
  if (prefs.respondAsync) {
    applied.push('respond-async');
    waitS = 0;
  }
  if (prefs.wait !== null) {
    waitS = Math.min(prefs.wait, policy.maxWaitS);
    applied.push(`wait=${String(waitS)}`);
  }
  return {
    waitMs: Math.round(waitS * 1000),
    applied: applied.length === 0 ? null : applied.join(', '),
  };
}
