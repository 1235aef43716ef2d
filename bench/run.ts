/**
 * `npm run bench`: measures the bridge in one run against the bench plant (bench/plant.yaml)
 * and prints a table; writes bench/results.json and docs/PERFORMANCE.md (or both into
 * `--out DIR`). Settings: bench/options.ts (`npm run bench -- --help`). A program, not a test:
 * it never fails on a slow machine; it exits 1 only when a measurement could not be made.
 */
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statfsSync, writeFileSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { parse } from 'yaml';
import { BenchChild } from './children.js';
import { compileTree } from './compile.js';
import { isBroker, type RunContext } from './context.js';
import { startDaemon } from './daemon.js';
import { buildFsyncShim } from './fsync-counter.js';
import {
  cpuTicks,
  machine,
  stealBetween,
  wallAgainstMonotonic,
  wallClockMoved,
} from './machine.js';
import { mosquittoPath, startBroker } from './mosquitto.js';
import { OptionsError, parseOptions, usage, type BenchOptions } from './options.js';
import { BENCH_DIR } from './paths.js';
import { baseline } from './phases/baseline.js';
import { latency } from './phases/latency.js';
import { recovery } from './phases/recovery.js';
import { journalScale } from './phases/scale.js';
import { throughput } from './phases/throughput.js';
import type { PlantReady } from './plant-process.js';
import { evaluateTargets, renderMarkdown, renderTable } from './report.js';
import type { Results } from './results.js';
import { credentials, valveProfile, writeSite } from './site.js';
import { round } from './stats.js';

/** The bench plant cut to the run's valves, scan and travel, without OPC UA when asked. */
function plantInput(options: BenchOptions): Record<string, unknown> {
  const plant = parse(readFileSync(join(BENCH_DIR, 'plant.yaml'), 'utf8')) as {
    plcs: Record<
      string,
      { protocol: string; scanMs: number; devices: Record<string, { travelMs?: number }> }
    >;
  };
  for (const [name, plc] of Object.entries(plant.plcs)) {
    if (plc.protocol === 'opcua' && !options.opcua) {
      Reflect.deleteProperty(plant.plcs, name);
      continue;
    }
    plc.scanMs = options.scanMs;
    for (const device of Object.values(plc.devices)) device.travelMs = options.travelMs;
    if (plc.protocol === 'modbus') {
      plc.devices = Object.fromEntries(Object.entries(plc.devices).slice(0, options.valves));
    }
  }
  return plant;
}

