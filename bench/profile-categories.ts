import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { pathToFileURL } from 'node:url';

/**
 * Where a process's main thread spends its time, by kind of work, from a V8 CPU profile (a
 * `.cpuprofile` written by `--cpu-prof`, as `SLUICE_BENCH_CPU_PROFILE` makes every child of the
 * bench write). A flat profile (no function above a few percent) still says something once its
 * samples are put in a few bins: how much of the thread is the journal, Sluice's own code, Node's
 * own JavaScript, the system calls, the dependencies and the garbage collector — what a change of
 * Sluice's code can win at most, and what only another thread or another runtime could.
 *
 *   node --import ./test/helpers/ts-register.mjs bench/profile-categories.ts PROFILE… [--from S --to S]
 *
 * --from and --to are seconds from each profile's start; without them the longest stretch of
 * whole seconds in which the thread was busy (idle under a tenth) is taken: in the daemon's
 * profile, the throughput window (and the HTTPS intake's lookups after it). A profile with no
 * such stretch (the plant's, the bench's) says so.
 */

/** The parts of a `.cpuprofile` this reads (V8's Profiler.Profile). */
export interface CpuProfile {
  readonly nodes: readonly {
    readonly id: number;
    readonly callFrame: { readonly functionName: string; readonly url: string };
  }[];
  /** Microseconds on the monotonic clock. */
  readonly startTime: number;
  readonly endTime: number;
  /** The node sampled at each tick. */
  readonly samples: readonly number[];
  /** Microseconds since the previous sample (the first: since startTime). */
  readonly timeDeltas: readonly number[];
}

/**
 * The kind of work a sample was in, from the frame on top of its stack. A native method that
 * has no frame of its own (better-sqlite3's statements, SQLite with them) counts for the
 * JavaScript that called it: the journal's frames hold SQLite's time.
 */
