import type { Action } from '../core/command.js';
import { DeviceUnreachableError, type DeviceHealth } from '../core/driver.js';
import type { DeviceProfile } from '../core/profile.js';

/** Rejects with DeviceUnreachableError when `promise` has not settled within `ms`. */
export async function withTimeout<T>(promise: Promise<T>, ms: number, message: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(new DeviceUnreachableError(message));
    }, ms);
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** Connection and error bookkeeping that drivers report as device health. */
export class HealthCounter {
  private isConnected = false;
  private lastGood: number | null = null;
  private errors = 0;
  private last: string | null = null;

  connected(): void {
    this.isConnected = true;
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
  }

  snapshot(): DeviceHealth {
    return {
      connected: this.isConnected,
      lastGoodReadAt: this.lastGood,
      errorCount: this.errors,
      lastError: this.last,
    };
  }
}

export function stateName(profile: DeviceProfile, code: number): string {
  for (const [name, value] of Object.entries(profile.controller.stateCodes)) {
    if (value === code) return name;
  }
  // Not a profile state: the pipeline refuses to act on it and says so.
  return `UNKNOWN(${code})`;
}

export function commandCode(profile: DeviceProfile, action: Action): number {
  const code = profile.controller.commandCodes[action];
  if (code === undefined) {
    throw new Error(`profile ${profile.profile} has no command code for ${action}`);
  }
  return code;
}
