import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';

/**
 * A double of fs.fdatasync for a slow flush (a gateway's worn flash, a disk busy with other
 * writes), which no real part here produces on demand: each call from now on reaches the real
 * fdatasync `delayMs` late, so that a journal barrier (src/journal/group-commit.ts) lasts that
 * long. restore() puts the real one back (call it in a `finally`); calls already delayed still
 * complete.
 */
export interface SlowFdatasync {
  /** Calls delayed so far. */
  readonly delayed: number;
  restore(): void;
}

export function slowFdatasync(delayMs: number): SlowFdatasync {
  const real = fs.fdatasync;
  let delayed = 0;
  fs.fdatasync = ((fd: number, callback: (error: NodeJS.ErrnoException | null) => void) => {
    delayed++;
    setTimeout(() => {
      real(fd, callback);
    }, delayMs);
  }) as typeof fs.fdatasync;
  syncBuiltinESMExports();
  return {
    get delayed() {
      return delayed;
    },
    restore: () => {
      fs.fdatasync = real;
      syncBuiltinESMExports();
    },
  };
}
