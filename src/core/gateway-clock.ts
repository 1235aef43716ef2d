/**
 * The gateway's own clock (SPEC §6, issue 11): is this machine's clock locked to a reference
 * (PTP grandmaster via linuxptp, or chrony's reference), by how much is it off, and since when.
 *
 * Pure types and the one state rule; the adapters that ask linuxptp's `pmc` or `chronyc` live in
 * src/clock/ and hand in observations. What an unlocked or unknown clock does to commands is the
 * wiring's policy, not this module's.
 */

export type SyncState = 'LOCKED' | 'HOLDOVER' | 'UNLOCKED' | 'UNKNOWN';
export type GatewayClockSource = 'ptp' | 'chrony' | 'none';

export interface GatewayClockStatus {
  readonly source: GatewayClockSource;
  readonly state: SyncState;
  /**
   * Gateway clock minus reference, ns (PTP `master_offset`; chrony minus its "System time"
   * correction). Null when unknown or stale (a PTP port that tracks no master keeps reporting
   * the last offset it measured).
   */
  readonly offsetNs: number | null;
  /** PTP `gmIdentity`, or chrony's reference (name, else reference ID). */
  readonly grandmaster: string | null;
  /** PTP port state (several ports: the one tracking a master, else all, comma-separated). */
  readonly portState: string | null;
  readonly detail: string;
  /** Wall time of the check that produced this status (epoch ms). */
  readonly checkedAt: number;
  /** Wall time at which this state began (epoch ms). */
  readonly since: number;
  /** Wall time of the last check that found the clock locked (reports); null if never. */
  readonly lastLockedAt: number | null;
  /**
   * Monotonic time of that check: holdover is a duration, measured on the monotonic clock
   * (SPEC §6), so that the very clock step a lost lock may cause cannot stretch or cut it.
   */
  readonly lastLockedMono: number | null;
}

/** The port the pipeline, /readyz and /metrics read. Never blocks: the last known status. */
export interface GatewayClock {
  status(): GatewayClockStatus;
}

export interface PtpPortObservation {
  /** PORT_DATA_SET portIdentity, e.g. `fe0fe1.fffe.75124f-1`. */
  readonly identity: string;
  /** PORT_DATA_SET portState: SLAVE, UNCALIBRATED, LISTENING, MASTER, PASSIVE, FAULTY, ... */
  readonly state: string;
}

/** One reading of ptp4l's data sets (TIME_STATUS_NP, PORT_DATA_SET, CURRENT_DATA_SET). */
export interface PtpObservation {
  readonly source: 'ptp';
  readonly clockIdentity: string | null;
  readonly ports: readonly PtpPortObservation[];
  /** TIME_STATUS_NP gmPresent: false when this clock is its own grandmaster. */
  readonly gmPresent: boolean;
  readonly gmIdentity: string | null;
  /** TIME_STATUS_NP master_offset, ns (slave minus master). */
  readonly masterOffsetNs: number | null;
  /** CURRENT_DATA_SET offsetFromMaster, ns (the same quantity, as a TimeInterval). */
  readonly offsetFromMasterNs: number | null;
  readonly stepsRemoved: number | null;
  /** What the reader noticed but could live with (a missing optional block, extra clocks). */
  readonly notes: readonly string[];
}

/** One reading of `chronyc -c tracking`. */
export interface ChronyObservation {
  readonly source: 'chrony';
  /** Reference ID, 8 hex digits (00000000: none; 7F7F0101: the `local` directive). */
  readonly referenceId: string;
  readonly referenceName: string;
  readonly stratum: number;
  /** Normal, Insert second, Delete second, Not synchronised. */
  readonly leapStatus: string;
  /** System clock minus chrony's estimate of true time, ns. */
  readonly offsetNs: number;
  /**
   * chrony's bound on the clock's error: |offset| + root dispersion + root delay / 2
   * (chronyc(1), "tracking"). The dispersion grows while no source answers, so this bound
   * widens after the sources are lost while the offset itself stays small.
   */
  readonly maxErrorNs: number;
  /** When the last measurement from the reference was processed (epoch ms). */
  readonly refTimeMs: number;
}

