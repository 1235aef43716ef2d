import type { Action } from '../core/command.js';
import { monotonicTimer } from '../core/clock.js';
import { DeviceUnreachableError, type DeviceHealth } from '../core/driver.js';
import type { DeviceProfile } from '../core/profile.js';

/**
 * Rejects with DeviceUnreachableError when `promise` has not settled within `ms`, never sooner by
 * the monotonic clock (performance.now(), the daemon's Clock.elapsed()). A request's timeout is
 * the moment its answer counts as lost: a write's outcome becomes unknown then, and the core counts
 * the redispatch guard (the time the write may still land) from it. A bare Node timer fires up to
 * a millisecond early now and then (libuv's loop time is cached in whole ms), which ended the
 * guard up to that much before its time; monotonicTimer tops it up.
 *
 * `ownTimeout`: the library's own timer of the same length (modbus-serial's transaction timeout,
 * armed when it sends), which it rejects with, early the same way: such a rejection is held until
 * `ms` have passed here, then passed on as it is (its message unchanged).
 */
export async function withTimeout<T>(
  promise: Promise<T>,
  ms: number,
  message: string,
  ownTimeout?: (error: unknown) => boolean,
): Promise<T> {
  const due = performance.now() + Math.max(0, ms);
  let cancel = (): void => undefined;
  const timeout = new Promise<never>((_, reject) => {
    cancel = monotonicTimer(ms, () => {
      reject(new DeviceUnreachableError(message));
    });
  });
  const answered =
    ownTimeout === undefined
      ? promise
      : promise.catch(async (error: unknown) => {
          if (ownTimeout(error)) {
            // The library's timeout decides the message: this one's timer is not raced with it.
            cancel();
            const left = due - performance.now();
            if (left > 0) await new Promise<void>((resolve) => monotonicTimer(left, resolve));
          }
          throw error;
        });
  try {
    return await Promise.race([answered, timeout]);
  } finally {
    cancel();
  }
}

/**
 * A readable sentence for whatever a protocol library rejects with. modbus-serial rejects with
 * plain objects that are not Errors (`{ name: 'TransactionTimedOutError', message: 'Timed out',
 * errno: 'ETIMEDOUT' }`, a port error whose message is null), which `String()` turns into
 * "[object Object]". The message comes first; name (unless plain "Error"), code and errno
 * follow in parentheses when the message does not already say them.
 */
export function describeError(error: unknown): string {
  if (typeof error === 'string') return error === '' ? 'unknown error (empty string)' : error;
  if (typeof error !== 'object' || error === null) {
    return `unknown error (${typeof error === 'symbol' ? error.toString() : String(error)})`;
  }
  const e = error as { message?: unknown; name?: unknown; code?: unknown; errno?: unknown };
  const text = (v: unknown): string | null =>
    (typeof v === 'string' && v.trim() !== '') || (typeof v === 'number' && Number.isFinite(v))
      ? String(v)
      : null;
  const message = text(e.message);
  const tags: string[] = [];
  for (const tag of [e.name === 'Error' ? null : text(e.name), text(e.code), text(e.errno)]) {
    if (tag !== null && !tags.includes(tag) && !(message?.includes(tag) ?? false)) tags.push(tag);
  }
  if (message !== null) return tags.length === 0 ? message : `${message} (${tags.join(', ')})`;
  if (tags.length > 0) return tags.join(', ');
  let json: string | undefined;
  try {
    json = JSON.stringify(error);
  } catch {
    // Circular or otherwise unserialisable: say what it is, at least.
  }
  if (json !== undefined && json !== '{}') return `unknown error ${json}`;
  const ctor = (error as { constructor?: { name?: unknown } }).constructor?.name;
  return `unknown error (${typeof ctor === 'string' && ctor !== '' ? ctor : 'object'} without a message)`;
}

/** Connection and error bookkeeping that drivers report as device health. */
export class HealthCounter {
  private isConnected = false;
  private lastGood: number | null = null;
  private errors = 0;
  private last: string | null = null;
  private epoch = 0;
  /** Those waiting for the connection's state to change (changed()). */
  private readonly waiters = new Set<() => void>();

  /** A new connection (or session): the controller behind it may have restarted. */
  connected(): void {
    this.isConnected = true;
    this.epoch++;
    this.wake();
  }

  /**
   * Resolves at the next change of the connection's state — a connection opened, answering,
   * or an attempt failed — or when `signal` aborts. The caller looks again at what it waits for.
   */
  changed(signal: AbortSignal): Promise<void> {
    return new Promise<void>((resolve) => {
      if (signal.aborted) {
        resolve();
        return;
      }
      const done = (): void => {
        this.waiters.delete(done);
        signal.removeEventListener('abort', done);
        resolve();
      };
      this.waiters.add(done);
      signal.addEventListener('abort', done, { once: true });
    });
  }

  private wake(): void {
    for (const waiter of [...this.waiters]) waiter();
  }

  /**
   * A new connection the controller has not answered on yet (opened(), then answering() at its
   * first answer): a frozen PLC process's kernel completes a TCP connect with nothing behind it,
   * and counted from the connect, such a device showed connected at each reconnect until its
   * read timed out.
   */
  opened(): void {
    this.isConnected = false;
    this.epoch++;
    this.wake();
  }

  /** The controller answered on the connection opened last. */
  answering(): void {
    this.isConnected = true;
    this.wake();
  }

  disconnected(): void {
    this.isConnected = false;
  }

  ok(now: number): void {
    this.lastGood = now;
  }

  error(message: string): void {
    this.errors++;
    this.last = message;
    this.wake();
  }

  snapshot(): DeviceHealth {
    return {
      connected: this.isConnected,
      lastGoodReadAt: this.lastGood,
      errorCount: this.errors,
      lastError: this.last,
      connectionEpoch: this.epoch,
    };
  }
}

export function commandCode(profile: DeviceProfile, action: Action): number {
  const code = profile.controller.commandCodes[action];
  if (code === undefined) {
    throw new Error(`profile ${profile.profile} has no command code for ${action}`);
  }
  return code;
}
