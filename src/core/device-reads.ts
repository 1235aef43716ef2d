import { firstOf } from './clock.js';
import {
  addSample,
  crossingInMs,
  driftPpm,
  shownDriftPpm,
  skewExceeds,
} from './controller-clock.js';
import type { ExecutionHost, Lane } from './lane.js';
import type { Logger } from './logger.js';
import { readFailed, readSucceeded, type ReadTime } from './read-failures.js';
import {
  contradictsSkew,
  estimateSkewFrom,
  skewUsable,
  STAMP_QUANTUM_MS,
  type ClockReading,
  sourceWindow,
  type SkewEstimate,
  type TimedReadback,
} from './skew.js';

/**
 * A read: its readback, or the error of a failed one. `unknownState`: the controller answered,
 * with a state the profile does not know (docs/device-profiles.md, "States as bits"), which the
 * core never acts on; a command ends READBACK_TIMEOUT naming it, not DEVICE_UNREACHABLE.
 */
export type ReadResult =
  { readonly readback: TimedReadback } | { readonly error: string; readonly unknownState?: string };

/** An image this much older than its read is frozen or from a clock set back. */
const OLD_IMAGE_MS = 5_000;

/** Readings of the controller's clock per skew measurement, over a quick link. */
const CLOCK_READINGS = 4;

/** How the two kinds of reads are named in the log. */
const STATUS_READS = 'device reads';
const CLOCK_READS = 'controller clock reads';

/**
 * Reading a device for the core: every readback carries the monotonic bracket of its read, and
 * the controller skew is kept per connection, measured again after a reconnect, when it is too
 * old, or when a readback contradicts it (SPEC §6).
 */
export class DeviceReads {
  private readonly host: ExecutionHost;

  constructor(host: ExecutionHost) {
    this.host = host;
  }

  /**
   * One read; null when it failed or named a state the profile does not know (kept on the lane
   * and logged as read-failures.ts says).
   */
  async tryRead(lane: Lane, log: Logger): Promise<TimedReadback | null> {
    const result = await this.read(lane, log);
    return 'error' in result ? null : result.readback;
  }

  /** One read, as tryRead, with the error of a failed one (a readback loop counts them). */
  async readOrError(lane: Lane, log: Logger): Promise<ReadResult> {
    return this.read(lane, log);
  }

  /**
   * Reads until a usable readback requested at or after `notBeforeMono`, or until `done()`
   * says to stop (a deadline, a window), with growing pauses between failures. A pause ends
   * early when the driver has a new connection to the controller (DeviceDriver.whenConnected):
   * a command waiting for its controller (its write found no connection) reads as the link
   * comes back, not up to a pause (2 s) later; the pauses then start short again.
   */
  async readUntil(
    lane: Lane,
    done: () => boolean,
    notBeforeMono: number,
    log: Logger,
  ): Promise<{
    readback: TimedReadback | null;
    lastError: string | null;
    /** The state the last failed read named, when it answered one the profile does not know. */
    unknownState: string | null;
  }> {
    const { driver } = lane.binding;
    const { pollIntervalMs } = lane.binding.profile.timing;
    let lastError: string | null = null;
    let unknownState: string | null = null;
    let pause = pollIntervalMs;
    for (;;) {
      const epoch = driver.health().connectionEpoch;
      const result = await this.read(lane, log);
      if ('error' in result) {
        lastError = result.error;
        unknownState = result.unknownState ?? null;
      } else if (result.readback.requestedMono >= notBeforeMono) {
        return { readback: result.readback, lastError, unknownState };
      }
      if (done() || aborted(lane)) return { readback: null, lastError, unknownState };
      await this.pause(lane, pause, epoch);
      pause =
        driver.health().connectionEpoch !== epoch ? pollIntervalMs : Math.min(pause * 2, 2_000);
    }
  }

