import type { SkewEstimate } from './skew.js';

/**
 * Controller clocks over time (SPEC §6): each skew measurement of a device is kept for a while,
 * so that its drift shows (ppm); a device whose clock is provably further off the gateway's
 * than the allowed maximum is flagged, and a drift that will cross that bound before the next
 * scheduled measurement brings the measurement forward.
 */

export interface SkewSample {
  /** Gateway monotonic time of the measurement. */
  readonly mono: number;
  /** controller − gateway wall clock, ms. */
  readonly offsetMs: number;
  readonly uncertaintyMs: number;
}

/**
 * Samples kept per device, at least MIN_SAMPLE_GAP_MS apart (a newer measurement within the gap
 * replaces the last one), and the shortest span over which a drift is estimated.
 */
export const SKEW_SAMPLES = 32;
export const MIN_SAMPLE_GAP_MS = 1_000;
export const MIN_DRIFT_SPAN_MS = 5_000;
/**
 * The least an uncertainty counts for in the drift's weights: estimates on loopback reach a
 * fraction of a millisecond, and one of 0 (a clock read without delay) must not take all weight.
 */
export const MIN_WEIGHT_UNCERTAINTY_MS = 0.1;
/**
 * The drift is shown (GET /v1/devices, /metrics, /readyz) once its standard error is at most
 * DRIFT_SHOWN_WITHIN_PPM, or a DRIFT_SHOWN_WITHIN_FRACTION of the drift itself: the first
 * seconds' estimate rests on a few measurements, each off by a fraction of a millisecond (the
 * controller's stamps round to the millisecond, round trips vary), and read tens to a hundred
 * ppm either way on a perfect clock. A clock that gains far more is known sooner.
 */
export const DRIFT_SHOWN_WITHIN_PPM = 10;
export const DRIFT_SHOWN_WITHIN_FRACTION = 0.1;
/** A standard error needs a scatter about the line: two samples beyond the two a line takes. */
const MIN_DRIFT_SAMPLES = 4;
/** A clock at or past its bound is measured again no more often than this. */
export const MIN_REMEASURE_MS = 250;

export function addSample(samples: SkewSample[], skew: SkewEstimate): void {
  const sample = {
    mono: skew.measuredMono,
    offsetMs: skew.offsetMs,
    uncertaintyMs: skew.uncertaintyMs,
  };
  const previous = samples.at(-2);
  if (previous !== undefined && sample.mono - previous.mono < MIN_SAMPLE_GAP_MS) {
    samples[samples.length - 1] = sample;
  } else {
    samples.push(sample);
  }
  if (samples.length > SKEW_SAMPLES) samples.splice(0, samples.length - SKEW_SAMPLES);
}

/**
 * The controller clock's rate against the gateway's, in ppm (+: it gains), by least squares
 * over the samples, each weighted by its precision (1/uncertainty²); null over less than
 * MIN_DRIFT_SPAN_MS. A step (a restart, a manual set) breaks the line: samples from before a
 * jump larger than any drift explains are dropped.
 */
export function driftPpm(samples: readonly SkewSample[]): number | null {
  return driftFit(samples)?.ppm ?? null;
}

/**
 * The drift as it is shown: driftPpm once its standard error (driftFit) is at most
 * DRIFT_SHOWN_WITHIN_PPM or DRIFT_SHOWN_WITHIN_FRACTION of it, null before.
 */
export function shownDriftPpm(samples: readonly SkewSample[]): number | null {
  const fit = driftFit(samples);
  if (fit === null || fit.standardErrorPpm === null) return null;
  const within = Math.max(DRIFT_SHOWN_WITHIN_PPM, DRIFT_SHOWN_WITHIN_FRACTION * Math.abs(fit.ppm));
  return fit.standardErrorPpm <= within ? fit.ppm : null;
}

/**
 * driftPpm's fit, with its standard error (ppm) from the samples' scatter about the line: null
 * with fewer than MIN_DRIFT_SAMPLES samples.
 */
export function driftFit(
  samples: readonly SkewSample[],
): { readonly ppm: number; readonly standardErrorPpm: number | null } | null {
  const last = samples.at(-1);
  if (last === undefined) return null;
  // Keep the run of samples since the last step (more than 1 s between two measurements).
  let start = samples.length - 1;
  for (; start > 0; start--) {
    const a = samples[start - 1];
    const b = samples[start];
    if (a === undefined || b === undefined) break;
    if (Math.abs(b.offsetMs - a.offsetMs) > 1_000 + a.uncertaintyMs + b.uncertaintyMs) break;
  }
  const run = samples.slice(start);
  const first = run[0] ?? last;
  if (last.mono - first.mono < MIN_DRIFT_SPAN_MS) return null;
  // Weighted by 1/u²: a measurement taken over a slow round trip (a loaded gateway, a busy
  // controller) is known to tens of ms and must not outweigh the sub-millisecond ones.
  const weight = (p: SkewSample): number =>
    1 / Math.max(p.uncertaintyMs, MIN_WEIGHT_UNCERTAINTY_MS) ** 2;
  let sw = 0;
  let swx = 0;
  let swy = 0;
  for (const p of run) {
    const w = weight(p);
    sw += w;
    swx += w * p.mono;
    swy += w * p.offsetMs;
  }
  const mx = swx / sw;
  const my = swy / sw;
  let sxy = 0;
  let sxx = 0;
  for (const p of run) {
    const w = weight(p);
    sxy += w * (p.mono - mx) * (p.offsetMs - my);
    sxx += w * (p.mono - mx) ** 2;
  }
  if (sxx === 0) return null;
  const slope = sxy / sxx;
  if (run.length < MIN_DRIFT_SAMPLES) return { ppm: slope * 1e6, standardErrorPpm: null };
  // The weighted residuals' variance about the line, scaled to the weights (the measurements'
  // uncertainties bound their errors; their scatter says how large these are).
  let swrr = 0;
  for (const p of run) {
    const r = p.offsetMs - (my + slope * (p.mono - mx));
    swrr += weight(p) * r * r;
  }
  const variance = swrr / (run.length - 2) / sxx;
  return { ppm: slope * 1e6, standardErrorPpm: Math.sqrt(variance) * 1e6 };
}

/** Provably beyond the bound: even the near end of the estimate's uncertainty is outside. */
export function skewExceeds(skew: SkewEstimate, maxSkewMs: number): boolean {
  return Math.abs(skew.offsetMs) - skew.uncertaintyMs > maxSkewMs;
}

/**
 * How long until a drifting controller clock is predicted to cross the bound, from the
 * estimate's measurement; Infinity when it is not heading for it.
 */
export function crossingInMs(skew: SkewEstimate, ppm: number | null, maxSkewMs: number): number {
  if (ppm === null || ppm === 0) return Infinity;
  const rate = ppm / 1e6; // ms of offset per ms
  const toward = Math.sign(rate) === Math.sign(skew.offsetMs) || skew.offsetMs === 0;
  if (!toward) {
    // Heading through zero toward the other bound.
    return (maxSkewMs + Math.abs(skew.offsetMs) - skew.uncertaintyMs) / Math.abs(rate);
  }
  return Math.max(
    MIN_REMEASURE_MS,
    (maxSkewMs - Math.abs(skew.offsetMs) - skew.uncertaintyMs) / Math.abs(rate),
  );
}
