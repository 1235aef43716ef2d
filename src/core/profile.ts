import { z } from 'zod';
import { MAX_TIMER_MESSAGE, MAX_TIMER_MS } from './clock.js';
import { ACTIONS, MAX_TTL_MS, type Action } from './command.js';
import { ProfileError } from './errors.js';
import { checkModbusMap, modbusMapSchema } from './profile-modbus.js';

/**
 * A device profile: the controller's state machine as data (SPEC §3), its timings, and the
 * register map / node names its drivers use. The format is described in docs/device-profiles.md.
 */

const cellSchema = z.discriminatedUnion('effect', [
  z.strictObject({
    effect: z.literal('write'),
    next: z.string().min(1),
    confirm: z.array(z.string().min(1)).min(1),
  }),
  z.strictObject({ effect: z.literal('noop'), confirm: z.array(z.string().min(1)).min(1) }),
  z.strictObject({
    effect: z.literal('reject'),
    code: z.enum(['ILLEGAL_TRANSITION', 'LOCAL_MODE']),
  }),
]);

/** A duration that reaches a timer (a sleep, a timeout): MAX_TIMER_MS at most. */
const timerMs = () => z.number().int().max(MAX_TIMER_MS, { error: MAX_TIMER_MESSAGE });

const timingSchema = z.strictObject({
  /**
   * At most a day, as a command's own ttlMs (MAX_TTL_MS): journal.retentionHours is sized for
   * deadlines no further than that after a key settles. A longer default would leave a retry of
   * a purged key fresh, and it would run as a new command (I1).
   */
  defaultTtlMs: z
    .number()
    .int()
    .positive()
    .max(MAX_TTL_MS, {
      error: `at most ${String(MAX_TTL_MS)} ms (MAX_TTL_MS, a day), as a command's own ttlMs: the journal keeps a settled key for journal.retentionHours, which covers deadlines up to a day; a longer default would let a retry of a purged key run as a new command (set at most ${String(MAX_TTL_MS)})`,
    }),
  confirmTimeoutMs: timerMs().positive(),
  pollIntervalMs: timerMs().positive(),
  /**
   * The controller's scan (ms): after an acknowledged write the first readback is at once,
   * the next ones one scan apart, doubling up to pollIntervalMs.
   */
  scanMs: timerMs().positive().default(10),
  mismatchGraceMs: timerMs().nonnegative(),
  redispatchGuardMs: timerMs().nonnegative(),
  /**
   * The longest the controller keeps a command write it has acknowledged before it takes it
   * (its sequence-number echo shows it), if it ever takes it: a controller that takes each write
   * at its next scan, or refuses it, keeps it one scan; one whose command handshake waits for
   * the travel in progress keeps it as long as that travel. At most confirmTimeoutMs, which it
   * defaults to (ackedWriteBoundMs). It bounds how long a write that may have been acknowledged
   * can still be taken (previous-write.ts, earlier-write-bounds.ts): after a restart, a command
   * an earlier life dispatched cannot be proven not applied sooner than this from the journal's
   * lock. A controller that keeps an acknowledged write longer than this breaks I1.
   */
  ackedWriteTakenWithinMs: timerMs().positive().optional(),
});

/**
 * How long (ms) after acknowledging a write the controller takes it, if ever:
 * timing.ackedWriteTakenWithinMs, the confirm timeout when the profile states none.
 */
export function ackedWriteBoundMs(
  timing: Pick<ProfileTiming, 'confirmTimeoutMs' | 'ackedWriteTakenWithinMs'>,
): number {
  return timing.ackedWriteTakenWithinMs ?? timing.confirmTimeoutMs;
}

/**
 * The latest moment (monotonic ms) the controller can take an acknowledged write, if ever: a
 * stated ackedWriteTakenWithinMs counts from the controller's acknowledgement, which it gave on
 * receiving the write, before its answer came back (`ackedMono`; `sentMono` when that is not
 * known: a write acknowledged before the moment given). The confirm timeout, when the profile
 * states none, counts from the write (`sentMono`), as it always has. Counted from the sending, a
 * write that spent 450 ms on the link and was kept within a stated 1 s was still held when the
 * bound ended: a close behind it, an operator having resolved the open, was confirmed at CLOSED
 * and the controller then took the open (I2).
 */
