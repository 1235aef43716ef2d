/**
 * The campaigns' randomness: one seeded generator per run, derived from the campaign seed and
 * the run's index, so that a run's choices (commands, devices, intakes, kill phase, delays)
 * do not depend on how much randomness earlier runs consumed, and one run can be replayed
 * alone (SLUICE_CAMPAIGN_ONLY). The real processes' timing is not seeded: a replay repeats the
 * choices, not the exact interleaving.
 */

/** mulberry32: a small, fast 32-bit generator; good enough to drive test choices. */
export class Rng {
  private state: number;

  constructor(seed: number) {
    this.state = seed >>> 0;
  }

  /** A float in [0, 1). */
  next(): number {
    this.state = (this.state + 0x6d2b79f5) >>> 0;
    let t = this.state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4_294_967_296;
  }

  /** An integer in [min, max]. */
  int(min: number, max: number): number {
    return min + Math.floor(this.next() * (max - min + 1));
  }

  chance(p: number): boolean {
    return this.next() < p;
  }

  pick<T>(items: readonly T[]): T {
    if (items.length === 0) throw new Error('pick from nothing');
    return items[Math.floor(this.next() * items.length)] as T;
  }

  /** One of the entries, with probability proportional to its weight. */
  weighted<T>(entries: readonly (readonly [T, number])[]): T {
    const total = entries.reduce((n, [, w]) => n + w, 0);
    let x = this.next() * total;
    for (const [value, weight] of entries) {
      x -= weight;
      if (x < 0) return value;
    }
    return entries[entries.length - 1]![0];
  }
}

/** The seed of run `index` of the campaign with seed `seed` (splitmix32 of both). */
export function runSeed(seed: number, index: number): number {
  let z = (seed ^ Math.imul(index + 1, 0x9e3779b9)) >>> 0;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
  return (z ^ (z >>> 16)) >>> 0;
}

export interface CampaignSettings {
  /** The campaign seed (SLUICE_CAMPAIGN_SEED; `random` picks one and prints it). */
  readonly seed: number;
  /** Runs in this campaign (SLUICE_CAMPAIGN_RUNS, else the CI bound). */
  readonly runs: number;
  /** Only these run indices (SLUICE_CAMPAIGN_ONLY=3,17), or all. */
  readonly only: ReadonlySet<number> | null;
  /** True when SLUICE_CAMPAIGN_RUNS asked for a full campaign. */
  readonly full: boolean;
}

export const DEFAULT_SEED = 0x5_1ce_2026;

/** Reads the campaign settings from the environment. */
export function campaignSettings(
  env: NodeJS.ProcessEnv,
  ciRuns: number,
  fallbackSeed = DEFAULT_SEED,
): CampaignSettings {
  const rawSeed = env.SLUICE_CAMPAIGN_SEED?.trim();
  let seed = fallbackSeed;
  if (rawSeed === 'random') seed = Math.floor(Math.random() * 0xffffffff) >>> 0;
  else if (rawSeed !== undefined && rawSeed !== '') {
    const parsed = Number(rawSeed);
    if (!Number.isInteger(parsed) || parsed < 0 || parsed > 0xffffffff) {
      throw new Error(`SLUICE_CAMPAIGN_SEED: ${rawSeed} is not a 32-bit unsigned integer`);
    }
    seed = parsed;
  }
  const rawRuns = env.SLUICE_CAMPAIGN_RUNS?.trim();
  let runs = ciRuns;
  if (rawRuns !== undefined && rawRuns !== '') {
    const parsed = Number(rawRuns);
    if (!Number.isInteger(parsed) || parsed < 1) {
      throw new Error(`SLUICE_CAMPAIGN_RUNS: ${rawRuns} is not a positive integer`);
    }
    runs = parsed;
  }
  const rawOnly = env.SLUICE_CAMPAIGN_ONLY?.trim();
  let only: Set<number> | null = null;
  if (rawOnly !== undefined && rawOnly !== '') {
    only = new Set(
      rawOnly.split(',').map((part) => {
        const n = Number(part.trim());
        if (!Number.isInteger(n) || n < 0) {
          throw new Error(`SLUICE_CAMPAIGN_ONLY: ${part} is not a run index`);
        }
        return n;
      }),
    );
    runs = Math.max(runs, ...[...only].map((n) => n + 1));
  }
  return { seed, runs, only, full: rawRuns !== undefined && rawRuns !== '' };
}
