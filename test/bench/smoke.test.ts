import { spawn } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { mosquittoAvailable } from '../helpers/mosquitto.js';

/**
 * `npm run bench` with tiny counts, so that the benchmark program cannot rot: it runs whole
 * (plant, daemon, Mosquitto, every phase) into a temporary folder, and its results.json has
 * every section with numbers. Nothing here judges speed: the bench is a program, and a slow
 * machine is not a failure. The committed bench/results.json and docs/PERFORMANCE.md are
 * never written by this test.
 */

// prettier-ignore
const TINY = [
  '--valves', '4',
  '--scan-ms', '4',
  '--sim-requests', '20',
  '--sim-seconds', '1',
  '--baseline-commands', '10',
  '--opcua-commands', '5',
  '--e2e-commands', '10',
  '--replays', '10',
  '--clients', '4',
  '--warmup-seconds', '0',
  '--throughput-seconds', '1',
  '--recovery-commands', '20',
  '--recovery-timeout-seconds', '60',
  '--scale-small', '100',
  '--scale-large', '300',
  '--scale-samples', '20',
  '--scale-writes', '10',
];

const committed = [join(ROOT, 'bench', 'results.json'), join(ROOT, 'docs', 'PERFORMANCE.md')];
const mtime = (path: string): number | null => (existsSync(path) ? statSync(path).mtimeMs : null);

