import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

/**
 * A double of fs.fdatasync for the one disk fault no real part here produces on demand: a
 * flush that fails with EIO (a disk's write error). The journal's group commit calls
 * fs.fdatasync on the WAL (src/journal/group-commit.ts); the first `times` calls from now on
 * fail, asynchronously as the real one answers, and later calls reach the real fdatasync.
 * restore() puts the real one back (call it in a `finally`).
 */
export interface FailingFdatasync {
  /** Calls failed so far. */
  readonly failures: number;
  /** When (Date.now()) the first call failed; null: none yet. */
  readonly failedAt: number | null;
  /** When (Date.now()) the first call after the failures came; null: none yet. */
  readonly resumedAt: number | null;
  restore(): void;
}

export function failFdatasync(times = Number.POSITIVE_INFINITY): FailingFdatasync {
  const real = fs.fdatasync;
  const state = {
    failures: 0,
    failedAt: null as number | null,
    resumedAt: null as number | null,
  };
  fs.fdatasync = ((fd: number, callback: (error: NodeJS.ErrnoException | null) => void) => {
    if (state.failures >= times) {
      state.resumedAt ??= Date.now();
      real(fd, callback);
      return;
    }
    state.failures++;
    state.failedAt ??= Date.now();
    setImmediate(() => {
      callback(Object.assign(new Error(`EIO: i/o error, fdatasync ${fd}`), { code: 'EIO' }));
    });
  }) as typeof fs.fdatasync;
  syncBuiltinESMExports();
  return {
    get failures() {
      return state.failures;
    },
    get failedAt() {
      return state.failedAt;
    },
    get resumedAt() {
      return state.resumedAt;
    },
    restore: () => {
      fs.fdatasync = real;
      syncBuiltinESMExports();
    },
  };
}
