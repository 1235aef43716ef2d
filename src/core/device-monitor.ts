import type { Clock } from './clock.js';
import type { DeviceReads } from './device-reads.js';
import type { DeviceHealth, Readback } from './driver.js';
import { claimId } from './journal.js';
import { interruptedTargets, type Lane, type WriteCounts } from './lane.js';
import type { Logger } from './logger.js';
import type { ReadFailure } from './read-failures.js';
import type { SkewEstimate } from './skew.js';

/**
 * A device whose reads have returned the same scan of its image this long has a frozen image:
 * the controller answers, but has stopped publishing (a PLC in STOP, a halted program).
 * /readyz, /v1/devices readers and the status page judge `imageUnchangedMs` by it (imageFrozen).
 */
export const IMAGE_FROZEN_MS = 15_000;

/**
 * Whether an image has stood unchanged for IMAGE_FROZEN_MS: the one rule /readyz, the status
 * page and sluicectl judge by, on the unrounded time, and on a time shown in whole milliseconds
 * rounded down (wholeMs): rounded to the nearest, 14 999.6 ms showed as 15 000 (frozen to
 * /readyz) while the status page and the metric still had it under the bound.
 */
export function imageFrozen(imageUnchangedMs: number | null): boolean {
  return imageUnchangedMs !== null && imageUnchangedMs >= IMAGE_FROZEN_MS;
}

/** A duration shown in whole milliseconds, rounded down: it reaches a bound when the time does. */
export function wholeMs(ms: number): number {
  return Math.floor(ms);
}

/** What the rest of the daemon may know about a device, as the pipeline last saw it. */
export interface DeviceView {
  readonly id: string;
  readonly profile: string;
  readonly mirror: Readback | null;
  /**
   * How long ago the mirror's readback arrived, on the monotonic clock (SPEC §6: a duration):
   * the wall clock's `receivedAt` would age it by a step of the gateway's clock, or, stepped
   * back, show a device that stopped answering as read a moment ago for as long as the step.
   */
  readonly readbackAgeMs: number | null;
  /**
   * How long reads have kept returning the same scan (monotonic: from the first read that
   * returned the mirror's scan time to the mirror's read); null when readbacks carry no scan
   * time. Grows without bound for a frozen image: the controller has stopped publishing.
   */
  readonly imageUnchangedMs: number | null;
  /** The last skew measurement (null: never measured, or voided). */
  readonly skew: SkewEstimate | null;
  /**
   * Whether `skew` still stands (measured on this connection, within its maximum age): one
   * that does not is only the last measurement, and the controller clock is not known now.
   */
  readonly skewStands: boolean;
  /** The driver's connection: shared by every device of a Modbus PLC. */
  readonly health: DeviceHealth;
  /**
   * This device's own reads failing in a row (null: the last one succeeded). A connection
   * that is up says nothing about them: a register map that points at registers the PLC
   * does not have fails every read on a healthy connection.
   */
  readonly readError: ReadFailure | null;
  /** Its controller clock reads failing in a row (null: the last one succeeded). */
  readonly clockReadError: ReadFailure | null;
  /** Failed reads since the daemon started: status and controller clock. */
  readonly readErrors: { readonly status: number; readonly clock: number };
  /** What became of its writes since the daemon started (as the counts stand). */
  readonly writes: Readonly<WriteCounts>;
  readonly queued: number;
  readonly inFlight: string | null;
  /** A command left open and waiting to be taken up again: the device waits for it. */
  readonly unresolved: string | null;
  /**
   * Every command the device holds, each counted once: those queued, and those it is on or will
   * go back to before the queue — in flight, its end being made durable (Lane.ending), left open
   * (unresolved), preempted by a stop and waiting for it (Lane.interrupted). 0: idle.
   */
  readonly holding: number;
  /** The controller clock's drift (ppm), when measurements span long enough. */
  readonly driftPpm: number | null;
  /**
   * Set while the controller clock is beyond its allowed skew, on an estimate that stands
   * (DeviceReads.clockOff).
   */
  readonly clockOff: {
    readonly since: number;
    readonly offsetMs: number;
    readonly maxMs: number;
  } | null;
}

/** A device as its lane knows it now (`nowMono`: the monotonic clock's now). */
export function deviceView(lane: Lane, reads: DeviceReads, nowMono: number): DeviceView {
  return {
    id: lane.binding.id,
    profile: lane.binding.profile.profile,
    mirror: lane.mirror,
    readbackAgeMs: lane.mirror === null ? null : Math.max(0, nowMono - lane.mirror.receivedMono),
    imageUnchangedMs:
      lane.mirror === null || lane.imageSince === null
        ? null
        : Math.max(0, lane.mirror.requestedMono - lane.imageSince.mono),
    skew: lane.skew,
    skewStands: reads.standingSkew(lane) !== null,
    health: lane.binding.driver.health(),
    readError: lane.statusReads.current,
    clockReadError: lane.clockReads.current,
    readErrors: { status: lane.statusReads.total, clock: lane.clockReads.total },
    writes: lane.writes,
    queued: lane.queue.length,
    inFlight: lane.inFlight?.key ?? null,
    unresolved: lane.unresolved?.key ?? null,
    holding: holding(lane),
    driftPpm: reads.drift(lane),
    clockOff: reads.clockOff(lane),
  };
}

/** DeviceView.holding. */
function holding(lane: Lane): number {
  const held = new Set(lane.queue.map(claimId));
  for (const ref of [lane.inFlight, lane.ending, lane.unresolved, ...interruptedTargets(lane)]) {
    if (ref !== null) held.add(claimId(ref));
  }
  return held.size;
}

/** What the monitor needs from the pipeline. */
export interface MonitorHost {
  readonly lanes: readonly Lane[];
  readonly reads: DeviceReads;
  readonly clock: Clock;
  readonly logger: Logger;
  /** The pipeline's stop: the monitor ends with it. */
  readonly signal: AbortSignal;
}

/**
 * Reads every idle device every `intervalMs`, so that the mirror — what operators and the
 * retained state topic see — stays current between commands. Commands never act on it:
 * they take their own fresh read.
 */
export function startMonitor(host: MonitorHost, intervalMs: number): void {
  const { lanes, reads, clock, signal } = host;
  lanes.forEach((lane, i) => {
    const log = host.logger.child({ device: lane.binding.id });
    void (async () => {
      // Spread over the interval, on a fixed grid: started together (or drifting back
      // together by the time each pass takes), every device of a PLC would be read in one
      // burst each period, and a command's fresh read or readback would queue behind all of
      // them on their PLC connection.
      let next = clock.elapsed() + (intervalMs * i) / lanes.length;
      for (;;) {
        await clock.sleep(Math.max(0, next - clock.elapsed()), signal);
        if (signal.aborted) return;
        if (lane.inFlight === null && lane.queue.length === 0) {
          await reads.tryRead(lane, log);
          // The controller clock is watched between commands too (drift, bound: SPEC §6), and
          // an estimate too coarse to place readbacks is measured again, at this pace.
          if (reads.usableSkew(lane) === null || reads.coarseSkew(lane)) {
            await reads.measureSkew(lane, log);
          }
        }
        // The next slot of the grid; slots a slow pass ran over are skipped, not caught up.
        next += intervalMs;
        const now = clock.elapsed();
        if (next < now) next += Math.ceil((now - next) / intervalMs) * intervalMs;
      }
    })();
  });
}
