import { join } from 'node:path';
import { BenchChild } from './children.js';
import { firstAnswer } from './clients.js';
import type { RunContext } from './context.js';
import type { DaemonReady, DaemonStats } from './daemon-process.js';
import { FsyncCounterFile, fsyncDelta, type FsyncCounts } from './fsync-counter.js';
import { BENCH_DIR } from './paths.js';
import type { DaemonLoad, Skipped } from './results.js';
import type { Site } from './site.js';
import { round } from './stats.js';

/** A running bench daemon: its process, its fsync counters and its site. */
export interface RunningDaemon {
  readonly child: BenchChild;
  readonly site: Site;
  readonly ready: DaemonReady;
  /** ms from spawning the process to the first answer of GET /healthz; null: none in time. */
  readonly listenMs: number | null;
  readonly spawnedAt: number;
  readonly fsync: FsyncCounterFile | null;
  stop(): Promise<void>;
}

export async function startDaemon(
  ctx: RunContext,
  site: Site,
  name: string,
  timeoutMs = 120_000,
): Promise<RunningDaemon> {
  const fsync = ctx.shim.available ? new FsyncCounterFile(join(site.dir, 'fsync.bin')) : null;
  const spawnedAt = Date.now();
  // Polled from the moment of the spawn: the listener may open before the daemon is ready.
  const gaveUp = new AbortController();
  const answered = firstAnswer(site.httpsPort, ctx.credentials.ca, timeoutMs, gaveUp.signal);
  let started: Awaited<ReturnType<typeof BenchChild.start>>;
  try {
    started = await BenchChild.start({
      name,
      script: ctx.compiled.path(join(BENCH_DIR, 'daemon-process.ts')),
      argv: [site.configPath],
      env: fsync === null ? {} : fsync.env(ctx.shim, { delayMs: ctx.options.fsyncDelayMs }),
      logFile: join(ctx.dir, `${name}.log`),
      timeoutMs,
    });
  } catch (error) {
    gaveUp.abort();
    await answered;
    throw error;
  }
  const { child } = started;
  const ready = started.ready as DaemonReady;
  const at = await answered;
  return {
    child,
    site,
    ready,
    listenMs: at === null ? null : at - spawnedAt,
    spawnedAt,
    fsync,
    stop: async () => {
      await child.stop();
    },
  };
}

/** Starts a measured window on the daemon: probes, event loop, CPU and fsyncs from now. */
export async function markDaemon(daemon: RunningDaemon): Promise<{
  fsync: FsyncCounts | null;
  cpu: number;
}> {
  await daemon.child.request('mark');
  return { fsync: daemon.fsync?.read() ?? null, cpu: daemon.child.cpuSeconds() };
}

/** What the daemon did since `mark`. */
export async function daemonLoad(
  daemon: RunningDaemon,
  mark: { fsync: FsyncCounts | null; cpu: number },
  shim: RunContext['shim'],
): Promise<DaemonLoad> {
  const stats = await daemon.child.request<DaemonStats>('stats');
  const fsyncs: FsyncCounts | Skipped =
    daemon.fsync === null || mark.fsync === null
      ? { skipped: shim.available ? 'no counter file' : shim.reason }
      : fsyncDelta(daemon.fsync.read(), mark.fsync);
  const seconds = stats.elapsedMs / 1000;
  return {
    seconds: round(seconds),
    eventLoopUtilisation: round(stats.eventLoopUtilisation),
    cpuCores: round((daemon.child.cpuSeconds() - mark.cpu) / seconds),
    journal: stats.probes.journal,
    modbus: stats.probes.modbus,
    fsyncs,
  };
}