export function categoryOf(frame: { functionName: string; url: string }): string {
  const { functionName, url } = frame;
  if (functionName === '(idle)') return 'idle';
  if (functionName === '(garbage collector)') return 'garbage collector';
  if (functionName === '(program)') return 'V8 and native glue ("(program)")';
  if (url === '') return 'native: system calls, crypto, builtins';
  if (/\/node_modules\/better-sqlite3\//.test(url) || /\/src\/journal\//.test(url)) {
    return 'journal: its JavaScript and SQLite';
  }
  if (url.startsWith('node:')) return "Node's own JavaScript (streams, net, http, tls, timers)";
  if (url.includes('/node_modules/')) return 'dependencies (fastify, pino, mqtt, modbus-serial …)';
  if (/\/bench\//.test(url)) return "the bench's probes";
  if (/\/src\//.test(url)) return "Sluice's own code (besides the journal)";
  return 'other';
}

export interface CategoryShare {
  readonly category: string;
  /** Milliseconds of the window's samples in this category. */
  readonly ms: number;
  /** Of the window's busy time (idle left out). */
  readonly shareOfBusy: number;
  /** The category's heaviest functions, with their milliseconds. */
  readonly top: readonly { readonly name: string; readonly ms: number }[];
}

export interface Breakdown {
  readonly fromS: number;
  readonly toS: number;
  readonly busyMs: number;
  readonly idleMs: number;
  readonly categories: readonly CategoryShare[];
}

/** Each sample's time from the profile's start (s) and its length (ms). */
function timeline(profile: CpuProfile): { atS: number[]; ms: number[] } {
  const atS: number[] = [];
  const ms: number[] = [];
  let t = profile.startTime;
  for (let i = 0; i < profile.samples.length; i++) {
    t += profile.timeDeltas[i] ?? 0;
    atS.push((t - profile.startTime) / 1e6);
    // A sample lasts until the next one (the last: until the profile's end).
    const next = profile.timeDeltas[i + 1] ?? profile.endTime - t;
    ms.push(Math.max(0, next) / 1000);
  }
  return { atS, ms };
}

/**
 * The longest run of whole seconds whose samples are under a tenth idle, of two seconds at least
 * (a process's start, compiling its modules, is a busy second of its own).
 */
export function busiestStretch(profile: CpuProfile): { fromS: number; toS: number } | null {
  const frames = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
  const { atS, ms } = timeline(profile);
  const seconds = new Map<number, { all: number; idle: number }>();
  for (let i = 0; i < atS.length; i++) {
    const s = Math.floor(atS[i]!);
    const bin = seconds.get(s) ?? { all: 0, idle: 0 };
    bin.all += ms[i]!;
    if (frames.get(profile.samples[i]!)?.functionName === '(idle)') bin.idle += ms[i]!;
    seconds.set(s, bin);
  }
  let best: { fromS: number; toS: number } | null = null;
  let start: number | null = null;
  const last = Math.max(-1, ...seconds.keys());
  for (let s = 0; s <= last + 1; s++) {
    const bin = seconds.get(s);
    const busy = bin !== undefined && bin.all > 0 && bin.idle / bin.all < 0.1;
    if (busy && start === null) start = s;
    if (!busy && start !== null) {
      if (best === null || s - start > best.toS - best.fromS) best = { fromS: start, toS: s };
      start = null;
    }
  }
  return best !== null && best.toS - best.fromS >= 2 ? best : null;
}

/** The samples between fromS and toS (seconds from the profile's start), by category. */
export function breakdown(
  profile: CpuProfile,
  fromS: number,
  toS: number,
  topPerCategory = 3,
): Breakdown {
  const frames = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
  const { atS, ms } = timeline(profile);
  const byCategory = new Map<string, { ms: number; functions: Map<string, number> }>();
  let busyMs = 0;
  let idleMs = 0;
  for (let i = 0; i < atS.length; i++) {
    if (atS[i]! < fromS || atS[i]! >= toS) continue;
    const frame = frames.get(profile.samples[i]!);
    if (frame === undefined) continue;
    const category = categoryOf(frame);
    if (category === 'idle') {
      idleMs += ms[i]!;
      continue;
    }
    busyMs += ms[i]!;
    const entry = byCategory.get(category) ?? { ms: 0, functions: new Map<string, number>() };
    entry.ms += ms[i]!;
    const where = frame.url === '' ? '' : ` ${basename(frame.url)}`;
    const name = `${frame.functionName === '' ? '(anonymous)' : frame.functionName}${where}`;
    entry.functions.set(name, (entry.functions.get(name) ?? 0) + ms[i]!);
    byCategory.set(category, entry);
  }
  const categories = [...byCategory]
    .map(([category, { ms: total, functions }]) => ({
      category,
      ms: total,
      shareOfBusy: busyMs === 0 ? 0 : total / busyMs,
      top: [...functions]
        .sort((a, b) => b[1] - a[1])
        .slice(0, topPerCategory)
        .map(([name, fms]) => ({ name, ms: fms })),
    }))
    .sort((a, b) => b.ms - a.ms);
  return { fromS, toS, busyMs, idleMs, categories };
}

/** The breakdown as a Markdown table. */
export function renderBreakdown(b: Breakdown): string {
  const rows = b.categories.map(
    (c) =>
      `| ${c.category} | ${(c.shareOfBusy * 100).toFixed(1)} % | ${c.top
        .map((f) => `${f.name} (${((f.ms / b.busyMs) * 100).toFixed(1)} %)`)
        .join(', ')} |`,
  );
  const idle = b.busyMs + b.idleMs === 0 ? 0 : b.idleMs / (b.busyMs + b.idleMs);
  return [
    `seconds ${b.fromS}–${b.toS} of the profile: ${Math.round(b.busyMs)} ms busy, idle ${(idle * 100).toFixed(1)} %`,
    '',
    '| work | of the busy time | heaviest |',
    '| --- | --- | --- |',
    ...rows,
  ].join('\n');
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) {
  const args = process.argv.slice(2);
  const files: string[] = [];
  let fromS: number | undefined;
  let toS: number | undefined;
  for (let i = 0; i < args.length; i++) {
    const arg = args[i]!;
    if (arg === '--from' || arg === '--to') {
      const value = Number(args[++i]);
      if (!Number.isFinite(value)) {
        process.stderr.write(`${arg} takes seconds from the profile's start\n`);
        process.exit(2);
      }
      if (arg === '--from') fromS = value;
      else toS = value;
    } else {
      files.push(arg);
    }
  }
  if (files.length === 0 || (fromS === undefined) !== (toS === undefined)) {
    process.stderr.write('usage: bench/profile-categories.ts PROFILE… [--from S --to S]\n');
    process.exit(2);
  }
  for (const path of files) {
    const profile = JSON.parse(readFileSync(path, 'utf8')) as CpuProfile;
    const window =
      fromS !== undefined && toS !== undefined ? { fromS, toS } : busiestStretch(profile);
    process.stdout.write(`${path}\n`);
    process.stdout.write(
      window === null
        ? 'no busy stretch in this profile (give --from and --to)\n\n'
        : `${renderBreakdown(breakdown(profile, window.fromS, window.toS))}\n\n`,
    );
  }
}
