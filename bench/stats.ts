/** Percentiles of one run's samples: what the bench reports, never a mean of means. */

export interface Distribution {
  readonly n: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly max: number;
  readonly mean: number;
}

/** Nearest-rank percentile of sorted samples (p in 0..100). */
function rank(sorted: readonly number[], p: number): number {
  if (sorted.length === 0) return Number.NaN;
  const index = Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1));
  return sorted[index] ?? Number.NaN;
}

export function distribution(samples: readonly number[]): Distribution {
  const sorted = [...samples].sort((a, b) => a - b);
  const sum = sorted.reduce((s, v) => s + v, 0);
  return {
    n: sorted.length,
    p50: round(rank(sorted, 50)),
    p90: round(rank(sorted, 90)),
    p99: round(rank(sorted, 99)),
    max: round(sorted.at(-1) ?? Number.NaN),
    mean: round(sorted.length === 0 ? Number.NaN : sum / sorted.length),
  };
}

/** Three significant digits below 100, whole numbers above: what a table can show. */
export function round(value: number): number {
  if (!Number.isFinite(value) || value === 0) return value;
  if (Math.abs(value) >= 100) return Math.round(value);
  return Number(value.toPrecision(3));
}

export function ratio(a: number, b: number): number {
  return b === 0 ? Number.NaN : round(a / b);
}

export function mean(values: readonly number[]): number {
  return values.length === 0
    ? Number.NaN
    : round(values.reduce((s, v) => s + v, 0) / values.length);
}

/**
 * A pause of a random part of one controller scan, before each command of a one-at-a-time
 * series. Sent back to back, each command would leave just after the scan that confirmed the
 * one before and wait almost a whole scan for the next: the series would lock onto the scan.
 * Commands of a plant arrive at any moment of the scan, half a scan before the next on average.
 */
export function arrivalPause(scanMs: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, Math.random() * scanMs));
}
