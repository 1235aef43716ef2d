import type { GatewayClockStatus } from '../core/gateway-clock.js';

/**
 * The gateway clock as an operator reads it (the admin endpoint's `GET /v1/clock`, which
 * `sluicectl clock --json` prints, and the status page): times in RFC 3339, and without the
 * monotonic reading the holdover is measured on (`lastLockedMono`), which means nothing
 * outside the daemon's process. Pure: built from the clock's status.
 */
export interface GatewayClockDocument {
  readonly source: string;
  readonly state: string;
  readonly offsetNs: number | null;
  readonly grandmaster: string | null;
  readonly portState: string | null;
  readonly detail: string;
  readonly since: string;
  readonly checkedAt: string;
  readonly lastLockedAt: string | null;
}

export function gatewayClockDocument(status: GatewayClockStatus): GatewayClockDocument {
  const iso = (ms: number): string => new Date(ms).toISOString();
  return {
    source: status.source,
    state: status.state,
    offsetNs: status.offsetNs,
    grandmaster: status.grandmaster,
    portState: status.portState,
    detail: status.detail,
    since: iso(status.since),
    checkedAt: iso(status.checkedAt),
    lastLockedAt: status.lastLockedAt === null ? null : iso(status.lastLockedAt),
  };
}
