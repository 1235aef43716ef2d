import type { Site } from './site.js';
import { CHECKS, type Check, type Finding, type RunPlan, type RunResult } from './crash-run.js';

/**
 * What a crash campaign reports: a summary table (seed, runs, kills, commands, controller
 * writes, duplicates absorbed, violations per invariant, recovery time after each restart),
 * and for every violation the seed, the run, the plan and the command's history, with the
 * environment to replay it.
 */

export interface GroupTally {
  readonly name: string;
  readonly seed: number | string;
  runs: number;
  kills: number;
  commands: number;
  writes: number;
  duplicates: number;
  inDoubt: number;
  readonly violations: Record<Check, number>;
  readonly recoveryMs: number[];
  readonly restartMs: number[];
  readonly phases: Map<string, number>;
  durationMs: number;
}

export function newTally(name: string, seed: number | string): GroupTally {
  return {
    name,
    seed,
    runs: 0,
    kills: 0,
    commands: 0,
    writes: 0,
    duplicates: 0,
    inDoubt: 0,
    violations: Object.fromEntries(CHECKS.map((c) => [c, 0])) as Record<Check, number>,
    recoveryMs: [],
    restartMs: [],
    phases: new Map(),
    durationMs: 0,
  };
}

export function addRun(t: GroupTally, r: RunResult): void {
  t.runs++;
  t.kills += r.kills;
  t.commands += r.commands;
  t.writes += r.writes;
  t.duplicates += r.duplicates;
  t.inDoubt += r.inDoubt;
  for (const f of r.findings) t.violations[f.invariant]++;
  t.recoveryMs.push(...r.recoveryMs);
  t.restartMs.push(...r.restartMs);
  const phase = r.plan.index < 0 ? `scenario ${r.killedAt}` : `${r.plan.phase}→${r.killedAt}`;
  t.phases.set(phase, (t.phases.get(phase) ?? 0) + 1);
  t.durationMs += r.durationMs;
}

function percentile(values: readonly number[], p: number): number | null {
  if (values.length === 0) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(p * sorted.length) - 1))]!;
}

const ms = (v: number | null): string => (v === null ? '-' : `${(v / 1000).toFixed(2)} s`);

/** The summary table, one row per group and a total. */
export function summaryTable(groups: readonly GroupTally[]): string {
  const total = newTally(
    'total',
    groups
      .map((g) => g.seed)
      .filter((s, i, a) => a.indexOf(s) === i)
      .join(','),
  );
  for (const g of groups) {
    total.runs += g.runs;
    total.kills += g.kills;
    total.commands += g.commands;
    total.writes += g.writes;
    total.duplicates += g.duplicates;
    total.inDoubt += g.inDoubt;
    for (const c of CHECKS) total.violations[c] += g.violations[c];
    total.recoveryMs.push(...g.recoveryMs);
    total.restartMs.push(...g.restartMs);
    total.durationMs += g.durationMs;
    for (const [p, n] of g.phases) total.phases.set(p, (total.phases.get(p) ?? 0) + n);
  }
  const header = [
    'group',
    'seed',
    'runs',
    'kills',
    'commands',
    'writes',
    'dups absorbed',
    'in doubt',
    ...CHECKS,
    'restart p50',
    'recovery p50',
    'recovery max',
    'time',
  ];
  const row = (g: GroupTally): string[] => [
    g.name,
    String(g.seed),
    String(g.runs),
    String(g.kills),
    String(g.commands),
    String(g.writes),
    String(g.duplicates),
    String(g.inDoubt),
    ...CHECKS.map((c) => String(g.violations[c])),
    ms(percentile(g.restartMs, 0.5)),
    ms(percentile(g.recoveryMs, 0.5)),
    ms(percentile(g.recoveryMs, 1)),
    `${Math.round(g.durationMs / 1000)} s`,
  ];
  const rows = [header, ...groups.map(row), ...(groups.length > 1 ? [row(total)] : [])];
  const widths = header.map((_, i) => Math.max(...rows.map((r) => r[i]!.length)));
  const line = (r: string[]): string =>
    r.map((cell, i) => (i < 2 ? cell.padEnd(widths[i]!) : cell.padStart(widths[i]!))).join('  ');
  const phases = [...total.phases.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([p, n]) => `${p}: ${n}`)
    .join(', ');
  return [
    'Crash campaign (violations per invariant must all be 0; recovery = restart listening → every in-doubt command terminal)',
    line(header),
    ...rows.slice(1).map(line),
    `kill points (planned→seen): ${phases}`,
  ].join('\n');
}

/** Everything needed to understand and replay a violating run. */
export function describeFindings(
  site: Site,
  findings: readonly Finding[],
  context: { campaignSeed: number | string; plan?: RunPlan; replay: string },
): string {
  const lines: string[] = [];
  lines.push(
    `VIOLATION in ${context.plan === undefined ? 'a named scenario' : `run ${context.plan.index} (run seed ${context.plan.seed})`} of campaign seed ${context.campaignSeed}`,
  );
  lines.push(`replay: ${context.replay}`);
  if (context.plan !== undefined) lines.push(`plan: ${JSON.stringify(context.plan)}`);
  for (const f of findings) {
    lines.push(`${f.invariant} ${f.device} ${f.key ?? '-'}: ${f.message}`);
    for (const e of f.history) {
      lines.push(
        `    ${new Date(e.at).toISOString()} ${e.from ?? '-'}→${e.to} [${e.intake}] ${e.detail}`,
      );
    }
    if (f.key !== null && f.device !== '?') {
      const record = site.records().find((r) => r.key === f.key);
      const sim = site.plant.devices().find((d) => d.id === f.device);
      if (record?.seq != null && sim !== undefined) {
        for (const w of sim.writesOfSeq(record.seq)) {
          lines.push(
            `    write log: seq ${w.seq} code ${w.code} received ${new Date(w.receivedAt).toISOString()} → ${w.outcome ?? 'pending'}${w.settledAt === null ? '' : ` at ${new Date(w.settledAt).toISOString()}`}`,
          );
        }
      }
      const logs = site.logs.filter((l) => l.includes(f.key!)).slice(-25);
      for (const l of logs) lines.push(`    log ${l.slice(0, 400)}`);
    }
  }
  return lines.join('\n');
}