function runBench(out: string, trace: string): Promise<{ code: number | null; output: string }> {
  return new Promise((resolve, reject) => {
    const env = {
      ...Object.fromEntries(
        Object.entries(process.env).filter(([name]) => !name.startsWith('SLUICE_BENCH_')),
      ),
      SLUICE_BENCH_TRACE: trace,
    };
    const child = spawn(
      process.execPath,
      [
        '--import',
        join(ROOT, 'test/helpers/ts-register.mjs'),
        join(ROOT, 'bench/run.ts'),
        '--out',
        out,
        ...TINY,
      ],
      { env, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
    child.once('error', reject);
    child.once('exit', (code) => {
      resolve({ code, output });
    });
  });
}

interface StepsResult {
  readonly latencyMeanMs: number;
  readonly steps: readonly { readonly step: string; readonly meanMs: number }[];
}

/** The series the bench wrote into the trace folder (SLUICE_BENCH_TRACE): key, sent, answered. */
function series(trace: string, intake: string): { key: string; sentAt: number }[] {
  return JSON.parse(readFileSync(join(trace, `series-${intake}.json`), 'utf8')) as {
    key: string;
    sentAt: number;
  }[];
}

/** Every listed path of the results is a finite number. */
function numbersAt(results: unknown, paths: readonly string[]): Record<string, unknown> {
  const found: Record<string, unknown> = {};
  for (const path of paths) {
    let node: unknown = results;
    for (const part of path.split('.')) {
      node =
        typeof node === 'object' && node !== null
          ? (node as Record<string, unknown>)[part]
          : undefined;
    }
    found[path] = typeof node === 'number' && Number.isFinite(node) ? 'number' : node;
  }
  return found;
}

const latency = (prefix: string): string[] => [
  `${prefix}.latencyMs.p50`,
  `${prefix}.latencyMs.p99`,
  `${prefix}.ratioP50`,
  `${prefix}.overheadP50Ms`,
  `${prefix}.stages.intakeMs`,
  `${prefix}.stages.dispatchedToSettledMs`,
  `${prefix}.stages.dispatchedToTakenMs`,
  `${prefix}.stages.takenToSettledMs`,
  // Step by step from the daemon's probe events (bench/phases/steps.ts).
  `${prefix}.steps.commands`,
  `${prefix}.steps.latencyMeanMs`,
  `${prefix}.steps.waitsMs.p50`,
  `${prefix}.steps.ownMs.p50`,
  `${prefix}.daemon.eventLoopUtilisation`,
];

describe('npm run bench, smoke run', () => {
  const broker = mosquittoAvailable();

  it('runs every phase with tiny counts and reports numbers for each', async () => {
    const { dir, cleanup } = tempDir('sluice-bench-smoke-');
    const before = committed.map(mtime);
    try {
      const trace = join(dir, 'trace');
      const run = await runBench(dir, trace);
      expect(run.code, run.output).toBe(0);
      const results = JSON.parse(readFileSync(join(dir, 'results.json'), 'utf8')) as Record<
        string,
        unknown
      >;
      const paths = [
        'machine.cores',
        'baseline.simulator.readMs.p50',
        'baseline.disk.fsyncMs.p50',
        'baseline.disk.fsyncAfterIdleMs.p50',
        'baseline.simulator.capacity.requestsPerSecond',
        'baseline.modbus.confirmMs.p50',
        'baseline.opcua.confirmMs.p50',
        'baseline.plant.takeWaitMs.p50',
        ...latency('endToEnd.https'),
        'replay.https.latencyMs.p99',
        'replay.https.controllerWrites',
        // Linux: the main threads' run-queue waits beside each replay (bench/schedstat.ts).
        'replay.https.cpuWait.msPerSample.daemon',
        'replay.https.cpuWait.overTarget',
        'replay.https.cpuWait.withoutWaitMs.n',
        // Its latency needs a command answered within the one-second window: not asserted.
        'throughput.confirmedPerSecond',
        'throughput.daemon.eventLoopUtilisation',
        'throughput.modbusRequestsPerCommand',
        // The cores' budget and the HTTPS intake's own window (bench/phases/throughput.ts).
        'throughput.cpuBudget.cores',
        'baseline.modbus.cpuMsPerRequest',
        'throughput.intakeAlone.perSecond',
        'throughput.intakeAlone.daemonCpuMs',
        'recovery.listenMs',
        'recovery.listenEmptyMs',
        'recovery.allSettledMs',
        // The same recovery on the shipped profile as it is (no bound on an acknowledged write).
        'recoveryShipped.allSettledMs',
        'journalScale.small.bytesPerCommand',
        'journalScale.small.claimMs.p99',
        'journalScale.small.lookupMs.p99',
        'journalScale.large.bytesPerCommand',
        'journalScale.large.lookupMs.p99',
        'journalScale.lookupP99Ratio',
        'journalScale.daemon.rssMiB',
        ...(broker
          ? [
              ...latency('endToEnd.mqtt'),
              'replay.mqtt.latencyMs.p99',
              'replay.mqtt.controllerWrites',
              // The same clients over one MQTT connection (bench/phases/throughput.ts).
              'throughputMqtt.confirmedPerSecond',
              'throughputMqtt.daemon.eventLoopUtilisation',
              'throughputMqtt.cpuBudget.cores',
            ]
          : []),
      ];
      const found = numbersAt(results, paths);
      expect(found).toEqual(Object.fromEntries(paths.map((p) => [p, 'number'])));
      if (!broker) {
        const mqtt = (results.endToEnd as { mqtt: { skipped?: unknown } }).mqtt;
        expect(typeof mqtt.skipped).toBe('string');
        expect(typeof (results.throughputMqtt as { skipped?: unknown }).skipped).toBe('string');
      } else {
        // Over MQTT the commands were confirmed (the window of a second may count none).
        const tm = results.throughputMqtt as { failures: Record<string, number>; intake: string };
        expect(tm).toMatchObject({ intake: 'mqtt', failures: {} });
      }
      // A command's steps end where the next begins: their means add up to its latency's.
      const steps = (results.endToEnd as { https: { steps: StepsResult } }).https.steps;
      const sum = steps.steps.reduce((total, t) => total + t.meanMs, 0);
      expect(Math.abs(sum - steps.latencyMeanMs)).toBeLessThan(0.02 * steps.latencyMeanMs);
      expect(series(trace, 'https').length).toBe(10);
      // Replays answer from the journal: the simulator's own counters saw no write.
      expect(results.replay).toMatchObject({ https: { controllerWrites: 0 } });
      const targets = results.targets as { name: string; pass: boolean | null }[];
      expect(targets.length).toBeGreaterThan(10);
      for (const t of targets) expect([true, false, null]).toContain(t.pass);

      const doc = readFileSync(join(dir, 'PERFORMANCE.md'), 'utf8');
      expect(doc).toContain('## Targets');
      expect(doc).not.toMatch(/\{\{/);
      expect(run.output).toContain('== Targets ==');

      // SLUICE_BENCH_TRACE: each daemon's journal calls and Modbus requests, the plant's write
      // logs (bench/trace.ts), with wall-clock times.
      const files = readdirSync(trace);
      const daemonTraces = files.filter((f) => /^daemon-\d+\.jsonl$/.test(f));
      expect(daemonTraces.length).toBeGreaterThan(0);
      const lines = daemonTraces.flatMap((f) =>
        readFileSync(join(trace, f), 'utf8')
          .trim()
          .split('\n')
          .map((l) => JSON.parse(l) as Record<string, unknown>),
      );
      const now = Date.now();
      const sane = (e: Record<string, unknown>): boolean =>
        typeof e.start === 'number' &&
        typeof e.end === 'number' &&
        e.end >= e.start &&
        now - e.start < 3_600_000;
      expect(lines.some((e) => typeof e.modbus === 'string' && sane(e))).toBe(true);
      expect(lines.some((e) => e.journal === 'claim' && sane(e))).toBe(true);
      const plantTrace = files.find((f) => /^plant-\d+\.json$/.test(f));
      expect(plantTrace).toBeDefined();
      const logs = JSON.parse(readFileSync(join(trace, plantTrace ?? ''), 'utf8')) as Record<
        string,
        { seq: number; settledAt: number | null }[]
      >;
      expect(
        Object.values(logs).some((l) => l.some((w) => w.seq > 0 && w.settledAt !== null)),
      ).toBe(true);
    } finally {
      cleanup();
    }
    expect(committed.map(mtime)).toEqual(before);
  }, 240_000);
});
