import type { DeviceView } from '../core/pipeline.js';
import { wholeMs } from '../core/device-monitor.js';
import type { Observation } from '../core/journal.js';
import type { ReadFailure } from '../core/read-failures.js';
import { observe } from '../core/readback.js';

/** A device's reads failing in a row: the last error, since when, how many. */
export interface ReadErrorDocument {
  readonly message: string;
  readonly since: string;
  readonly lastAt: string;
  readonly failures: number;
}

/** A device as `GET /v1/devices` shows it: the mirror, its age, skew and connectivity. */
export interface DeviceDocument {
  readonly id: string;
  readonly profile: string;
  /** Whether the caller's identity may command this device. */
  readonly allowed: boolean;
  /** The last readback, as journaled with commands (`Observation`). */
  readonly mirror: Observation | null;
  readonly readbackAgeMs: number | null;
  /**
   * How long reads have returned the same scan of the controller's image (null: its readbacks
   * carry no scan time). Past a few scans the controller has stopped publishing: a frozen image.
   */
  readonly imageUnchangedMs: number | null;
  readonly skew: {
    readonly offsetMs: number;
    readonly uncertaintyMs: number;
    readonly measuredAt: string;
    /** The controller clock's rate against the gateway's (ppm), when known. */
    readonly driftPpm: number | null;
  } | null;
  /** Set while the controller clock is beyond its allowed skew (SPEC §6). */
  readonly clockOff: {
    readonly since: string;
    readonly offsetMs: number;
    readonly maxMs: number;
  } | null;
  /**
   * `connected`, `lastGoodReadAt`, `errorCount` and `lastError` are the driver's connection
   * (shared by every device of a Modbus PLC); `readError` and `clockReadError` are this
   * device's own reads: connected with a `readError` means the PLC answers and refuses them.
   */
  readonly connectivity: {
    readonly connected: boolean;
    readonly lastGoodReadAt: string | null;
    readonly errorCount: number;
    readonly lastError: string | null;
    /** Null when the device's last status read succeeded. */
    readonly readError: ReadErrorDocument | null;
    /** Null when its last controller clock read succeeded. */
    readonly clockReadError: ReadErrorDocument | null;
  };
  readonly queued: number;
  readonly inFlight: string | null;
  /**
   * A command left open and waiting to be taken up again (its journal write failed, or the stop
   * that paused it has ended): the device runs nothing else until it is settled. `inFlight` is
   * null meanwhile, so without this key a device held for it looked idle.
   */
  readonly unresolved: string | null;
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

function readErrorDocument(failure: ReadFailure | null): ReadErrorDocument | null {
  return failure === null
    ? null
    : {
        message: failure.message,
        since: new Date(failure.since).toISOString(),
        lastAt: new Date(failure.lastAt).toISOString(),
        failures: failure.failures,
      };
}

export function deviceDocument(view: DeviceView, allowed: boolean): DeviceDocument {
  const m = view.mirror;
  return {
    id: view.id,
    profile: view.profile,
    allowed,
    mirror: m === null ? null : observe(m),
    readbackAgeMs: view.readbackAgeMs === null ? null : Math.round(view.readbackAgeMs),
    imageUnchangedMs: view.imageUnchangedMs === null ? null : wholeMs(view.imageUnchangedMs),
    skew:
      view.skew === null
        ? null
        : {
            offsetMs: Math.round(view.skew.offsetMs),
            uncertaintyMs: Math.round(view.skew.uncertaintyMs),
            measuredAt: new Date(view.skew.measuredAt).toISOString(),
            driftPpm: view.driftPpm === null ? null : Math.round(view.driftPpm * 10) / 10,
          },
    clockOff:
      view.clockOff === null
        ? null
        : {
            since: new Date(view.clockOff.since).toISOString(),
            offsetMs: Math.round(view.clockOff.offsetMs),
            maxMs: view.clockOff.maxMs,
          },
    connectivity: {
      connected: view.health.connected,
      lastGoodReadAt: iso(view.health.lastGoodReadAt),
      errorCount: view.health.errorCount,
      lastError: view.health.lastError,
      readError: readErrorDocument(view.readError),
      clockReadError: readErrorDocument(view.clockReadError),
    },
    queued: view.queued,
    inFlight: view.inFlight,
    unresolved: view.unresolved,
  };
}
