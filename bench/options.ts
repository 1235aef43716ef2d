import { join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { ROOT } from './paths.js';

/**
 * The bench's settings: defaults (the full run) < environment (SLUICE_BENCH_<NAME>, e.g.
 * SLUICE_BENCH_CLIENTS=10) < flags (--clients 10). Every count bounds a loop; a smoke run
 * sets them small.
 */

export interface BenchOptions {
  /** Valves on the bench's Modbus PLC (at most the 100 of bench/plant.yaml). */
  readonly valves: number;
  /** Controller scan of the bench plant's PLCs, ms. */
  readonly scanMs: number;
  /** Full-stroke travel of every bench valve; 0: at the target the scan that takes a command. */
  readonly travelMs: number;
  /** Sequential raw Modbus reads against the simulator alone. */
  readonly simRequests: number;
  /** Seconds of parallel raw reads that measure the simulator's capacity. */
  readonly simSeconds: number;
  /** Write + readback round trips through the raw Modbus driver. */
  readonly baselineCommands: number;
  /** Include the OPC UA PLC and the raw OPC UA driver's round trip. */
  readonly opcua: boolean;
  readonly opcuaCommands: number;
  /** Sequential confirmed commands per intake. */
  readonly e2eCommands: number;
  /** Replays of settled keys per intake. */
  readonly replays: number;
  /** Concurrent HTTPS clients in the throughput run (one valve each, at most `valves`). */
  readonly clients: number;
  readonly warmupSeconds: number;
  readonly throughputSeconds: number;
  /**
   * The bench profile's `timing.ackedWriteTakenWithinMs`: the plant's controller takes every
   * write at its next scan (docs/device-profiles.md). 0: none stated (the confirm timeout). At
   * least the scan (`scanMs`): a shorter bound is raised to it, as the profile refuses one.
   */
  readonly ackedWriteTakenWithinMs: number;
  /** Open commands the journal holds when the daemon restarts. */
  readonly recoveryCommands: number;
  readonly recoveryTimeoutSeconds: number;
  /**
   * Run the recovery a second time on the shipped profile as it is (no bound stated on an
   * acknowledged write: the confirm timeout), beside the bench profile's.
   */
  readonly recoveryShipped: boolean;
  /** Retained keys of the two journal-scale points. */
  readonly scaleSmall: number;
  readonly scaleLarge: number;
  /** Lookups timed at each scale point. */
  readonly scaleSamples: number;
  /** Claims (each then dispatched and settled) timed at each scale point. */
  readonly scaleWrites: number;
  /**
   * Every fsync and fdatasync of the daemons (and of the disk-alone baseline) made to last at
   * least this many ms: a slower disk's flush emulated on this one (bench/fsync-count.c). 0: the
   * disk as it is.
   */
  readonly fsyncDelayMs: number;
  /** Where results.json and PERFORMANCE.md go. */
  readonly resultsFile: string;
  readonly performanceFile: string;
  /** Keep the run's scratch folder (journals, logs) instead of removing it. */
  readonly keep: boolean;
  /** Measure nothing: write PERFORMANCE.md again from this results.json (prose edits). */
  readonly render: string | null;
}

interface Spec {
  readonly flag: string;
  readonly kind: 'int' | 'bool';
  readonly fallback: number | boolean;
  readonly min?: number;
  readonly max?: number;
}

const SPECS: Record<
  Exclude<keyof BenchOptions, 'resultsFile' | 'performanceFile' | 'keep' | 'render'>,
  Spec
> = {
  valves: { flag: 'valves', kind: 'int', fallback: 100, min: 1, max: 100 },
  scanMs: { flag: 'scan-ms', kind: 'int', fallback: 10, min: 1, max: 1000 },
  travelMs: { flag: 'travel-ms', kind: 'int', fallback: 0, min: 0, max: 10_000 },
  simRequests: { flag: 'sim-requests', kind: 'int', fallback: 2000, min: 1 },
  simSeconds: { flag: 'sim-seconds', kind: 'int', fallback: 2, min: 1 },
  baselineCommands: { flag: 'baseline-commands', kind: 'int', fallback: 300, min: 1 },
  opcua: { flag: 'opcua', kind: 'bool', fallback: true },
  opcuaCommands: { flag: 'opcua-commands', kind: 'int', fallback: 100, min: 1 },
  e2eCommands: { flag: 'e2e-commands', kind: 'int', fallback: 300, min: 1 },
  replays: { flag: 'replays', kind: 'int', fallback: 500, min: 1 },
  clients: { flag: 'clients', kind: 'int', fallback: 100, min: 1 },
  warmupSeconds: { flag: 'warmup-seconds', kind: 'int', fallback: 2, min: 0 },
  throughputSeconds: { flag: 'throughput-seconds', kind: 'int', fallback: 15, min: 1 },
  ackedWriteTakenWithinMs: {
    flag: 'acked-write-taken-within-ms',
    kind: 'int',
    fallback: 100,
    min: 0,
    max: 8000,
  },
  recoveryCommands: { flag: 'recovery-commands', kind: 'int', fallback: 10_000, min: 1 },
  recoveryTimeoutSeconds: { flag: 'recovery-timeout-seconds', kind: 'int', fallback: 60, min: 1 },
  recoveryShipped: { flag: 'recovery-shipped', kind: 'bool', fallback: true },
  scaleSmall: { flag: 'scale-small', kind: 'int', fallback: 10_000, min: 1 },
  scaleLarge: { flag: 'scale-large', kind: 'int', fallback: 1_000_000, min: 1 },
  scaleSamples: { flag: 'scale-samples', kind: 'int', fallback: 2000, min: 1 },
  scaleWrites: { flag: 'scale-writes', kind: 'int', fallback: 500, min: 1 },
  fsyncDelayMs: { flag: 'fsync-delay-ms', kind: 'int', fallback: 0, min: 0, max: 1000 },
};

const envName = (flag: string): string => `SLUICE_BENCH_${flag.toUpperCase().replace(/-/g, '_')}`;

export class OptionsError extends Error {
  readonly code = 'INVALID_OPTIONS';
}

function usage(): string {
  const rows: [string, string][] = [
    ...Object.values(SPECS).map((s): [string, string] => [
      `  --${s.flag}${s.kind === 'bool' ? ` / --no-${s.flag}` : ' N'}`,
      `default ${String(s.fallback)} (${envName(s.flag)})`,
    ]),
    ['  --out DIR', 'write results.json and PERFORMANCE.md into DIR (default: bench/ and docs/)'],
    ['  --keep', 'keep the scratch folder (journals, logs)'],
    [
      '  --render RESULTS',
      'measure nothing: write PERFORMANCE.md from RESULTS (a results.json) and the template',
    ],
  ];
  // The longest option and two spaces: no description runs into its option.
  const width = Math.max(...rows.map(([option]) => option.length)) + 2;
  return [
    'usage: npm run bench -- [options]',
    ...rows.map(([option, text]) => option.padEnd(width) + text),
  ].join('\n');
}

export function parseOptions(
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): BenchOptions | 'help' {
  const flagOptions: Record<string, { type: 'string' | 'boolean' }> = {
    out: { type: 'string' },
    keep: { type: 'boolean' },
    render: { type: 'string' },
    help: { type: 'boolean' },
  };
  for (const s of Object.values(SPECS)) {
    flagOptions[s.flag] = { type: s.kind === 'bool' ? 'boolean' : 'string' };
  }
  let parsed: ReturnType<typeof parseArgs>;
  try {
    parsed = parseArgs({
      args: [...argv],
      options: flagOptions,
      allowNegative: true,
      strict: true,
    });
  } catch (error) {
    throw new OptionsError(`${error instanceof Error ? error.message : String(error)}\n${usage()}`);
  }
  const values = parsed.values as Record<string, string | boolean | undefined>;
  if (values.help === true) return 'help';
  const errors: string[] = [];
  const out: Record<string, number | boolean> = {};
  for (const [name, s] of Object.entries(SPECS)) {
    const fromFlag = values[s.flag];
    const fromEnv = env[envName(s.flag)];
    const raw = fromFlag ?? fromEnv;
    if (raw === undefined) {
      out[name] = s.fallback;
      continue;
    }
    const source = fromFlag === undefined ? envName(s.flag) : `--${s.flag}`;
    if (s.kind === 'bool') {
      if (typeof raw === 'boolean') out[name] = raw;
      else if (['1', 'true', 'yes'].includes(raw)) out[name] = true;
      else if (['0', 'false', 'no'].includes(raw)) out[name] = false;
      else errors.push(`${source}: "${raw}" is not a yes/no value`);
      continue;
    }
    const n = typeof raw === 'string' && /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
    if (!Number.isSafeInteger(n)) errors.push(`${source}: "${String(raw)}" is not a whole number`);
    else if (s.min !== undefined && n < s.min) errors.push(`${source}: ${n} is below ${s.min}`);
    else if (s.max !== undefined && n > s.max) errors.push(`${source}: ${n} is above ${s.max}`);
    else out[name] = n;
  }
  if (errors.length > 0) throw new OptionsError(`${errors.join('\n')}\n${usage()}`);
  const outDir = typeof values.out === 'string' ? resolve(values.out) : null;
  return {
    ...(out as unknown as Omit<
      BenchOptions,
      'resultsFile' | 'performanceFile' | 'keep' | 'render'
    >),
    resultsFile:
      outDir === null ? join(ROOT, 'bench', 'results.json') : join(outDir, 'results.json'),
    performanceFile:
      outDir === null ? join(ROOT, 'docs', 'PERFORMANCE.md') : join(outDir, 'PERFORMANCE.md'),
    keep: values.keep === true,
    render: typeof values.render === 'string' ? resolve(values.render) : null,
  };
}

export { usage };
