import { availableParallelism } from 'node:os';
import { procCpuSeconds } from '../children.js';
import { HttpsClient, MqttCommander } from '../clients.js';
import { isBroker, modbusValves, type RunContext } from '../context.js';
import { daemonLoad, markDaemon, type RunningDaemon } from '../daemon.js';
import { cpuTicks, stealBetween } from '../machine.js';
import { nextMove } from '../raw-drivers.js';
import type { CpuBudget, IntakeAlone, Throughput } from '../results.js';
import { GATEWAY } from '../site.js';
import { distribution, round } from '../stats.js';
import { untilReady } from './latency.js';

/**
 * Throughput: `clients` clients, each with its own valve, each sending its next command as
 * soon as the last one is answered (confirmed by readback, journaled durably). Over HTTPS they
 * share one keep-alive agent; over MQTT one connection (as a plant system's would be): each
 * command a QoS 1 publish, answered by the result the gateway publishes. Counted over a window
 * after a warm-up; every loop ends at the window's end and every request has a timeout.
 */

/** The target's rate (issue 14): confirmed commands per second. */
export const TARGET_PER_SECOND = 2000;

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
  /** The raw Modbus driver's CPU per request (the baseline); null when not measured. */
  driverCpuMsPerRequest: number | null,
  /** The intake the clients send their commands over. */
  intake: 'https' | 'mqtt' = 'https',
): Promise<Throughput> {
  const { options } = ctx;
  const valves = modbusValves(ctx).slice(0, options.clients);
  const https = new HttpsClient(
    { port: daemon.site.httpsPort, ca: ctx.credentials.ca, token: ctx.credentials.token },
    valves.length,
  );
  let mqtt: MqttCommander | null = null;
  const states = await ctx.plant.child.request<Record<string, string>>('states');
  const run = Date.now().toString(36);
  const done: Done[] = [];
  /** Each client's last confirmed key: what its lookups read in the intake's own window. */
  const lastKeys: (string | null)[] = valves.map(() => null);
  try {
    await untilReady(https);
    const mqttConnected =
      (JSON.parse((await https.get('/readyz')).body) as { checks?: { mqtt?: { ok?: boolean } } })
        .checks?.mqtt?.ok === true;
    if (intake === 'mqtt') {
      if (!isBroker(ctx.broker)) throw new Error('throughput over MQTT needs the broker');
      mqtt = await MqttCommander.connect(ctx.broker.url, GATEWAY, 'throughput');
    }
    const send = sender(https, mqtt);
    ctx.progress(
      `throughput: ${valves.length} ${intake === 'mqtt' ? 'MQTT clients over one connection' : 'HTTPS clients'}, ${options.warmupSeconds} s warm-up + ${options.throughputSeconds} s`,
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
          const key = `tp-${run}-${c}-${i}`;
          try {
            outcome = await send(key, device, move.action);
          } catch (error) {
            outcome = error instanceof Error ? error.message.slice(0, 80) : String(error);
          }
          const t1 = performance.now();
          done.push({ at: t1, ms: t1 - t0, outcome });
          if (outcome === 'confirmed') {
            states[device] = move.target;
            lastKeys[c] = key;
          } else
            Object.assign(states, await ctx.plant.child.request<Record<string, string>>('states'));
        }
      }),
    );
    const { from, to, load, cpu, steal } = await window;
    const { passed: confirmed, failures } = tally(done, from, to, 'confirmed');
    const seconds = (to - from) / 1000;
    const fsyncs = 'skipped' in load.fsyncs ? null : load.fsyncs;
    const perCommand = (n: number): number => round(n / Math.max(1, confirmed.length));
    const requests = perCommand(load.modbus.reads + load.modbus.writes);
    const journalMethods = ['write', 'commitBatch', 'get'].map((m) => load.journal[m]);
    const cpuBudget = budget(
      confirmed.length / seconds,
      {
        daemon: load.cpuCores,
        simulator: cpu.simulator,
        broker: cpu.broker,
        bench: cpu.bench,
      },
      journalMethods.some((m) => m === undefined)
        ? null
        : perCommand(journalMethods.reduce((sum, m) => sum + (m?.totalMs ?? 0), 0)),
      driverCpuMsPerRequest === null ? null : round(driverCpuMsPerRequest * requests),
    );
    // The HTTPS intake's lightest request, under the same clients: HTTPS's own bound.
    const intakeAlone =
      intake === 'https' ? await intakeWindow(ctx, daemon, https, lastKeys) : undefined;
    return {
      intake,
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
      cpuBudget,
      ...(intakeAlone === undefined ? {} : { intakeAlone }),
    };
  } finally {
    https.close();
    await mqtt?.close();
  }
}

/** Sends one command and says how it ended: `confirmed`, or what came instead. */
type Send = (key: string, device: string, action: string) => Promise<string>;

function sender(https: HttpsClient, mqtt: MqttCommander | null): Send {
  if (mqtt !== null) {
    return async (key, device, action) => {
      const r = await mqtt.command(device, { key, action, issuedAt: new Date().toISOString() });
      return r.state === 'confirmed' ? 'confirmed' : `MQTT ${r.code ?? r.state ?? ''}`;
    };
  }
  return async (key, device, action) => {
    const a = await https.command(key, { device, action });
    const body = JSON.parse(a.body) as { state?: string; code?: string };
    return a.status === 200 && body.state === 'confirmed'
      ? 'confirmed'
      : `${a.status} ${body.code ?? body.state ?? ''}`;
  };
}