export type ClockObservation = PtpObservation | ChronyObservation;

/** What one poll of the source found: an observation, or why none could be made. */
export type ClockProbe =
  | { readonly kind: 'observed'; readonly observation: ClockObservation }
  | { readonly kind: 'unreachable'; readonly source: 'ptp' | 'chrony'; readonly error: string };

export interface GatewayClockPolicy {
  /** |offset| (chrony: its error bound) at most this, in ns, for LOCKED. */
  readonly maxOffsetNs: number;
  /** After losing lock, HOLDOVER for this long (monotonic ms since last locked), then UNLOCKED. */
  readonly holdoverMs: number;
  /**
   * Count a PTP port in UNCALIBRATED as tracking its master. Only for a ptp4l that runs with
   * `free_running 1` (it watches the offset and never disciplines a clock): linuxptp ≤ 3.1.1's
   * clock_no_adjust() never reports a locked servo, so such a port never becomes SLAVE.
   * Off by default: for a ptp4l that disciplines the clock, UNCALIBRATED means not locked yet.
   */
  readonly acceptUncalibrated?: boolean;
}

/** "Now" on both clocks: wall for reports, monotonic for durations (SPEC §6). */
export interface ClockInstant {
  readonly wall: number;
  readonly mono: number;
}

export const NO_SOURCE_DETAIL = 'no gateway clock source configured';

/** The status before the first check (or forever, for source `none`). */
export function initialGatewayClockStatus(
  source: GatewayClockSource,
  at: ClockInstant,
): GatewayClockStatus {
  return {
    source,
    state: 'UNKNOWN',
    offsetNs: null,
    grandmaster: null,
    portState: null,
    detail: source === 'none' ? NO_SOURCE_DETAIL : 'not checked yet',
    checkedAt: at.wall,
    since: at.wall,
    lastLockedAt: null,
    lastLockedMono: null,
  };
}

/** What one observation says, before history (holdover) is considered. */
export interface ObservationJudgement {
  readonly locked: boolean;
  readonly offsetNs: number | null;
  readonly grandmaster: string | null;
  readonly portState: string | null;
  /** Why it is locked, or every reason it is not. */
  readonly detail: string;
  /**
   * The reference is there and measures this clock off beyond what a holdover presumes (PTP: a
   * port follows a present grandmaster; chrony: synchronised to a source, its pending correction
   * beyond; withinHoldover()). No holdover covers that: holdover is a clock that lost its
   * reference and is presumed to free-run from within its bound, and this one is measured far
   * outside it (a step of the gateway's clock, by an operator or another time daemon, reads so).
   * An offset just past the bound (a servo's spike) is holdover, as before.
   */
  readonly measuredOff: boolean;
}

const CHRONY_NO_REFERENCE = '00000000';
/** chrony's `local` directive: it serves its own clock, which no source disciplines. */
const CHRONY_LOCAL_REFERENCE = '7F7F0101';

export function judgeObservation(
  observation: ClockObservation,
  policy: GatewayClockPolicy,
): ObservationJudgement {
  switch (observation.source) {
    case 'ptp':
      return judgePtp(observation, policy);
    case 'chrony':
      return judgeChrony(observation, policy);
  }
}

function withinBound(valueNs: number | null, policy: GatewayClockPolicy): boolean {
  return valueNs !== null && Number.isFinite(valueNs) && Math.abs(valueNs) <= policy.maxOffsetNs;
}

/**
 * How far a clock in holdover may be presumed to have run off: free-running from within the
 * bound, at a gateway oscillator's worst drift (100 ppm, a plain crystal's tolerance), for the
 * whole holdover. A reference that measures the clock within this is a transient (a spike of the
 * servo, a path-delay jump): holdover rides it out, as it would a lost grandmaster. Beyond it the
 * clock was stepped (an operator, another time daemon): no holdover covers that.
 */