  /** Sleeps `ms`, or until the driver has a connection newer than `epoch`. */
  private async pause(lane: Lane, ms: number, epoch: number): Promise<void> {
    const { clock } = this.host;
    const { driver } = lane.binding;
    if (driver.whenConnected === undefined) {
      await clock.sleep(ms, lane.signal);
      return;
    }
    const whenConnected = driver.whenConnected.bind(driver);
    await firstOf(lane.signal, [
      (over) => clock.sleep(ms, over),
      (over) => whenConnected(epoch, over),
    ]);
  }

  /**
   * The lane's skew when it may be used now: same connection, young enough — and measured
   * again before a drifting controller clock is predicted to cross its bound.
   */
  usableSkew(lane: Lane): SkewEstimate | null {
    const epoch = lane.binding.driver.health().connectionEpoch;
    let maxAge = this.host.skewMaxAgeMs;
    const bound = this.host.clockPolicy.maxControllerSkewMs(lane.binding.id);
    if (lane.skew !== null && bound !== null) {
      maxAge = Math.min(maxAge, crossingInMs(lane.skew, driftPpm(lane.skewSamples), bound));
    }
    return skewUsable(lane.skew, epoch, this.host.clock.elapsed(), maxAge) ? lane.skew : null;
  }

  /**
   * The lane's skew while it still stands: measured on this connection, within
   * skewMaxAgeMs. Unlike usableSkew, not cut short by a predicted crossing of the bound, which
   * only brings the next measurement forward. An estimate that no longer stands is the last
   * measurement only: the controller clock is not known now (reports say so, SPEC §6).
   */
  standingSkew(lane: Lane): SkewEstimate | null {
    const epoch = lane.binding.driver.health().connectionEpoch;
    return skewUsable(lane.skew, epoch, this.host.clock.elapsed(), this.host.skewMaxAgeMs)
      ? lane.skew
      : null;
  }

  /**
   * The lane's clock flag while the estimate it was judged on stands (judgeClock keeps it in
   * step with every measurement); null once that estimate is void, of another connection or
   * too old: a clock not known now is not reported beyond its bound.
   */
  clockOff(lane: Lane): Lane['clockOff'] {
    return this.standingSkew(lane) === null ? null : lane.clockOff;
  }

  /**
   * Whether the lane's usable skew is too coarse to place readbacks on the controller's
   * scans (readback-pacing.ts): known to worse than a twentieth of a scan, as an estimate
   * measured while the event loop was busy (a hundred devices starting at once) can be.
   * Readbacks are still correct with it, only later; the idle-device monitor measures it again.
   */
  coarseSkew(lane: Lane): boolean {
    const skew = this.usableSkew(lane);
    return skew !== null && skew.uncertaintyMs > lane.binding.profile.timing.scanMs / 20;
  }

  /**
   * The controller clock's drift in ppm as it is shown, once enough measurements span enough
   * time to know it within DRIFT_SHOWN_WITHIN_PPM (shownDriftPpm).
   */
  drift(lane: Lane): number | null {
    return shownDriftPpm(lane.skewSamples);
  }

  /** Measures the controller skew unless a usable estimate exists; null when it cannot. */
  async ensureSkew(lane: Lane, log: Logger): Promise<SkewEstimate | null> {
    const usable = this.usableSkew(lane);
    if (usable !== null) return usable;
    return this.measureSkew(lane, log);
  }