/** The answers that came within the window: those with the `ok` outcome, and the rest by kind. */
function tally(
  done: readonly Done[],
  from: number,
  to: number,
  ok: string,
): { passed: Done[]; failures: Record<string, number> } {
  const passed: Done[] = [];
  const failures: Record<string, number> = {};
  for (const d of done) {
    if (d.at < from || d.at >= to) continue;
    if (d.outcome === ok) passed.push(d);
    else failures[d.outcome] = (failures[d.outcome] ?? 0) + 1;
  }
  return { passed, failures };
}

/**
 * Every process's CPU per confirmed command, from the cores each used in the window, and what
 * the simulator, broker and clients would leave the daemon of this machine's cores at the
 * target's rate: a daemon that needs more CPU per command than that cannot reach the target
 * here, whatever else it does.
 */
function budget(
  perSecond: number,
  cores: { daemon: number; simulator: number; broker: number | null; bench: number },
  journalMs: number | null,
  modbusMs: number | null,
): CpuBudget {
  const machineCores = availableParallelism();
  const ms = (c: number): number => (perSecond > 0 ? (1000 * c) / perSecond : Number.NaN);
  const msPerCommand = {
    daemon: round(ms(cores.daemon)),
    simulator: round(ms(cores.simulator)),
    broker: cores.broker === null ? null : round(ms(cores.broker)),
    bench: round(ms(cores.bench)),
  };
  const othersMs = ms(cores.simulator) + ms(cores.broker ?? 0) + ms(cores.bench);
  const allMs = othersMs + ms(cores.daemon);
  const othersCores = (TARGET_PER_SECOND * othersMs) / 1000;
  return {
    cores: machineCores,
    msPerCommand,
    coresPerSecond: round((1000 * machineCores) / allMs),
    targetPerSecond: TARGET_PER_SECOND,
    othersCoresAtTarget: round(othersCores),
    daemonBudgetMs: round((1000 * (machineCores - othersCores)) / TARGET_PER_SECOND),
    journalMs,
    modbusMs,
  };
}

/**
 * The HTTPS intake's own ceiling: the same clients, over the same keep-alive agent, each
 * looking up its last confirmed command (`GET /v1/commands/{key}`: TLS, HTTP, authentication,
 * one journal lookup, no write, no PLC) as fast as it is answered. What the daemon's CPU per
 * request is here, a confirmed command pays as well, on top of its journal writes, Modbus
 * requests and published result. A short warm-up (1 s, or the run's own when shorter), then a
 * window a third of the throughput window's (at least 2 s, or the throughput window when
 * shorter); every loop ends at the window's end. The bounds follow the run's own windows so
 * that a smoke run with tiny ones (test/bench/smoke.test.ts) does not wait 3 s here.
 */
async function intakeWindow(
  ctx: RunContext,
  daemon: RunningDaemon,
  https: HttpsClient,
  lastKeys: readonly (string | null)[],
): Promise<IntakeAlone> {
  const keys = lastKeys.filter((k): k is string => k !== null);
  const { warmupSeconds, throughputSeconds } = ctx.options;
  const seconds = Math.max(Math.min(2, throughputSeconds), Math.round(throughputSeconds / 3));
  ctx.progress(
    `throughput: the HTTPS intake alone, ${keys.length} clients looking up, ${seconds} s`,
  );
  const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
  const done: Done[] = [];
  let stopped = false;
  const window = (async () => {
    await sleep(Math.min(1, warmupSeconds) * 1000);
    const bench0 = process.cpuUsage();
    const mark = await markDaemon(daemon);
    const from = performance.now();
    await sleep(seconds * 1000);
    const to = performance.now();
    const load = await daemonLoad(daemon, mark, ctx.shim);
    const bench = process.cpuUsage(bench0);
    stopped = true;
    return { from, to, load, benchCpuSeconds: (bench.user + bench.system) / 1e6 };
  })();
  const hardEnd = performance.now() + (seconds + 30) * 1000;
  await Promise.all(
    keys.map(async (key) => {
      while (!stopped && performance.now() < hardEnd) {
        const t0 = performance.now();
        let outcome: string;
        try {
          const a = await https.get(`/v1/commands/${encodeURIComponent(key)}`);
          outcome = a.status === 200 ? 'ok' : `${a.status}`;
        } catch (error) {
          outcome = error instanceof Error ? error.message.slice(0, 80) : String(error);
        }
        const t1 = performance.now();
        done.push({ at: t1, ms: t1 - t0, outcome });
      }
    }),
  );
  const { from, to, load, benchCpuSeconds } = await window;
  const { passed: answered, failures } = tally(done, from, to, 'ok');
  const windowSeconds = (to - from) / 1000;
  const per = (cpuSeconds: number): number =>
    round((1000 * cpuSeconds) / Math.max(1, answered.length));
  return {
    request: 'GET /v1/commands/{key} of a settled key',
    clients: keys.length,
    seconds: round(windowSeconds),
    answered: answered.length,
    perSecond: round(answered.length / windowSeconds),
    latencyMs: distribution(answered.map((d) => d.ms)),
    failures,
    eventLoopUtilisation: load.eventLoopUtilisation,
    daemonCpuMs: per(load.cpuCores * load.seconds),
    benchCpuMs: per(benchCpuSeconds),
  };
}
