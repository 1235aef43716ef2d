import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { endianness } from 'node:os';
import { join } from 'node:path';
import { BENCH_DIR } from './paths.js';

/**
 * Counting fsyncs honestly: SQLite calls fsync(2) from C, so neither `fs.fsync` nor anything
 * JavaScript sees counts them. The bench compiles a small LD_PRELOAD shim (fsync-count.c) and
 * loads it into the daemon's process; the shim counts every fsync/fdatasync and its duration
 * into a shared 64-byte file that the bench reads from outside.
 */

export interface FsyncCounts {
  /** Calls on the process's main thread (better-sqlite3 and the event loop). */
  readonly mainCalls: number;
  readonly mainMs: number;
  readonly otherCalls: number;
  readonly otherMs: number;
}

export type FsyncShim =
  | { readonly available: true; readonly library: string }
  | { readonly available: false; readonly reason: string };

/** Compiles the shim into `dir`; says why not when there is no C compiler or it fails. */
export function buildFsyncShim(dir: string): FsyncShim {
  const library = join(dir, 'fsync-count.so');
  for (const compiler of ['cc', 'gcc', 'clang']) {
    try {
      execFileSync(
        compiler,
        ['-shared', '-fPIC', '-O2', '-o', library, join(BENCH_DIR, 'fsync-count.c'), '-ldl'],
        { stdio: 'pipe' },
      );
      return { available: true, library };
    } catch (error) {
      if ((error as { code?: unknown }).code === 'ENOENT') continue;
      const stderr = (error as { stderr?: Buffer }).stderr?.toString().trim() ?? '';
      return { available: false, reason: `${compiler} failed to build the shim: ${stderr}` };
    }
  }
  return { available: false, reason: 'no C compiler (cc, gcc, clang) to build the fsync shim' };
}

/** A counter file for one process: zeroed, 64 bytes. */
export class FsyncCounterFile {
  constructor(readonly path: string) {
    writeFileSync(path, Buffer.alloc(64));
  }

  /** LD_PRELOAD and the shim's settings for a child process. */
  env(shim: FsyncShim, options: { skip?: boolean; delayMs?: number } = {}): Record<string, string> {
    if (!shim.available) return {};
    const delayUs = Math.round((options.delayMs ?? 0) * 1000);
    return {
      LD_PRELOAD: shim.library,
      SLUICE_BENCH_FSYNC_FILE: this.path,
      ...(options.skip === true ? { SLUICE_BENCH_FSYNC_SKIP: '1' } : {}),
      ...(delayUs > 0 ? { SLUICE_BENCH_FSYNC_DELAY_US: String(delayUs) } : {}),
    };
  }

  read(): FsyncCounts {
    const b = readFileSync(this.path);
    // The shim writes in host byte order.
    const word = (i: number): number =>
      Number(endianness() === 'LE' ? b.readBigUInt64LE(i * 8) : b.readBigUInt64BE(i * 8));
    return {
      mainCalls: word(0),
      mainMs: word(1) / 1e6,
      otherCalls: word(2),
      otherMs: word(3) / 1e6,
    };
  }
}

export function fsyncDelta(after: FsyncCounts, before: FsyncCounts): FsyncCounts {
  return {
    mainCalls: after.mainCalls - before.mainCalls,
    mainMs: after.mainMs - before.mainMs,
    otherCalls: after.otherCalls - before.otherCalls,
    otherMs: after.otherMs - before.otherMs,
  };
}
