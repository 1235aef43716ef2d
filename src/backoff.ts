/**
 * Jittered exponential backoff between connection attempts (to a broker, to a PLC): `minMs`,
 * doubling up to `maxMs`, each delay drawn from its upper half ("equal jitter"), so that
 * gateways restarted together by a power cut do not reconnect in lock step, yet a peer that is
 * down is never hammered faster than half a step.
 */
export class Backoff {
  private attempt = 0;
  private readonly minMs: number;
  private readonly maxMs: number;
  private readonly random: () => number;
  private notBefore = 0;

  constructor(options: { minMs: number; maxMs: number; random?: () => number }) {
    if (!(options.minMs > 0) || options.maxMs < options.minMs) {
      throw new RangeError(
        `reconnect backoff needs 0 < minMs <= maxMs (got ${options.minMs}, ${options.maxMs})`,
      );
    }
    this.minMs = options.minMs;
    this.maxMs = options.maxMs;
    this.random = options.random ?? Math.random;
  }

  /** The delay before the next attempt; each call grows the step until `maxMs`. */
  next(): number {
    const step = Math.min(this.maxMs, this.minMs * 2 ** Math.min(this.attempt, 30));
    this.attempt += 1;
    return Math.max(1, Math.round(step / 2 + (this.random() * step) / 2));
  }

  /** After a connection that proved stable: start again from `minMs`. */
  reset(): void {
    this.attempt = 0;
    this.notBefore = 0;
  }

  /**
   * For callers that gate attempts on a clock: an attempt failed at `now`. A monotonic clock
   * (Clock.elapsed()): a step of the wall clock must neither stretch nor cut the wait.
   */
  failed(now: number): void {
    this.notBefore = now + this.next();
  }

  /** Milliseconds until the next attempt is allowed (0: now). */
  remaining(now: number): number {
    return Math.max(0, this.notBefore - now);
  }
}