export function ackedWriteTakenByMono(
  timing: Pick<ProfileTiming, 'confirmTimeoutMs' | 'ackedWriteTakenWithinMs'>,
  write: { readonly sentMono: number; readonly ackedMono?: number | undefined },
): number {
  return timing.ackedWriteTakenWithinMs === undefined
    ? write.sentMono + timing.confirmTimeoutMs
    : (write.ackedMono ?? write.sentMono) + timing.ackedWriteTakenWithinMs;
}

/**
 * How long (ms) after a write was sent the controller can take it, if it acknowledges it: a
 * stated ackedWriteTakenWithinMs plus the request timeout (the write reaches the controller, and
 * is acknowledged, up to its request timeout after its sending: one an earlier life had on the
 * link when it ended arrives after the next life's lock); the confirm timeout from the write
 * when the profile states none. For a write whose acknowledgement this life did not see
 * (earlier-write-bounds.ts, previous-write.ts: earlierLastWrite).
 */
export function ackedWriteSinceSendMs(
  timing: Pick<ProfileTiming, 'confirmTimeoutMs' | 'ackedWriteTakenWithinMs' | 'redispatchGuardMs'>,
  requestTimeoutMs: number | undefined,
): number {
  return timing.ackedWriteTakenWithinMs === undefined
    ? timing.confirmTimeoutMs
    : (requestTimeoutMs ?? timing.redispatchGuardMs) + timing.ackedWriteTakenWithinMs;
}

/** What ackedWriteBoundMs is, in an operator's words. */
export function ackedWriteBoundName(
  timing: Pick<ProfileTiming, 'ackedWriteTakenWithinMs'>,
): string {
  return timing.ackedWriteTakenWithinMs === undefined
    ? 'the confirm timeout'
    : "the profile's ackedWriteTakenWithinMs";
}

const profileSchema = z.strictObject({
  profile: z.string().min(1),
  description: z.string().optional(),
  states: z.array(z.string().min(1)).min(1),
  transitional: z.array(z.string().min(1)),
  faultState: z.string().min(1),
  localState: z.string().min(1),
  actions: z.array(z.enum(ACTIONS)).min(1),
  positionTolerance: z.number().positive().optional(),
  table: z.record(z.string(), z.record(z.string(), cellSchema)),
  timing: timingSchema,
  controller: z.strictObject({
    /** Required when a Modbus state register carries a code (not a bit-decoded word). */
    stateCodes: z.record(z.string(), z.number().int().nonnegative()).optional(),
    commandCodes: z.record(z.string(), z.number().int().positive()),
    faultCodes: z.record(z.string(), z.string()).optional(),
    echoesSeq: z.boolean(),
    /**
     * What the controller does with a command that is illegal in its state: `keep` latches
     * fault 0x88 and stays in its state; `fault` latches 0x88 and goes to its fault state.
     */
    refusal: z.enum(['keep', 'fault']).default('keep'),
  }),
  modbus: modbusMapSchema.optional(),
  opcua: z
    .strictObject({
      status: z.strictObject({
        state: z.string().min(1),
        position: z.string().min(1).optional(),
        fault: z.string().min(1).optional(),
        seqEcho: z.string().min(1).optional(),
        /**
         * A DateTime the controller sets at every scan that publishes the image: the image's
         * production time. Without it, the newest SourceTimestamp stands in — the last change,
         * which cannot tell a fresh image of an idle device from a frozen one.
         */
        time: z.string().min(1).optional(),
      }),
      command: z.strictObject({
        code: z.string().min(1),
        setpoint: z.string().min(1).optional(),
        seq: z.string().min(1).optional(),
      }),
    })
    .optional(),
});

export type ProfileData = z.infer<typeof profileSchema>;
export type TransitionCell = z.infer<typeof cellSchema>;
export type ProfileTiming = z.infer<typeof timingSchema>;

export interface DeviceProfile extends Omit<ProfileData, 'table'> {
  /** table[action][state], complete over the profile's actions and states. */
  readonly table: Readonly<Partial<Record<Action, Readonly<Record<string, TransitionCell>>>>>;
}

/**
 * Validates profile data (already parsed from YAML or JSON) and checks that the table is
 * complete: one cell for every action and state, naming only known states. Every problem is
 * reported at once.
 */
