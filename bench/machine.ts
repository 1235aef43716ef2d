import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { availableParallelism, cpus, loadavg, release, totalmem } from 'node:os';
import BetterSqlite3 from 'better-sqlite3';

/** What a reader comparing two runs needs to know about the machine each ran on. */
export interface Machine {
  readonly cores: number;
  readonly cpuModel: string;
  readonly memoryGiB: number;
  readonly kernel: string;
  readonly node: string;
  readonly sqlite: string;
  /** The filesystem the scratch journals lived on (fsync costs differ by an order). */
  readonly filesystem: string;
  /** 1-minute load average when the run started and when it ended (other work on the box). */
  readonly loadAtStart: number;
  loadAtEnd: number;
  /**
   * Share of the machine's CPU time the hypervisor gave to other guests over the run (steal,
   * /proc/stat); null where the kernel does not say. On a shared virtual machine the same run
   * can take twice the CPU time per command when a neighbour is busy.
   */
  stealShare?: number | null;
  /**
   * How far the wall clock moved against the monotonic clock over the run (ms): a step or slew
   * of the gateway's clock. Figures that join two processes' clocks (the stages from the
   * journal's timestamps, the step-by-step table) are off by it when it happened while they
   * ran; the latencies, timed on one monotonic clock, are not.
   */
  wallClockStepMs?: number | null;
}

/** The wall clock's offset from the monotonic clock now (ms): wallClockMoved() compares two. */
export function wallAgainstMonotonic(): number {
  return Date.now() - performance.now();
}

/** How far the wall clock moved against the monotonic clock since `from` (ms, 0.1 ms). */
export function wallClockMoved(from: number): number {
  return Math.round((wallAgainstMonotonic() - from) * 10) / 10;
}

/** The machine's CPU ticks so far, all and stolen (/proc/stat); null where unreadable. */
export function cpuTicks(): { readonly total: number; readonly steal: number } | null {
  try {
    const line = readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '';
    const fields = line.trim().split(/\s+/).slice(1).map(Number);
    if (fields.length < 8 || fields.some((f) => !Number.isFinite(f))) return null;
    return { total: fields.reduce((a, b) => a + b, 0), steal: fields[7] ?? 0 };
  } catch {
    return null;
  }
}

/** Stolen share of the CPU time between two readings of cpuTicks(). */
export function stealBetween(
  from: ReturnType<typeof cpuTicks>,
  to: ReturnType<typeof cpuTicks>,
): number | null {
  if (from === null || to === null || to.total <= from.total) return null;
  return Math.round(((to.steal - from.steal) / (to.total - from.total)) * 1000) / 1000;
}

function sqliteVersion(): string {
  const db = new BetterSqlite3(':memory:');
  try {
    return (db.prepare('SELECT sqlite_version() AS v').get() as { v: string }).v;
  } finally {
    db.close();
  }
}

function filesystemOf(dir: string): string {
  try {
    const out = execFileSync('df', ['-T', dir], { encoding: 'utf8' }).trim().split('\n')[1] ?? '';
    const [device, type] = out.split(/\s+/);
    return `${type ?? '?'} (${device ?? '?'})`;
  } catch {
    return 'unknown';
  }
}

export function machine(scratchDir: string): Machine {
  return {
    cores: availableParallelism(),
    cpuModel: cpus()[0]?.model.trim() ?? 'unknown',
    memoryGiB: Math.round((totalmem() / 2 ** 30) * 10) / 10,
    kernel: release(),
    node: process.version,
    sqlite: sqliteVersion(),
    filesystem: filesystemOf(scratchDir),
    loadAtStart: Math.round((loadavg()[0] ?? 0) * 100) / 100,
    loadAtEnd: Number.NaN,
    stealShare: null,
    wallClockStepMs: null,
  };
}