  /**
   * Measures the controller skew now, whatever estimate the lane has; null when it cannot.
   * The clock is read up to CLOCK_READINGS times one after the other while each round trip is
   * within a millisecond: the readings round at different phases of the millisecond and
   * together place the controller's stamps more closely than one can (estimateSkewFrom). Over a
   * slower link one reading is as good as several, and only one is taken.
   */
  async measureSkew(lane: Lane, log: Logger): Promise<SkewEstimate | null> {
    const { driver } = lane.binding;
    // A controller without a readable clock: images carry no source time either.
    if (driver.readClock === undefined) return null;
    const readClock = driver.readClock.bind(driver);
    const readings: ClockReading[] = [];
    let epoch = 0;
    while (readings.length < CLOCK_READINGS) {
      try {
        const requestedMono = this.host.clock.elapsed();
        const sample = await readClock(lane.signal);
        const receivedMono = this.host.clock.elapsed();
        // The epoch after the read: a reconnect during it means the read went over the new one,
        // and the readings before it may be of a controller that restarted since.
        const after = driver.health().connectionEpoch;
        if (after !== epoch) readings.length = 0;
        epoch = after;
        readings.push({ sample, bracket: { requestedMono, receivedMono } });
        readSucceeded(lane.clockReads, CLOCK_READS, this.readTime(), log);
        const roundTrip = receivedMono - requestedMono - Math.max(0, sample.queuedMs ?? 0);
        if (roundTrip > STAMP_QUANTUM_MS) break;
      } catch (error) {
        // A read cut short by a stop or the shutdown says nothing about the controller.
        if (aborted(lane)) {
          log.debug({ err: error }, 'controller clock read aborted');
          return null;
        }
        readFailed(lane.clockReads, CLOCK_READS, errorText(error), this.readTime(), log);
        // The readings taken before it still hold.
        if (readings.length === 0) {
          this.forgetStale(lane, log);
          return null;
        }
        break;
      }
    }
    const previous = lane.skew;
    lane.skew = estimateSkewFrom(readings, epoch);
    addSample(lane.skewSamples, lane.skew);
    this.judgeClock(lane, lane.skew, log);
    if (previous !== null && Math.abs(previous.monoOffsetMs - lane.skew.monoOffsetMs) > 1_000) {
      log.warn(
        {
          offsetMs: Math.round(lane.skew.offsetMs),
          previousOffsetMs: Math.round(previous.offsetMs),
        },
        'controller clock stepped',
      );
    }
    return lane.skew;
  }

  /** Flags (or clears) a controller clock beyond its bound, logging the transitions. */
  private judgeClock(lane: Lane, skew: SkewEstimate, log: Logger): void {
    const maxMs = this.host.clockPolicy.maxControllerSkewMs(lane.binding.id);
    const off = maxMs !== null && skewExceeds(skew, maxMs);
    if (off && lane.clockOff === null) {
      lane.clockOff = { since: this.host.clock.now(), offsetMs: skew.offsetMs, maxMs };
      log.warn(
        {
          offsetMs: Math.round(skew.offsetMs),
          uncertaintyMs: Math.round(skew.uncertaintyMs),
          maxMs,
        },
        'controller clock beyond the allowed skew',
      );
    } else if (off && lane.clockOff !== null) {
      lane.clockOff = { ...lane.clockOff, offsetMs: skew.offsetMs };
    } else if (!off && lane.clockOff !== null) {
      lane.clockOff = null;
      log.info(
        { offsetMs: Math.round(skew.offsetMs) },
        'controller clock back within the allowed skew',
      );
    }
  }

  /**
   * The clock could not be measured: an estimate that no longer stands (of another connection,
   * or too old) is voided, and the flag judged on it lifted, for nothing is known of the clock
   * now — the command's history would record the old skew as the one it was judged on. After a
   * reconnect the controller may have restarted with its clock set right: a write refused
   * CLOCK_SKEW on the offset it had before would be a false failure (SPEC §6), and without a
   * skew no readback is judged by the controller's clock. Flagged again once measured.
   */
  private forgetStale(lane: Lane, log: Logger): void {
    if (this.standingSkew(lane) !== null) return;
    if (lane.clockOff !== null) {
      log.warn(
        { offsetMs: Math.round(lane.clockOff.offsetMs), maxMs: lane.clockOff.maxMs },
        'controller clock no longer known to be beyond the allowed skew: its estimate no longer stands and the clock cannot be read',
      );
    }
    lane.skew = null;
    lane.clockOff = null;
  }

