import type { DeviceView } from '../core/pipeline.js';
import type { Observation } from '../core/journal.js';
import { observe } from '../core/readback.js';

/** A device as `GET /v1/devices` shows it: the mirror, its age, skew and connectivity. */
export interface DeviceDocument {
  readonly id: string;
  readonly profile: string;
  /** Whether the caller's identity may command this device. */
  readonly allowed: boolean;
  /** The last readback, as journaled with commands (`Observation`). */
  readonly mirror: Observation | null;
  readonly readbackAgeMs: number | null;
  readonly skew: {
    readonly offsetMs: number;
    readonly uncertaintyMs: number;
    readonly measuredAt: string;
  } | null;
  readonly connectivity: {
    readonly connected: boolean;
    readonly lastGoodReadAt: string | null;
    readonly errorCount: number;
    readonly lastError: string | null;
  };
  readonly queued: number;
  readonly inFlight: string | null;
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

export function deviceDocument(view: DeviceView, allowed: boolean, now: number): DeviceDocument {
  const m = view.mirror;
  return {
    id: view.id,
    profile: view.profile,
    allowed,
    mirror: m === null ? null : observe(m),
    readbackAgeMs: m === null ? null : Math.max(0, Math.round(now - m.receivedAt)),
    skew:
      view.skew === null
        ? null
        : {
            offsetMs: Math.round(view.skew.offsetMs),
            uncertaintyMs: Math.round(view.skew.uncertaintyMs),
            measuredAt: new Date(view.skew.measuredAt).toISOString(),
          },
    connectivity: {
      connected: view.health.connected,
      lastGoodReadAt: iso(view.health.lastGoodReadAt),
      errorCount: view.health.errorCount,
      lastError: view.health.lastError,
    },
    queued: view.queued,
    inFlight: view.inFlight,
  };
}