const HOLDOVER_DRIFT_PPM = 100;

function withinHoldover(valueNs: number | null, policy: GatewayClockPolicy): boolean {
  // A millisecond at one part per million is a nanosecond.
  const presumedNs = policy.maxOffsetNs + policy.holdoverMs * HOLDOVER_DRIFT_PPM;
  return valueNs !== null && Number.isFinite(valueNs) && Math.abs(valueNs) <= presumedNs;
}

function judgePtp(o: PtpObservation, policy: GatewayClockPolicy): ObservationJudgement {
  const tracking =
    o.ports.find((p) => p.state === 'SLAVE') ??
    (policy.acceptUncalibrated === true
      ? o.ports.find((p) => p.state === 'UNCALIBRATED')
      : undefined);
  // Reported even when not accepted, so that the detail says where the port stands.
  const following = tracking ?? o.ports.find((p) => p.state === 'UNCALIBRATED');
  const portState =
    following?.state ?? (o.ports.length > 0 ? o.ports.map((p) => p.state).join(',') : null);
  // A port that follows no master keeps the last master_offset it measured (and a slave-only
  // ptp4l keeps gmPresent true after its grandmaster is gone): only a following port's is live.
  const offset = following === undefined ? null : (o.masterOffsetNs ?? o.offsetFromMasterNs);
  const grandmaster = o.gmPresent ? o.gmIdentity : null;

  const reasons: string[] = [];
  if (tracking === undefined) {
    reasons.push(
      portState === null
        ? 'no PTP port reported'
        : following !== undefined
          ? `port ${portState}: not locked to its master yet (not SLAVE)`
          : `port ${portState}: no port follows a master (not SLAVE)`,
    );
  }
  if (!o.gmPresent) reasons.push('no grandmaster (gmPresent false: this clock is its own)');
  if (tracking !== undefined && offset === null) reasons.push('no offset reported');
  const beyond = offset !== null && !withinBound(offset, policy);
  if (beyond) reasons.push(`offset ${offset} ns beyond ±${policy.maxOffsetNs} ns`);

  if (reasons.length === 0 && tracking !== undefined && offset !== null) {
    const accepted =
      tracking.state === 'SLAVE' ? '' : ', UNCALIBRATED accepted: ptp4l runs free_running';
    return {
      locked: true,
      offsetNs: offset,
      grandmaster,
      portState,
      detail: `locked to grandmaster ${grandmaster ?? '?'}: port ${tracking.state}${accepted}, offset ${offset} ns within ±${policy.maxOffsetNs} ns`,
      measuredOff: false,
    };
  }
  return {
    locked: false,
    offsetNs: offset,
    grandmaster,
    portState,
    detail: reasons.join('; '),
    // The offset is live only while a port follows a master (above), and means something only
    // with a grandmaster present.
    measuredOff: beyond && o.gmPresent && !withinHoldover(offset, policy),
  };
}

function judgeChrony(o: ChronyObservation, policy: GatewayClockPolicy): ObservationJudgement {
  const grandmaster =
    o.referenceId === CHRONY_NO_REFERENCE ? null : o.referenceName || o.referenceId;
  const reasons: string[] = [];
  const unsynchronised = o.leapStatus === 'Not synchronised';
  if (unsynchronised) reasons.push('chrony: not synchronised');
  if (o.referenceId === CHRONY_NO_REFERENCE && !unsynchronised)
    reasons.push('chrony: no reference');
  if (o.referenceId === CHRONY_LOCAL_REFERENCE)
    reasons.push('chrony serves its own clock (local directive), not a time source');
  const referenced =
    !unsynchronised &&
    o.referenceId !== CHRONY_NO_REFERENCE &&
    o.referenceId !== CHRONY_LOCAL_REFERENCE;
  if (!withinBound(o.maxErrorNs, policy))
    reasons.push(
      `chrony error bound ${Math.round(o.maxErrorNs)} ns (offset ${Math.round(o.offsetNs)} ns + root dispersion + root delay / 2) beyond ±${policy.maxOffsetNs} ns`,
    );
  const offsetNs = Math.round(o.offsetNs);
  if (reasons.length === 0) {
    return {
      locked: true,
      offsetNs,
      grandmaster,
      portState: null,
      detail: `chrony synchronised to ${grandmaster ?? '?'} (stratum ${o.stratum}, leap status ${o.leapStatus}): offset ${offsetNs} ns, error bound ${Math.round(o.maxErrorNs)} ns within ±${policy.maxOffsetNs} ns`,
      measuredOff: false,
    };
  }
  return {
    locked: false,
    offsetNs,
    grandmaster,
    portState: null,
    detail: reasons.join('; '),
    // The offset itself beyond the bound, not only the error bound: the dispersion that grows
    // after the sources are lost is what holdover is for; an offset chrony measured is not.
    measuredOff: referenced && !withinHoldover(o.offsetNs, policy),
  };
}

