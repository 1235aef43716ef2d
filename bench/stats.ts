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
 * The pauses before the commands of a one-at-a-time series: each a part of one controller scan.
 * Sent back to back, each command would leave just after the scan that confirmed the one before
 * and wait almost a whole scan for the next: the series would lock onto the scan. Commands of a
 * plant arrive at any moment of the scan, half a scan before the next on average.
 *
 * Stratified: the n pauses of a series of n commands fall one in each n-th of the scan, in a
 * random order and at a random point of their slice, so that the series' share of the plant
 * (the wait for the scan that takes each write) is half a scan on average in every run, not
 * half a scan give or take the sampling error of n uniform draws (about 0.17 ms over 300
 * commands at a 10 ms scan, which moved one run's p50 against the next). Each pause is waited to
 * a fraction of a millisecond (`preciseSleep`): a timer alone fires in whole milliseconds, which
 * would bunch the arrivals on a few moments of the scan.
 */
export class ArrivalPauses {
  private readonly scanMs: number;
  private readonly slices: number[];
  private readonly random: () => number;
  private taken = 0;

  constructor(scanMs: number, count: number, random: () => number = Math.random) {
    this.scanMs = scanMs;
    this.random = random;
    const n = Math.max(1, count);
    this.slices = Array.from({ length: n }, (_, i) => i);
    // Fisher–Yates.
    for (let i = n - 1; i > 0; i--) {
      const j = Math.floor(random() * (i + 1));
      [this.slices[i], this.slices[j]] = [this.slices[j] ?? 0, this.slices[i] ?? 0];
    }
  }

  /** The next pause, in ms (past the n-th, the slices are used again in the same order). */
  nextMs(): number {
    const n = this.slices.length;
    const slice = this.slices[this.taken % n] ?? 0;
    this.taken += 1;
    return (this.scanMs * (slice + this.random())) / n;
  }

  pause(): Promise<void> {
    return preciseSleep(this.nextMs());
  }
}

const SLEEPER = new Int32Array(new SharedArrayBuffer(4));

/**
 * Sleeps `ms` to a fraction of a millisecond: a timer for the whole milliseconds but one (Node's
 * timers fire in whole milliseconds: on this machine about 0.13 ms after the whole millisecond
 * below the pause asked for), then the rest blocked in `Atomics.wait`, whose timeout is not
 * rounded. For the bench's own client between two commands, when it has nothing else to do.
 */
export async function preciseSleep(ms: number): Promise<void> {
  const end = performance.now() + ms;
  if (ms >= 2) await new Promise((resolve) => setTimeout(resolve, Math.floor(ms) - 1));
  blockFor(end - performance.now());
}

/** Blocks the thread for `ms` (nothing when it is not positive), to a fraction of a millisecond. */
export function blockFor(ms: number): void {
  if (ms > 0) Atomics.wait(SLEEPER, 0, 0, ms);
}