  /** Voids the skew estimate: something contradicted it. */
  invalidateSkew(lane: Lane, log: Logger, why: string): void {
    if (lane.skew === null) return;
    log.warn({ offsetMs: Math.round(lane.skew.offsetMs) }, `controller skew void: ${why}`);
    lane.skew = null;
  }

  /**
   * How much older than its read an image may look before the clock is measured again. A step
   * back of the controller's clock makes its images look older by the step, and one that takes
   * the clock past the bound on the slow side may be smaller than OLD_IMAGE_MS: from an offset
   * o within a bound B, a step back of more than B + o (less the estimate's uncertainty). A
   * controller 3 s slow behind a 2 s bound would otherwise take writes until the estimate
   * expires (skewMaxAgeMs, a minute).
   */
  private oldImageMs(lane: Lane, skew: SkewEstimate): number {
    const bound = this.host.clockPolicy.maxControllerSkewMs(lane.binding.id);
    if (bound === null) return OLD_IMAGE_MS;
    return Math.min(OLD_IMAGE_MS, Math.max(0, bound + skew.offsetMs - skew.uncertaintyMs));
  }

  private readTime(): ReadTime {
    return { now: this.host.clock.now(), mono: this.host.clock.elapsed() };
  }

  /** One read; a failure is kept on the lane and logged (read-failures.ts). */
  private async read(lane: Lane, log: Logger): Promise<ReadResult> {
    const { driver, profile } = lane.binding;
    const requestedMono = this.host.clock.elapsed();
    let readback: TimedReadback;
    try {
      const raw = await driver.read(lane.signal);
      readback = {
        ...raw,
        requestedMono,
        receivedMono: this.host.clock.elapsed(),
        epoch: driver.health().connectionEpoch,
      };
    } catch (error) {
      const message = errorText(error);
      // A read cut short by a stop or the shutdown says nothing about the device.
      if (aborted(lane)) log.debug({ err: error }, 'readback aborted');
      else readFailed(lane.statusReads, STATUS_READS, message, this.readTime(), log);
      return { error: message };
    }
    if (!profile.states.includes(readback.state)) {
      // Not a readback the core may act on (and not mirrored): a failed read, said once.
      const message = `unknown controller state "${readback.state}"`;
      readFailed(lane.statusReads, STATUS_READS, message, this.readTime(), log);
      return { error: message, unknownState: readback.state };
    }
    readSucceeded(lane.statusReads, STATUS_READS, this.readTime(), log);
    const skew = this.usableSkew(lane);
    if (contradictsSkew(readback, skew)) {
      // The image claims to be produced after its answer arrived: the clock stepped forward.
      lane.skew = null;
    } else if (skew !== null && readback.sourceTime !== null) {
      // An image far older than its read: frozen, or the controller's clock stepped back (a
      // restart, a manual set) — which no readback can tell apart. The clock is measured again,
      // so that a clock set back beyond its bound is caught before the next write rather than
      // when the estimate expires: at once, and for the same image (frozen, or an idle OPC UA
      // valve's last change) at most every OLD_IMAGE_MS. An image stamped anew that still
      // looks old after a measurement is a clock set back again: measured at once, or a second
      // step within OLD_IMAGE_MS of the first would take writes for the estimate's minute.
      const last = lane.oldImageCheck;
      const window = sourceWindow(readback, skew);
      if (
        (last === null ||
          last.sourceTime !== readback.sourceTime ||
          this.host.clock.elapsed() - last.mono > OLD_IMAGE_MS) &&
        window !== null &&
        window.latest < readback.requestedMono - this.oldImageMs(lane, skew)
      ) {
        lane.skew = null;
        lane.oldImageCheck = { mono: this.host.clock.elapsed(), sourceTime: readback.sourceTime };
      }
    }
    this.host.mirror(lane, readback);
    return { readback };
  }
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** A function, not a property read: the flag changes across awaits (and narrowing forgets). */
function aborted(lane: Lane): boolean {
  return lane.signal.aborted;
}