async function main(options: BenchOptions): Promise<void> {
  const startedAt = new Date();
  const t0 = performance.now();
  const dir = mkdtempSync(join(tmpdir(), 'sluice-bench-'));
  const cleanup: (() => Promise<void> | void)[] = [];
  const progress = (line: string): void => {
    process.stderr.write(
      `[${((performance.now() - t0) / 1000).toFixed(1).padStart(6)} s] ${line}\n`,
    );
  };
  let interrupted = false;
  const onSignal = (): void => {
    if (interrupted) process.exit(130);
    interrupted = true;
    progress('interrupted: stopping the plant, broker and daemon');
    void unwind().then(() => process.exit(130));
  };
  const unwind = async (): Promise<void> => {
    for (let step = cleanup.pop(); step !== undefined; step = cleanup.pop()) {
      try {
        await step();
      } catch (error) {
        process.stderr.write(
          `cleanup: ${error instanceof Error ? error.message : String(error)}\n`,
        );
      }
    }
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  cleanup.push(() => {
    if (options.keep) progress(`scratch folder kept: ${dir}`);
    else rmSync(dir, { recursive: true, force: true });
  });
  try {
    // The large journal-scale point needs its journal on disk: fail now, not after minutes.
    const { bavail, bsize } = statfsSync(dir);
    const needBytes = options.scaleLarge * 2048;
    if (bavail * bsize < needBytes) {
      throw new Error(
        `${dir} has ${Math.floor((bavail * bsize) / 2 ** 20)} MiB free; --scale-large ${options.scaleLarge} needs about ${Math.ceil(needBytes / 2 ** 20)} MiB (set TMPDIR elsewhere or a smaller --scale-large)`,
      );
    }
    const box = machine(dir);
    const ticksAtStart = cpuTicks();
    const wallAtStart = wallAgainstMonotonic();
    progress(`scratch ${dir} on ${box.filesystem}; ${box.cores} cores, ${box.cpuModel}`);
    const shim = buildFsyncShim(dir);
    progress(
      shim.available
        ? 'fsyncs are counted by an LD_PRELOAD shim in the daemon process'
        : `fsyncs are not counted: ${shim.reason}`,
    );
    if (options.fsyncDelayMs > 0) {
      if (!shim.available) {
        throw new Error(`--fsync-delay-ms needs the fsync shim, which is missing: ${shim.reason}`);
      }
      progress(`every fsync of the daemons made to last at least ${options.fsyncDelayMs} ms`);
    }
    progress('compiling the daemon and the plant for their processes');
    const compiled = await compileTree(join(dir, 'js'));
    const cred = await credentials(dir);
    const profiles = valveProfile(
      join(dir, 'profiles'),
      options.scanMs,
      // A bound shorter than the scan is refused (no controller can keep it): at least a scan.
      options.ackedWriteTakenWithinMs === 0
        ? null
        : Math.max(options.ackedWriteTakenWithinMs, options.scanMs),
    );

    progress(
      `starting the bench plant (${options.valves} valves, scan ${options.scanMs} ms${options.opcua ? ', OPC UA PLC' : ''})`,
    );
    const plantChild = await BenchChild.start({
      name: 'plant',
      script: compiled.path(join(BENCH_DIR, 'plant-process.ts')),
      argv: [JSON.stringify(plantInput(options))],
      logFile: join(dir, 'plant.log'),
      timeoutMs: 120_000,
    });
    const plant = { child: plantChild.child, ready: plantChild.ready as PlantReady };
    cleanup.push(async () => {
      await plant.child.stop();
    });

    const binary = mosquittoPath();
    let broker: RunContext['broker'];
    if (binary === null) {
      broker = {
        skipped: 'mosquitto is not installed (apt-get install mosquitto): MQTT not measured',
      };
      progress(broker.skipped);
    } else {
      const started = await startBroker(binary, dir, join(dir, 'mosquitto.log'));
      cleanup.push(() => started.stop());
      broker = started;
    }
    const ctx: RunContext = {
      options,
      dir,
      plant: { child: plant.child, info: plant.ready },
      credentials: cred,
      profiles,
      broker,
      shim,
      compiled,
      progress,
    };

    const base = await baseline(ctx);
    const site = await writeSite({
      dir: join(dir, 'main'),
      plant: plant.ready,
      credentials: cred,
      profilesDir: profiles.dir,
      mqttUrl: 'url' in broker ? broker.url : null,
    });
    progress('starting the daemon on an empty journal');
    const daemon = await startDaemon(ctx, site, 'daemon');
    let lat: Awaited<ReturnType<typeof latency>>;
    let tp: Awaited<ReturnType<typeof throughput>>;
    let tpMqtt: Results['throughputMqtt'];
    try {
      lat = await latency(ctx, daemon, base.modbus);
      tp = await throughput(
        ctx,
        daemon,
        base.simulator.readMs.p50,
        base.modbus.cpuMsPerRequest ?? null,
      );
      tpMqtt = isBroker(broker)
        ? await throughput(
            ctx,
            daemon,
            base.simulator.readMs.p50,
            base.modbus.cpuMsPerRequest ?? null,
            'mqtt',
          )
        : { skipped: broker.skipped };
    } finally {
      await daemon.stop();
    }
    const rec = await recovery(ctx, daemon.listenMs, profiles, 'recovery');
    // The same on the shipped profile as it is: no bound stated on an acknowledged write.
    const recShipped = !options.recoveryShipped
      ? { skipped: 'not run (--no-recovery-shipped)' }
      : profiles.ackedWriteTakenWithinMs === null
        ? { skipped: 'the bench profile states no bound either (--acked-write-taken-within-ms 0)' }
        : await recovery(
            ctx,
            daemon.listenMs,
            valveProfile(join(dir, 'profiles-shipped'), options.scanMs),
            'recovery-shipped',
          );
    const scale = await journalScale(ctx, site.journalPath);
    box.loadAtEnd = Math.round((loadavg()[0] ?? 0) * 100) / 100;
    box.stealShare = stealBetween(ticksAtStart, cpuTicks());
    box.wallClockStepMs = wallClockMoved(wallAtStart);

    const partial: Omit<Results, 'targets'> = {
      version: 1,
      startedAt: startedAt.toISOString(),
      durationSeconds: round((performance.now() - t0) / 1000),
      machine: box,
      settings: {
        ...Object.fromEntries(
          Object.entries(options).filter(
            ([k]) => !['resultsFile', 'performanceFile', 'keep', 'render'].includes(k),
          ),
        ),
        profileScanMs: profiles.scanMs ?? 'not in the profile',
        profileAckedWriteTakenWithinMs: profiles.ackedWriteTakenWithinMs ?? 'none stated',
      },
      fsyncCounting: shim.available
        ? 'LD_PRELOAD shim (bench/fsync-count.c) in the daemon process: every fsync/fdatasync'
        : `not counted: ${shim.reason}`,
      baseline: base,
      endToEnd: { https: lat.https, mqtt: lat.mqtt },
      replay: { https: lat.replayHttps, mqtt: lat.replayMqtt },
      throughput: tp,
      throughputMqtt: tpMqtt,
      recovery: rec,
      recoveryShipped: recShipped,
      journalScale: scale,
    };
    const results: Results = { ...partial, targets: evaluateTargets(partial) };
    mkdirSync(dirname(options.resultsFile), { recursive: true });
    writeFileSync(options.resultsFile, `${JSON.stringify(results, null, 2)}\n`);
    mkdirSync(dirname(options.performanceFile), { recursive: true });
    writeFileSync(options.performanceFile, await renderMarkdown(results, options.performanceFile));
    process.stdout.write(renderTable(results));
    progress(`wrote ${options.resultsFile} and ${options.performanceFile}`);
  } finally {
    await unwind();
  }
}

let options: BenchOptions | 'help';
try {
  options = parseOptions(process.argv.slice(2), process.env);
} catch (error) {
  if (error instanceof OptionsError) {
    process.stderr.write(`bench: ${error.message}\n`);
    process.exit(2);
  }
  throw error;
}
if (options === 'help') {
  process.stdout.write(`${usage()}\n`);
} else if (options.render !== null) {
  const results = JSON.parse(readFileSync(options.render, 'utf8')) as Results;
  writeFileSync(options.performanceFile, await renderMarkdown(results, options.performanceFile));
  process.stdout.write(renderTable(results));
  process.stderr.write(`wrote ${options.performanceFile} from ${options.render}\n`);
} else {
  await main(options);
}
