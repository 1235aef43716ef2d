/**
 * Delays for injected latency (and waits for a stall's release) that a stopping plant can cut
 * short, so that no timer outlives the plant (vitest must be able to exit) and no reply is held
 * back past stop().
 */
export class Timers {
  readonly #pending = new Map<NodeJS.Timeout, () => void>();
  readonly #waiting = new Set<() => void>();

  /**
   * Resolves after `ms`, or at once when cancelAll() runs. A Node timer can fire up to a
   * millisecond early (libuv counts from a loop time cached in whole milliseconds): a request
   * held "2,000 ms" on the link arrived after 1,999 by the write log's clock. The delay is topped
   * up until `ms` have passed on the monotonic clock, so a fault holds at least what it says.
   */
  delay(ms: number): Promise<void> {
    const due = performance.now() + ms;
    return new Promise<void>((resolve) => {
      const arm = (wait: number): void => {
        const timer = setTimeout(() => {
          this.#pending.delete(timer);
          const left = due - performance.now();
          if (left > 0) arm(left);
          else resolve();
        }, wait);
        this.#pending.set(timer, resolve);
      };
      arm(ms);
    });
  }

  /** Resolves when `released` does, or at once when cancelAll() runs. */
  until(released: Promise<void>): Promise<void> {
    return new Promise<void>((resolve) => {
      const done = (): void => {
        this.#waiting.delete(done);
        resolve();
      };
      this.#waiting.add(done);
      void released.then(done);
    });
  }

  /** Runs `fn` after `ms` unless cancelled first. */
  after(ms: number, fn: () => void): void {
    const timer = setTimeout(() => {
      this.#pending.delete(timer);
      fn();
    }, ms);
    this.#pending.set(timer, () => undefined);
  }

  cancelAll(): void {
    for (const [timer, resolve] of this.#pending) {
      clearTimeout(timer);
      resolve();
    }
    this.#pending.clear();
    for (const done of [...this.#waiting]) done();
  }
}