/**
 * The state rule. LOCKED: the observation is locked (PTP: a SLAVE port, a grandmaster, |offset|
 * within the bound; chrony: synchronised to a reference, error bound within the bound).
 * HOLDOVER: not locked now, but locked at most `holdoverMs` ago (monotonic), not already
 * UNLOCKED since, and not measured off by the reference (ObservationJudgement.measuredOff).
 * UNLOCKED: otherwise. UNKNOWN: the source could not be read.
 */
export function nextGatewayClockStatus(
  previous: GatewayClockStatus,
  probe: ClockProbe,
  policy: GatewayClockPolicy,
  at: ClockInstant,
): GatewayClockStatus {
  const sinceFor = (state: SyncState): number =>
    previous.state === state ? previous.since : at.wall;

  if (probe.kind === 'unreachable') {
    return {
      source: probe.source,
      state: 'UNKNOWN',
      offsetNs: null,
      grandmaster: null,
      portState: null,
      detail: `${probe.source} source unreachable: ${probe.error}`,
      checkedAt: at.wall,
      since: sinceFor('UNKNOWN'),
      lastLockedAt: previous.lastLockedAt,
      lastLockedMono: previous.lastLockedMono,
    };
  }

  const judged = judgeObservation(probe.observation, policy);
  const base = {
    source: probe.observation.source,
    offsetNs: judged.offsetNs,
    grandmaster: judged.grandmaster,
    portState: judged.portState,
    checkedAt: at.wall,
  };
  if (judged.locked) {
    return {
      ...base,
      state: 'LOCKED',
      detail: judged.detail,
      since: sinceFor('LOCKED'),
      lastLockedAt: at.wall,
      lastLockedMono: at.mono,
    };
  }

  const lockAgeMs = previous.lastLockedMono === null ? null : at.mono - previous.lastLockedMono;
  const history = {
    lastLockedAt: previous.lastLockedAt,
    lastLockedMono: previous.lastLockedMono,
  };
  const recent = lockAgeMs !== null && previous.state !== 'UNLOCKED';
  if (recent && lockAgeMs <= policy.holdoverMs && !judged.measuredOff) {
    return {
      ...base,
      ...history,
      state: 'HOLDOVER',
      detail: `holdover: locked ${Math.round(lockAgeMs)} ms ago, UNLOCKED after ${policy.holdoverMs} ms; ${judged.detail}`,
      since: sinceFor('HOLDOVER'),
    };
  }
  const expired = !recent
    ? ''
    : lockAgeMs <= policy.holdoverMs
      ? `no holdover (locked ${Math.round(lockAgeMs)} ms ago): the reference measures this clock off; `
      : `holdover of ${policy.holdoverMs} ms expired (locked ${Math.round(lockAgeMs)} ms ago); `;
  return {
    ...base,
    ...history,
    state: 'UNLOCKED',
    detail: `${expired}${judged.detail}`,
    since: sinceFor('UNLOCKED'),
  };
}
