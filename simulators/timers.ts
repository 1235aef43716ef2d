/**
 * Delays for injected latency that a stopping plant can cut short, so that no timer outlives
 * the plant (vitest must be able to exit) and no reply is held back past stop().
 */
export class Timers {
  readonly #pending = new Map<NodeJS.Timeout, () => void>();

  /** Resolves after `ms`, or at once when cancelAll() runs. */
  delay(ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        this.#pending.delete(timer);
        resolve();
      }, ms);
      this.#pending.set(timer, resolve);
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
  }
}
