/**
 * Time as the core sees it. Injected so that freshness, confirm timeouts and retention can be
 * tested with fake time; the system clock is the only implementation the daemon uses.
 *
 * Two clocks (SPEC §6): wall time for deadlines and reports, which may step (NTP, PTP, an
 * operator), and a monotonic clock for durations — confirm timeouts, the redispatch guard,
 * mismatch grace — which never does. A wall-clock step must not confirm, fail or re-send
 * anything.
 */
export interface Clock {
  /** Gateway wall-clock time, epoch milliseconds. May step. */
  now(): number;
  /** Monotonic milliseconds from an arbitrary origin (this process): for durations only. */
  elapsed(): number;
  /** Resolves after `ms` (monotonic), or at once (without rejecting) when `signal` aborts. */
  sleep(ms: number, signal?: AbortSignal): Promise<void>;
}

/** Node's timers run on the monotonic clock, so `sleep` is unaffected by wall-clock steps. */
export function sleepFor(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise<void>((resolve) => {
    if (signal?.aborted === true) {
      resolve();
      return;
    }
    const onAbort = (): void => {
      clearTimeout(timer);
      resolve();
    };
    const timer = setTimeout(
      () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      },
      Math.max(0, ms),
    );
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}

export const systemClock: Clock = {
  now: () => Date.now(),
  elapsed: () => performance.now(),
  sleep: sleepFor,
};
