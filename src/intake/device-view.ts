import type { DeviceView } from '../core/pipeline.js';
import { formatFaultCode } from '../core/state-machine.js';

/** A device as `GET /v1/devices` shows it: the mirror, its age, skew and connectivity. */
export interface DeviceDocument {
  readonly id: string;
  readonly profile: string;
  /** Whether the caller's identity may command this device. */
  readonly allowed: boolean;
  readonly mirror: {
    readonly state: string;
    readonly position: number | null;
    readonly faultCode: string | null;
    readonly seq: number | null;
    /** The controller's own clock at the read (uncorrected for skew), RFC 3339. */
    readonly sourceTime: string | null;
  } | null;
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
    mirror:
      m === null
        ? null
        : {
            state: m.state,
            position: m.position,
            faultCode: m.faultCode === null ? null : formatFaultCode(m.faultCode),
            seq: m.seq,
            sourceTime: iso(m.sourceTime),
          },
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
