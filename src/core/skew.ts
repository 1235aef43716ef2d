import type { ClockSample, Readback } from './driver.js';

/**
 * Controller clock skew (SPEC §6). The controller's clock is read and compared with the
 * gateway's at the round trip's midpoint; the estimate is good to ± half the round trip.
 *
 * Judgements compare controller source times with moments of this process (a write sent, a
 * write's outcome become unknown), so the estimate is kept against the gateway's *monotonic*
 * clock: a wall-clock step of the gateway cannot move it. The wall offset is kept for reports.
 * An estimate belongs to one connection: after a reconnect the controller may have restarted
 * with another clock, so it is measured again before anything is judged by it.
 */
export interface SkewEstimate {
  /** controller clock − gateway wall clock, ms (reports, `GET /v1/devices`). */
  readonly offsetMs: number;
  /** controller clock − gateway monotonic clock, ms (freshness judgements). */
  readonly monoOffsetMs: number;
  /** Half the round trip: the estimate is within ± this. */
  readonly uncertaintyMs: number;
  /** Gateway wall time of the measurement (reports). */
  readonly measuredAt: number;
  /** Gateway monotonic time of the measurement (age). */
  readonly measuredMono: number;
  /** The driver's connection epoch the measurement was taken on. */
  readonly epoch: number;
  /**
   * Where the controller's whole-millisecond stamps fall on the gateway's monotonic clock, for
   * placing readbacks on its scans (readback-pacing.ts): controller stamp − gateway monotonic
   * time, the middle of the interval that every clock reading of the measurement allows, and
   * that interval's half-width. A reading stamped in whole milliseconds allows its bracket
   * widened by the rounding (± STAMP_QUANTUM_MS / 2); readings taken one after the other fall
   * on different phases of the millisecond, and the intersection of what they allow narrows
   * the rounding down (estimateSkewFrom). Not for judgements, which use the midpoint above.
   */
  readonly stamp: { readonly monoOffsetMs: number; readonly uncertaintyMs: number };
}

/** The resolution of a controller's clock and image stamps: whole milliseconds. */
export const STAMP_QUANTUM_MS = 1;

/** The monotonic bracket the core measured around a driver call. */
export interface MonoBracket {
  readonly requestedMono: number;
  readonly receivedMono: number;
}

export function estimateSkew(
  sample: ClockSample,
  bracket: MonoBracket = { requestedMono: sample.requestedAt, receivedMono: sample.receivedAt },
  epoch = 0,
): SkewEstimate {
  // The wait in the driver's queue came before the controller read its clock (ClockSample):
  // both brackets start after it.
  const queuedMs = Math.max(0, sample.queuedMs ?? 0);
  const wallRequested = Math.min(sample.requestedAt + queuedMs, sample.receivedAt);
  const wallMidpoint = (wallRequested + sample.receivedAt) / 2;
  const monoRequested = Math.min(bracket.requestedMono + queuedMs, bracket.receivedMono);
  const monoMidpoint = (monoRequested + bracket.receivedMono) / 2;
  const uncertaintyMs = Math.max(0, (bracket.receivedMono - monoRequested) / 2);
  const monoOffsetMs = sample.controllerTime - monoMidpoint;
  return {
    offsetMs: sample.controllerTime - wallMidpoint,
    monoOffsetMs,
    uncertaintyMs,
    measuredAt: sample.receivedAt,
    measuredMono: bracket.receivedMono,
    epoch,
    stamp: { monoOffsetMs, uncertaintyMs: uncertaintyMs + STAMP_QUANTUM_MS / 2 },
  };
}

/** One reading of the controller's clock with the monotonic bracket the core measured. */
export interface ClockReading {
  readonly sample: ClockSample;
  readonly bracket: MonoBracket;
}

/**
 * The estimate from several readings of the controller's clock taken one after the other (a
 * few milliseconds: no drift between them). Judgements use the reading with the shortest
 * round trip, its midpoint good to ± half of it, as `estimateSkew` does with one.
 *
 * The stamp interval uses them all. A reading c, stamped in whole milliseconds by a controller
 * that read its clock somewhere within its bracket [requested, received], allows a monotonic
 * offset within [c − ½ − received, c + ½ − requested]; every reading holds the same offset,
 * so it lies in the intersection. Readings a fraction of a millisecond apart round at
 * different phases, and the intersection is narrower than any one of them (four readings of a
 * quarter-millisecond round trip: about ± 0.25 ms against ± 0.6 ms). A controller that
 * truncates instead of rounding shifts every reading, and its image stamps, by the same half
 * millisecond: the stamps are still placed right. Readings that allow no common offset (a
 * controller whose stamps are coarser, or a clock set while they were taken) leave the last
 * reading's own estimate: the clock as it stands now.
 */
export function estimateSkewFrom(readings: readonly ClockReading[], epoch = 0): SkewEstimate {
  let best: SkewEstimate | null = null;
  let last: SkewEstimate | null = null;
  let low = -Infinity;
  let high = Infinity;
  for (const { sample, bracket } of readings) {
    const one = estimateSkew(sample, bracket, epoch);
    if (best === null || one.uncertaintyMs < best.uncertaintyMs) best = one;
    last = one;
    low = Math.max(low, one.stamp.monoOffsetMs - one.stamp.uncertaintyMs);
    high = Math.min(high, one.stamp.monoOffsetMs + one.stamp.uncertaintyMs);
  }
  if (best === null || last === null) throw new Error('estimateSkewFrom needs a reading');
  if (low > high) return last;
  return {
    ...best,
    stamp: { monoOffsetMs: (low + high) / 2, uncertaintyMs: (high - low) / 2 },
  };
}

/** Whether an estimate may still be used: same connection, and young enough. */
export function skewUsable(
  skew: SkewEstimate | null,
  epoch: number,
  nowMono: number,
  maxAgeMs: number,
): skew is SkewEstimate {
  return skew !== null && skew.epoch === epoch && nowMono - skew.measuredMono < maxAgeMs;
}

/**
 * A readback with the monotonic bracket of the read that produced it, and the driver's
 * connection epoch when it arrived (a reconnect in between means the controller may have
 * restarted).
 */
export type TimedReadback = Readback & MonoBracket & { readonly epoch: number };

/**
 * The window of gateway monotonic time in which the controller produced the readback's image,
 * from its source time and the skew estimate; null without either.
 */
export function sourceWindow(
  readback: Pick<Readback, 'sourceTime'>,
  skew: SkewEstimate | null,
): { readonly earliest: number; readonly latest: number } | null {
  if (readback.sourceTime === null || skew === null) return null;
  const mid = readback.sourceTime - skew.monoOffsetMs;
  return { earliest: mid - skew.uncertaintyMs, latest: mid + skew.uncertaintyMs };
}

/**
 * Slack for a source time that looks later than the answer that carried it: the controller
 * stamps its scan in whole milliseconds and its clock drifts between measurements.
 */
export const CONTRADICTION_SLACK_MS = 50;

/**
 * True when the readback contradicts the estimate: its image would have been produced after
 * the answer carrying it arrived. The controller's clock has stepped forward (a restart, a
 * manual set) and the estimate must be measured again (SPEC §6).
 */
export function contradictsSkew(readback: TimedReadback, skew: SkewEstimate | null): boolean {
  const window = sourceWindow(readback, skew);
  return window !== null && window.earliest > readback.receivedMono + CONTRADICTION_SLACK_MS;
}
