import { procCpuSeconds } from '../children.js';
import { HttpsClient } from '../clients.js';
import { isBroker, modbusValves, type RunContext } from '../context.js';
import { daemonLoad, markDaemon, type RunningDaemon } from '../daemon.js';
import { cpuTicks, stealBetween } from '../machine.js';
import { nextMove } from '../raw-drivers.js';
import type { Throughput } from '../results.js';
import { distribution, round } from '../stats.js';
import { untilReady } from './latency.js';

/**
 * Throughput: `clients` HTTPS clients over one keep-alive agent, each with its own valve,
 * each sending its next command as soon as the last one is answered (confirmed by readback,
 * journaled durably). Counted over a window after a warm-up; every loop ends at
 * the window's end and every request has a timeout.
 */

interface Done {
  readonly at: number;
  readonly ms: number;
  readonly outcome: string;
}

export async function throughput(
  ctx: RunContext,
  daemon: RunningDaemon,
  /** The simulator's own round trip for one read, p50 (the baseline). */
  simulatorReadMs: number,
): Promise<Throughput> {
  const { options } = ctx;
  const valves = modbusValves(ctx).slice(0, options.clients);
  const https = new HttpsClient(
    { port: daemon.site.httpsPort, ca: ctx.credentials.ca, token: ctx.credentials.token },
    valves.length,
  );
  const states = await ctx.plant.child.request<Record<string, string>>('states');
  const run = Date.now().toString(36);
  const done: Done[] = [];
  try {
    await untilReady(https);
    const mqttConnected =
      (JSON.parse((await https.get('/readyz')).body) as { checks?: { mqtt?: { ok?: boolean } } })
        .checks?.mqtt?.ok === true;
    ctx.progress(
      `throughput: ${valves.length} HTTPS clients, ${options.warmupSeconds} s warm-up + ${options.throughputSeconds} s`,
    );
    const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
    let stopped = false;
    // The measured window: the daemon's probes, event loop, CPU and fsyncs are marked at its
    // start and read at its end; commands are counted when their answer came within it.
    const window = (async () => {
      await sleep(options.warmupSeconds * 1000);
      const cpu0 = {
        sim: ctx.plant.child.cpuSeconds(),
        broker: isBroker(ctx.broker) ? procCpuSeconds(ctx.broker.pid) : Number.NaN,
        bench: process.cpuUsage(),
      };
      const from = performance.now();
      const ticks0 = cpuTicks();
      const mark = await markDaemon(daemon);
      await sleep(options.throughputSeconds * 1000);
      const to = performance.now();
      const steal = stealBetween(ticks0, cpuTicks());
      const load = await daemonLoad(daemon, mark, ctx.shim);
      const cpu1 = {
        sim: ctx.plant.child.cpuSeconds(),
        broker: isBroker(ctx.broker) ? procCpuSeconds(ctx.broker.pid) : Number.NaN,
        bench: process.cpuUsage(cpu0.bench),
      };
      stopped = true;
      const seconds = (to - from) / 1000;
      return {
        from,
        to,
        load,
        steal,
        cpu: {
          simulator: round((cpu1.sim - cpu0.sim) / seconds),
          broker: isBroker(ctx.broker) ? round((cpu1.broker - cpu0.broker) / seconds) : null,
          bench: round((cpu1.bench.user + cpu1.bench.system) / 1e6 / seconds),
        },
      };
    })();
    // A bound on every client loop besides the window's end.
    const hardEnd =
      performance.now() + (options.warmupSeconds + options.throughputSeconds + 30) * 1000;
    await Promise.all(
      valves.map(async (device, c) => {
        for (let i = 0; !stopped && performance.now() < hardEnd; i++) {
          const move = nextMove(states[device] ?? 'CLOSED');
          const t0 = performance.now();
          let outcome: string;
          try {
            const a = await https.command(`tp-${run}-${c}-${i}`, { device, action: move.action });
            const body = JSON.parse(a.body) as { state?: string; code?: string };
            outcome =
              a.status === 200 && body.state === 'confirmed'
                ? 'confirmed'
                : `${a.status} ${body.code ?? body.state ?? ''}`;
          } catch (error) {
            outcome = error instanceof Error ? error.message.slice(0, 80) : String(error);
          }
          const t1 = performance.now();
          done.push({ at: t1, ms: t1 - t0, outcome });
          if (outcome === 'confirmed') states[device] = move.target;
          else
            Object.assign(states, await ctx.plant.child.request<Record<string, string>>('states'));
        }
      }),
    );
    const { from, to, load, cpu, steal } = await window;
    const inWindow = done.filter((d) => d.at >= from && d.at < to);
    const confirmed = inWindow.filter((d) => d.outcome === 'confirmed');
    const failures: Record<string, number> = {};
    for (const d of inWindow) {
      if (d.outcome !== 'confirmed') failures[d.outcome] = (failures[d.outcome] ?? 0) + 1;
    }
    const seconds = (to - from) / 1000;
    const fsyncs = 'skipped' in load.fsyncs ? null : load.fsyncs;
    const perCommand = (n: number): number => round(n / Math.max(1, confirmed.length));
    const requests = perCommand(load.modbus.reads + load.modbus.writes);
    return {
      clients: valves.length,
      valves: valves.length,
      seconds: round(seconds),
      confirmed: confirmed.length,
      confirmedPerSecond: round(confirmed.length / seconds),
      stealShare: steal,
      latencyMs: distribution(confirmed.map((d) => d.ms)),
      failures,
      mqttConnected,
      fsyncsPerCommand: fsyncs === null ? null : perCommand(fsyncs.mainCalls + fsyncs.otherCalls),
      fsyncMsPerCommand: fsyncs === null ? null : perCommand(fsyncs.mainMs + fsyncs.otherMs),
      modbusRequestsPerCommand: requests,
      ceilings: {
        plcConnectionPerSecond: round(1000 / (requests * simulatorReadMs)),
        serialFsyncsPerSecond:
          fsyncs === null || fsyncs.mainMs === 0
            ? null
            : round((1000 * Math.max(1, confirmed.length)) / fsyncs.mainMs),
      },
      cpuCores: { daemon: load.cpuCores, ...cpu },
      daemon: load,
    };
  } finally {
    https.close();
  }
}
