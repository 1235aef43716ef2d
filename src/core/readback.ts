import type { Action } from './command.js';
import type { Observation } from './journal.js';
import type { Readback } from './driver.js';
import { sourceWindow, type SkewEstimate, type TimedReadback } from './skew.js';
import type { DeviceProfile } from './profile.js';
import { ILLEGAL_TRANSITION_FAULT, formatFaultCode } from './state-machine.js';

export function observe(readback: Readback): Observation {
  return {
    state: readback.state,
    position: readback.position,
    seq: readback.seq,
    faultCode: readback.faultCode === null ? null : formatFaultCode(readback.faultCode),
    sourceTime: readback.sourceTime === null ? null : new Date(readback.sourceTime).toISOString(),
    readAt: new Date(readback.requestedAt).toISOString(),
  };
}

/** What the bridge is waiting to see. */
export interface Expectation {
  readonly confirm: readonly string[];
  /** Setpoint a `move` must reach, within the profile's tolerance. */
  readonly position: number | null;
}

/** What one readback says about a command that was written. */
export type WrittenVerdict =
  | { readonly kind: 'confirmed' }
  /** The controller took this command and raised 0x88: it refused the transition. */
  | { readonly kind: 'controller-rejected' }
  /** The controller took this command and is in its fault state. */
  | { readonly kind: 'fault'; readonly faultCode: string | null }
  /** The controller took this command and rests in a state that is not the target. */
  | { readonly kind: 'wrong-state' }
  /** The controller has not (yet) echoed this command's sequence number. */
  | { readonly kind: 'not-taken' }
  /**
   * The valve shows the profile's local state (the LOCAL/REMOTE switch at the panel) after the
   * write: switched after the command's read, which did not show it (that would have been
   * LOCAL_MODE, never written). `echo`: the controller echoes this command (it took it, and a
   * controller in LOCAL ignores what it takes), another sequence number (it has not taken it),
   * or none (it echoes nothing, so whether it took it before the switch cannot be told).
   */
  | { readonly kind: 'local'; readonly echo: 'this' | 'other' | 'none' }
  /**
   * The readback shows this command's echo with a source time before the write: impossible
   * unless the controller's clock stepped; the skew is measured again before judging on.
   */
  | { readonly kind: 'skew-contradicted' }
  /** Taken, still travelling, or a readback too old to speak about the write. */
  | { readonly kind: 'pending'; readonly reason: string };

export function meetsExpectation(
  profile: DeviceProfile,
  readback: Readback,
  expect: Expectation,
): boolean {
  if (!expect.confirm.includes(readback.state)) return false;
  if (expect.position === null) return true;
  if (readback.position === null) return false;
  return Math.abs(readback.position - expect.position) <= (profile.positionTolerance ?? 0);
}

/**
 * True when the readback provably reflects the controller before the write: its image was
 * produced, by its source time corrected by the measured skew and allowing for the estimate's
 * uncertainty, before the write was sent (SPEC §6, readback freshness). Without a skew estimate
 * the controller's time cannot be compared with the gateway's; the sequence echo then decides.
 */
export function predatesWrite(
  readback: Pick<Readback, 'sourceTime'>,
  writeSentMono: number,
  skew: SkewEstimate | null,
): boolean {
  const window = sourceWindow(readback, skew);
  return window !== null && window.latest < writeSentMono;
}

/**
 * Whether the controller can refuse `action` with fault 0x88: the profile's table refuses it
 * (ILLEGAL_TRANSITION) in some state. A stop or a reset is refused in none.
 */
function refusable(profile: DeviceProfile, action: Action): boolean {
  const row = profile.table[action];
  return (
    row !== undefined &&
    Object.values(row).some(
      (cell) => cell.effect === 'reject' && cell.code === 'ILLEGAL_TRANSITION',
    )
  );
}

/**
 * I2: judges one readback taken after a write. Only a readback requested after the write was
 * sent, showing this command's echoed sequence number (where the controller echoes), the
 * target state and a source time not before the write can confirm. Times are monotonic.
 */
export function judgeWritten(args: {
  readonly profile: DeviceProfile;
  readonly action: Action;
  readonly readback: TimedReadback;
  readonly expect: Expectation;
  readonly seq: number;
  readonly writeSentMono: number;
  readonly skew: SkewEstimate | null;
}): WrittenVerdict {
  const { profile, action, readback, expect, seq, writeSentMono, skew } = args;
  if (readback.requestedMono < writeSentMono) {
    return { kind: 'pending', reason: 'readback requested before the write' };
  }
  const echoes = profile.controller.echoesSeq;
  // LOCAL outranks what the command asked for: the operator at the panel has the valve, and the
  // command is not to be confirmed, refused or written again on what the valve does now.
  const local = readback.state === profile.localState;
  if (echoes && readback.seq !== seq) {
    return local ? { kind: 'local', echo: 'other' } : { kind: 'not-taken' };
  }
  if (predatesWrite(readback, writeSentMono, skew)) {
    // The controller echoes this command, so the image was produced after the write: a source
    // time before it means the controller's clock stepped back since the estimate (SPEC §6).
    if (echoes) return { kind: 'skew-contradicted' };
    // Only a scan time dates the image. A last change before the write (an OPC UA profile
    // without ScanTime) is also what an image taken after it shows when the write changed no
    // value (a stop taken as a no-op at OPEN); the read order then decides, as without a time.
    if (!local && readback.sourceIsScan === true) {
      return { kind: 'pending', reason: 'readback source time predates the write' };
    }
  }
  // Before the 0x88 latch: a controller in LOCAL ignores the command it takes and keeps a latch
  // an earlier refused command left, which is not this command's refusal.
  if (local) return { kind: 'local', echo: echoes ? 'this' : 'none' };
  // A latched 0x88 with this command's echo is the controller's own refusal (I4), of a command
  // it can refuse. One that goes to FAULT when it refuses (refusal: fault) shows 0x88 until a
  // reset, also after it took a command no state refuses (a stop, a no-op in FAULT): that 0x88
  // is an earlier command's refusal, and the image is judged by its state.
  if (readback.faultCode === ILLEGAL_TRANSITION_FAULT && echoes && refusable(profile, action)) {
    return { kind: 'controller-rejected' };
  }
  if (readback.state === profile.faultState) {
    if (expect.confirm.includes(profile.faultState)) return { kind: 'confirmed' };
    return {
      kind: 'fault',
      faultCode: readback.faultCode === null ? null : formatFaultCode(readback.faultCode),
    };
  }
  if (meetsExpectation(profile, readback, expect)) return { kind: 'confirmed' };
  if (profile.transitional.includes(readback.state)) {
    return { kind: 'pending', reason: `travelling (${readback.state})` };
  }
  return { kind: 'wrong-state' };
}