export function parseProfile(data: unknown, source: string): DeviceProfile {
  const parsed = profileSchema.safeParse(data);
  if (!parsed.success) {
    throw new ProfileError(
      source,
      parsed.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`),
    );
  }
  const p = parsed.data;
  const errors: string[] = [];
  const states = new Set(p.states);
  const known = (s: string, where: string): void => {
    if (!states.has(s)) errors.push(`${where}: unknown state "${s}"`);
  };
  p.transitional.forEach((s, i) => {
    known(s, `transitional.${i}`);
  });
  known(p.faultState, 'faultState');
  known(p.localState, 'localState');
  for (const action of p.actions) {
    const row = p.table[action];
    if (row === undefined) {
      errors.push(`table.${action}: missing row for action "${action}"`);
      continue;
    }
    for (const state of p.states) {
      // Own cells only: a state named like a member of every object (`constructor`) would
      // otherwise find that member and be taken for a cell.
      const cell = Object.hasOwn(row, state) ? row[state] : undefined;
      if (cell === undefined) {
        errors.push(`table.${action}.${state}: missing cell`);
        continue;
      }
      if (cell.effect !== 'reject') {
        cell.confirm.forEach((s, i) => {
          known(s, `table.${action}.${state}.confirm.${i}`);
        });
      }
      if (cell.effect === 'write') known(cell.next, `table.${action}.${state}.next`);
      if (state === p.localState && !(cell.effect === 'reject' && cell.code === 'LOCAL_MODE')) {
        errors.push(`table.${action}.${state}: the local state must reject with LOCAL_MODE`);
      }
    }
    for (const state of Object.keys(row)) {
      if (!states.has(state)) errors.push(`table.${action}.${state}: unknown state "${state}"`);
    }
    if (p.controller.commandCodes[action] === undefined) {
      errors.push(`controller.commandCodes.${action}: missing command code`);
    }
  }
  for (const action of Object.keys(p.table)) {
    if (!(p.actions as string[]).includes(action)) {
      errors.push(`table.${action}: action not listed in actions`);
    }
  }
  const taken = p.timing.ackedWriteTakenWithinMs;
  if (taken !== undefined && taken > p.timing.confirmTimeoutMs) {
    errors.push(
      `timing.ackedWriteTakenWithinMs: ${String(taken)} ms is longer than confirmTimeoutMs (${String(p.timing.confirmTimeoutMs)} ms): a write the controller keeps longer than the confirm timeout could be taken after its command ended; lower it to the longest the controller keeps an acknowledged write, or leave it out (the confirm timeout)`,
    );
  }
  // A controller takes a received write at a scan: one that arrives just after a scan waits a
  // whole scan. A shorter bound is one no controller of this scan keeps, and the next command
  // after a resolved write would be decided before the scan that takes it.
  if (taken !== undefined && taken < p.timing.scanMs) {
    errors.push(
      `timing.ackedWriteTakenWithinMs: ${String(taken)} ms is shorter than scanMs (${String(p.timing.scanMs)} ms): the controller takes a write it received at its next scan, up to a scan later; raise it to at least the scan, or leave it out (the confirm timeout)`,
    );
  }
  const codes = p.controller.stateCodes;
  if (codes !== undefined) {
    for (const state of p.states) {
      if (!Object.hasOwn(codes, state))
        errors.push(`controller.stateCodes.${state}: missing state code`);
    }
    for (const state of Object.keys(codes)) {
      if (!states.has(state))
        errors.push(`controller.stateCodes.${state}: unknown state "${state}"`);
    }
  }
  // One code, one meaning. Two states on one code read as the first of them (modbus-map.ts):
  // with OPEN first, a closed valve reads OPEN and an open is "confirmed" as a no-op without a
  // write (I2). Two actions on one code make the controller do the other: a close written as
  // the open's code opens the valve.
  for (const [section, table] of [
    ['stateCodes', p.controller.stateCodes ?? {}],
    ['commandCodes', p.controller.commandCodes],
  ] as const) {
    const seen = new Map<number, string>();
    for (const [name, code] of Object.entries(table)) {
      const other = seen.get(code);
      if (other === undefined) {
        seen.set(code, name);
        continue;
      }
      errors.push(
        `controller.${section}.${name}: code ${code} is also ${other}'s; the controller ${section === 'stateCodes' ? `reports each state with its own code, and ${code} would always read as ${other}` : `would take a ${name} written as ${code} for ${other}`}: give each its own code, as the controller's manual lists them`,
      );
    }
  }
  for (const action of Object.keys(p.controller.commandCodes)) {
    if (!(p.actions as string[]).includes(action)) {
      errors.push(`controller.commandCodes.${action}: action not listed in actions`);
    }
  }
  if (p.modbus !== undefined) {
    errors.push(
      ...checkModbusMap(p.modbus, {
        states: p.states,
        echoesSeq: p.controller.echoesSeq,
        hasMove: p.actions.includes('move'),
        stateCodes: codes !== undefined,
        profile: p.profile,
        commandCodes: p.controller.commandCodes,
        ...(codes === undefined ? {} : { stateCodeValues: codes }),
        ...(p.positionTolerance === undefined ? {} : { positionTolerance: p.positionTolerance }),
      }),
    );
  }
  if (p.opcua !== undefined) {
    const { status, command } = p.opcua;
    if (p.controller.echoesSeq && (status.seqEcho === undefined || command.seq === undefined)) {
      errors.push(
        'opcua: status.seqEcho and command.seq are required when controller.echoesSeq is true',
      );
    }
    if (!p.controller.echoesSeq && status.seqEcho !== undefined) {
      errors.push('opcua.status.seqEcho: mapped, but controller.echoesSeq is false');
    }
    if (
      p.actions.includes('move') &&
      (command.setpoint === undefined || status.position === undefined)
    ) {
      errors.push(
        'opcua: status.position and command.setpoint are required for a profile with the move action',
      );
    }
  }
  // Without an echo, a readback that still shows the state before the write is told from the
  // controller's answer only by time: the wrong state must outlast the scan that takes the
  // write (docs/device-profiles.md, Optional fields). A grace no longer than a scan failed a
  // command the controller was about to carry out: READBACK_MISMATCH, or DEVICE_FAULT for a
  // reset read before the scan that clears the fault.
  if (!p.controller.echoesSeq && p.timing.mismatchGraceMs <= p.timing.scanMs) {
    errors.push(
      `timing.mismatchGraceMs: ${p.timing.mismatchGraceMs} ms is not longer than timing.scanMs ${p.timing.scanMs} ms; this controller echoes no sequence numbers (controller.echoesSeq: false), so a readback still showing the state from before the write is its answer only once it has outlasted the scan that takes the write: a shorter grace fails commands the controller is about to carry out. Set mismatchGraceMs well above scanMs (with a margin for the network: the shipped limit-switch-valve has 400 ms on a 10 ms scan)`,
    );
  }
  // Without an echo, nothing tells a readback made before the scan that takes the write from
  // the controller's answer to it but the state: a write whose confirm states list the state it
  // is written from is confirmed by the first readback after the write, taken or not (I2: a
  // close written at STOPPED, confirmed at STOPPED, the valve never moved). A move is also
  // confirmed by its position, within positionTolerance of its setpoint: it may list its own.
  if (!p.controller.echoesSeq) {
    for (const action of p.actions) {
      if (action === 'move') continue;
      for (const [state, cell] of Object.entries(p.table[action] ?? {})) {
        if (cell.effect !== 'write' || !cell.confirm.includes(state)) continue;
        errors.push(
          `table.${action}.${state}.confirm: lists ${state}, the state the ${action} is written from; this controller echoes no sequence numbers (controller.echoesSeq: false), so the first readback after the write, made before the controller's scan has taken it, would show ${state} and confirm a ${action} that never took effect. List only the states the ${action} leads to (or make the cell a noop, if ${state} is already its end)`,
        );
      }
    }
  }
  if (p.actions.includes('move') && p.positionTolerance === undefined) {
    errors.push('positionTolerance: required for a profile with the move action');
  }
  // At half the range or more, one reading (50 %) lies within it of both ends: a readback would
  // confirm a move to 0 % and one to 100 % alike, and prove nothing about the move (I2).
  if (p.positionTolerance !== undefined && p.positionTolerance >= 50) {
    errors.push(
      `positionTolerance: ${String(p.positionTolerance)} % is half the range or more: a readback at 50 % would confirm a move to 0 % and to 100 % alike; set it below 50 (a few percent at most for a positioner)`,
    );
  }
  if (errors.length > 0) throw new ProfileError(source, errors);
  return p;
}
