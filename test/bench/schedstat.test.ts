import { spawn, spawnSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import { threadSched, waitedMs } from '../../bench/schedstat.js';
import { realComponent } from '../helpers/real.js';

const taskset = realComponent(
  'taskset',
  spawnSync('taskset', ['--version']).status === 0,
  'apt-get install util-linux',
);

/**
 * The bench reads the kernel's run-queue accounting beside each replay (bench/schedstat.ts).
 * Ground truth here: a thread that spins counts CPU time, and two threads spinning on one
 * CPU (pinned with taskset) make each wait for it while the other runs.
 */
describe('threadSched', () => {
  it('counts the CPU time a thread spins, as the process accounting does', () => {
    const before = threadSched(process.pid);
    expect(before).not.toBeNull();
    const usage = process.cpuUsage();
    const start = performance.now();
    // Spins until the thread has had 50 ms of CPU (bounded by 20 s of wall time), not for 50
    // ms of wall time: on a loaded runner a thread may wait for a CPU most of such a span.
    const end = start + 20_000;
    while (performance.now() < end) {
      const spent = process.cpuUsage(usage);
      if (spent.user + spent.system >= 50_000) break;
    }
    const wallMs = performance.now() - start;
    const after = threadSched(process.pid)!;
    const { user, system } = process.cpuUsage(usage);
    const processMs = (user + system) / 1000;
    const cpuMs = after.cpuMs - before!.cpuMs;
    // A spinning thread is on a CPU or waiting for one the whole time (less a scheduler tick,
    // by which the kernel's figure of a running thread may lag). Its CPU time is part of the
    // process's, which also holds what the process's other threads (V8's compiler and
    // garbage collector) did meanwhile: on a busy machine that is more than a few percent, so
    // the process's figure bounds the thread's from above only.
    const waited = waitedMs(before, after)!;
    expect(processMs).toBeGreaterThan(5);
    expect(cpuMs).toBeGreaterThan(5);
    expect(waited).toBeGreaterThanOrEqual(0);
    expect(cpuMs + waited).toBeGreaterThanOrEqual(wallMs * 0.9 - 5);
    expect(cpuMs).toBeLessThanOrEqual(processMs + 2);
  });

  it.skipIf(!taskset)('counts the wait of two threads that share one CPU', async () => {
    // Each spins 300 ms of its own CPU time, then waits to be read and told to exit.
    const spin = `let t=process.cpuUsage();while((process.cpuUsage(t).user+process.cpuUsage(t).system)<300e3){}process.stdout.write('done');process.stdin.resume();`;
    const children = [0, 1].map(() =>
      spawn('taskset', ['-c', '0', process.execPath, '-e', spin], { stdio: 'pipe' }),
    );
    try {
      await Promise.all(
        children.map(
          (c) =>
            new Promise<void>((resolve) =>
              c.stdout.once('data', () => {
                resolve();
              }),
            ),
        ),
      );
      for (const c of children) {
        const sched = threadSched(c.pid!);
        expect(sched).not.toBeNull();
        // Sharing the CPU, each waited while the other ran: most of the other's 300 ms.
        expect(sched!.cpuMs).toBeGreaterThanOrEqual(300);
        expect(sched!.waitMs).toBeGreaterThanOrEqual(100);
      }
    } finally {
      for (const c of children) c.kill();
    }
  });

  it('is null for a thread that does not exist, and a wait needs both readings', () => {
    expect(threadSched(process.pid, 2 ** 22 + 1)).toBeNull();
    expect(waitedMs(null, threadSched(process.pid))).toBeNull();
  });
});
