import { readFileSync } from 'node:fs';

/**
 * A thread's scheduler accounting, from Linux's `/proc/<pid>/task/<tid>/schedstat`: the time it
 * ran on a CPU and the time it was runnable but waited on a run queue for one. Read before and
 * after a sample, the wait says whether a latency includes time in which the thread had work and
 * no CPU — on a machine whose cores the daemon shares with the bench, the broker and the plant.
 */
export interface ThreadSched {
  readonly cpuMs: number;
  readonly waitMs: number;
}

/** The thread's accounting now; null where the kernel does not provide it. */
export function threadSched(pid: number, tid: number = pid): ThreadSched | null {
  try {
    const [cpuNs, waitNs] = readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8')
      .trim()
      .split(/\s+/)
      .map(Number);
    if (cpuNs === undefined || waitNs === undefined || !Number.isFinite(waitNs)) return null;
    return { cpuMs: cpuNs / 1e6, waitMs: waitNs / 1e6 };
  } catch {
    return null;
  }
}

/** How long a thread waited for a CPU between two readings; null without both. */
export function waitedMs(before: ThreadSched | null, after: ThreadSched | null): number | null {
  return before === null || after === null ? null : after.waitMs - before.waitMs;
}
