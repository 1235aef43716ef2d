import type { Action, RejectCode } from './command.js';
import type { DeviceProfile } from './profile.js';

/** What the mirrored state machine says about one command in one controller state. */
export type Decision =
  | { readonly kind: 'write'; readonly next: string; readonly confirm: readonly string[] }
  | { readonly kind: 'noop'; readonly confirm: readonly string[] }
  | {
      readonly kind: 'reject';
      readonly code: Extract<RejectCode, 'ILLEGAL_TRANSITION' | 'LOCAL_MODE'>;
      /** `0x88` for an illegal transition, as the controller itself would raise it. */
      readonly faultCode: '0x88' | null;
    };

/** The fault code the controllers raise for an illegal state transition (SPEC §3). */
export const ILLEGAL_TRANSITION_FAULT = 0x88;

export function formatFaultCode(code: number): string {
  return `0x${code.toString(16).padStart(2, '0')}`;
}

/**
 * The one transition function: (mirrored state, action) → write | no-op | reject, with the
 * states that confirm the command. Pure; the table is data in the device profile. An action
 * the profile does not have, or a state it does not know, is an illegal transition: the bridge
 * never writes what it cannot check.
 */
export function decide(profile: DeviceProfile, state: string, action: Action): Decision {
  // The profile's own cells only: a state read from a controller (an OPC UA server may report
  // any string) named like a member every object inherits (`constructor`) is unknown too.
  const row = Object.hasOwn(profile.table, action) ? profile.table[action] : undefined;
  const cell = row !== undefined && Object.hasOwn(row, state) ? row[state] : undefined;
  if (cell === undefined) {
    return { kind: 'reject', code: 'ILLEGAL_TRANSITION', faultCode: '0x88' };
  }
  switch (cell.effect) {
    case 'write':
      return { kind: 'write', next: cell.next, confirm: cell.confirm };
    case 'noop':
      return { kind: 'noop', confirm: cell.confirm };
    case 'reject':
      return {
        kind: 'reject',
        code: cell.code,
        faultCode: cell.code === 'ILLEGAL_TRANSITION' ? '0x88' : null,
      };
  }
}

/**
 * A stop's decision when a write of another command (`action`, decided on `from`) may still be
 * taken before it — the controller takes writes in arrival order — and the device shows
 * `before`: `decision` (the table's, on `before`), made a write when a stop would be one from
 * the state that write leads to, and confirmed by any state a stop leaves the device in from
 * either (preemption.ts, a stop over a preempted write; previous-write.ts, a stop behind a write
 * of a command that ended with its fate open). `decision` when a stop would be no write from
 * there either.
 */
export function stopBehindWrite(
  profile: DeviceProfile,
  from: string,
  action: Action,
  before: string,
  decision: Decision,
): Decision {
  const written = decide(profile, from, action);
  if (written.kind !== 'write') return decision;
  const expected = decide(profile, written.next, 'stop');
  if (expected.kind !== 'write') return decision;
  const confirm = new Set<string>(expected.confirm);
  if (decision.kind === 'write') for (const c of decision.confirm) confirm.add(c);
  for (const state of [before, ...written.confirm]) {
    const cell = decide(profile, state, 'stop');
    if (cell.kind !== 'reject') for (const c of cell.confirm) confirm.add(c);
  }
  return { kind: 'write', next: expected.next, confirm: [...confirm] };
}
