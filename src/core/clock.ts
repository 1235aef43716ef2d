/**
 * Time as the core sees it. Injected so that freshness, confirm timeouts and retention can be
 * tested with fake time; the system clock is the only implementation the daemon uses.
 *
 * Two clocks (SPEC §6): wall time for deadlines and reports, which may step (NTP, PTP, an
 * operator), and a monotonic clock for durations — confirm timeouts, the redispatch guard,
 * mismatch grace — which never does. A wall-clock step must not confirm, fail or re-send
 * anything.
 */
/**
 * The longest delay a timer can wait: Node's setTimeout takes a signed 32-bit number of
 * milliseconds (about 24.8 days) and fires a longer delay after 1 ms instead (with a
 * TimeoutOverflowWarning). Every configured duration that reaches a timer is bounded by it, so
 * that a huge timeout, interval or guard is refused rather than acted on at once.
 */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/** The refusal of a duration past MAX_TIMER_MS, as the schemas word it. */
export const MAX_TIMER_MESSAGE = `at most ${String(MAX_TIMER_MS)} ms (2^31 - 1, about 24.8 days): a timer cannot wait longer, and Node fires a longer one at once`;

export interface Clock {
  /** Gateway wall-clock time, epoch milliseconds. May step. */
  now(): number;
  /** Monotonic milliseconds from an arbitrary origin (this process): for durations only. */
  elapsed(): number;
  /** Resolves after `ms` (monotonic), or at once (without rejecting) when `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
  /**
   * Calls `fire` after `ms` (monotonic) unless the returned cancel is called first: a sleep
   * without the AbortController a cancellable `sleep` needs, for waits begun by the thousand
   * (every HTTPS request waiting for its command). Optional: without it, `timer()` below
   * builds one on `sleep`.
   */
  timer?(ms: number, fire: () => void): () => void;
}

/** `clock.timer` where the clock has one, else the same on its `sleep`. */
export function timer(clock: Clock, ms: number, fire: () => void): () => void {
  if (clock.timer !== undefined) return clock.timer(ms, fire);
  const cancel = new AbortController();
  void clock.sleep(ms, cancel.signal).then(() => {
    if (!cancel.signal.aborted) fire();
  });
  return () => {
    cancel.abort();
  };
}

/**
 * Calls `fire` once `ms` have passed on the monotonic clock (`performance.now()`, the clock's
 * `elapsed`), unless the returned cancel is called first. A Node timer alone can fire up to a
 * millisecond early by that clock (libuv counts from a loop time cached in whole milliseconds:
 * about 1 in 150 short timers here): a guard that ends a wait "after" a write could no longer land
 * would end before it. Topped up until the time has passed. On the real clock whatever the
 * caller's Clock: the drivers' request timeouts use it too (drivers/common.ts, withTimeout).
 */
export function monotonicTimer(ms: number, fire: () => void): () => void {
  const due = performance.now() + Math.max(0, ms);
  let handle: NodeJS.Timeout;
  const arm = (wait: number): void => {
    handle = setTimeout(() => {
      const left = due - performance.now();
      if (left > 0) arm(left);
      else fire();
    }, wait);
  };
  arm(Math.max(0, ms));
  return () => {
    clearTimeout(handle);
  };
}

/**
 * Waits until the first of `waits` ends, or `signal` aborts. Each wait is given a signal that
 * aborts once the race is over, so that the others let go of what they hold (a timer, a
 * listener) at once rather than when they would have ended. A wait that throws counts as ended.
 */
export async function firstOf(
  signal: AbortSignal,
  waits: readonly ((over: AbortSignal) => Promise<void>)[],
): Promise<void> {
  if (signal.aborted) return;
  const over = new AbortController();
  const onAbort = (): void => {
    over.abort();
  };
  signal.addEventListener('abort', onAbort, { once: true });
  try {
    await Promise.race([
      ...waits.map((wait) => wait(over.signal).catch(() => undefined)),
      new Promise<void>((resolve) => {
        over.signal.addEventListener('abort', () => {
          resolve();
        });
      }),
    ]);
  } finally {
    over.abort();
    signal.removeEventListener('abort', onAbort);
  }
}

/** Node's timers run on the monotonic clock, so `sleep` is unaffected by wall-clock steps. */
export function sleepFor(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    if (signal?.aborted === true) {
      resolve();
      return;
    }
    const onAbort = (): void => {
      cancel();
      resolve();
    };
    const cancel = monotonicTimer(ms, () => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    });
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export const systemClock: Clock = {
  now: () => Date.now(),
  elapsed: () => performance.now(),
  sleep: sleepFor,
  timer: monotonicTimer,
};
