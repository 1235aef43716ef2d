/**
 * Fault injection: the fault kinds, their parameters (one zod schema serves the typed API and
 * the HTTP control API), and the bookkeeping that decides what a request suffers.
 *
 * Process faults act on the controller program (stuck travel, position sensor, frozen image,
 * held handshake) or on the device (a limit-switch valve's drive trip). Link faults act on requests at the protocol front end (latency, a stall
 * until released, dropped replies, connection resets, Modbus exceptions, OPC UA Bad status). A device fault applies to
 * requests that touch the device; a PLC fault applies to every device and request of that PLC.
 */
import { z } from 'zod';
import type { TimeSource } from './clock.js';
import { InvalidFaultError, UnknownFaultError } from './errors.js';
import { zodIssues } from './zod-issues.js';

/** Which requests a link fault hits: reads, writes or both. */
export const directionSchema = z.enum(['read', 'write', 'both']).default('both');
export type Direction = 'read' | 'write';

const count = z
  .int()
  .min(1)
  .max(1_000_000)
  .optional()
  .describe('how many requests the fault hits before it clears itself; absent: until cleared');

const faultSchemas = {
  'stuck-travel': z.strictObject({ kind: z.literal('stuck-travel') }),
  'position-sensor': z.strictObject({ kind: z.literal('position-sensor') }),
  frozen: z.strictObject({ kind: z.literal('frozen') }),
  'drive-trip': z.strictObject({ kind: z.literal('drive-trip') }),
  hold: z.strictObject({
    kind: z.literal('hold'),
    ms: z
      .int()
      .min(1)
      .max(3_600_000)
      .optional()
      .describe('clears itself this long after it was set (time source); absent: until cleared'),
  }),
  latency: z.strictObject({
    kind: z.literal('latency'),
    ms: z.int().min(0).max(600_000),
    on: directionSchema,
    when: z
      .enum(['before', 'after'])
      .default('after')
      .describe('before: held on the link, then applied; after: applied, then the reply held'),
  }),
  stall: z.strictObject({
    kind: z.literal('stall'),
    on: directionSchema,
    count: count.describe(
      'how many requests it catches; the later ones pass, the caught ones stay held until the fault is cleared; absent: every one until cleared',
    ),
  }),
  drop: z.strictObject({
    kind: z.literal('drop'),
    on: directionSchema,
    count,
    probability: z.number().gt(0).max(1).optional(),
  }),
  reset: z.strictObject({
    kind: z.literal('reset'),
    when: z.enum(['before', 'after']),
    on: directionSchema,
    count,
  }),
  exception: z.strictObject({
    kind: z.literal('exception'),
    code: z.int().min(1).max(255),
    on: directionSchema,
    count,
    when: z
      .enum(['before', 'after'])
      .default('before')
      .describe(
        'before: refused, not applied; after: applied, then the exception answered (a gateway whose target took the request but whose reply was lost: 0x0B)',
      ),
  }),
  'bad-status': z.strictObject({
    kind: z.literal('bad-status'),
    status: z
      .string()
      .regex(
        /^(Bad|Uncertain|Good)[A-Za-z0-9]*$/,
        'an OPC UA StatusCodes name (Bad; Uncertain or Good with when: after)',
      )
      .default('BadDeviceFailure'),
    on: directionSchema,
    count,
    when: z
      .enum(['before', 'after'])
      .default('before')
      .describe(
        'before: refused, not applied; after: applied, then answered with the status (a server whose field device took the write but whose answer timed out: BadTimeout)',
      ),
    node: z
      .string()
      .regex(/^[A-Za-z]+$/, 'a variable name such as CommandSeq')
      .optional()
      .describe('only this variable of each device: requests without it are not hit'),
    service: z
      .boolean()
      .default(false)
      .describe(
        'the whole request answered with a ServiceFault carrying the status (the Service itself failed), as servers answer BadServerTooBusy or BadTooManyOperations, instead of a status per node; Bad only',
      ),
  }),
  clock: z.strictObject({
    kind: z.literal('clock'),
    offsetMs: z.number().default(0),
    driftPpm: z.number().min(-1_000_000).max(1_000_000).default(0),
  }),
} as const;

export type FaultKind = keyof typeof faultSchemas;
export type Fault = z.output<(typeof faultSchemas)[FaultKind]>;
export type FaultInput = z.input<(typeof faultSchemas)[FaultKind]>;
export type FaultOf<K extends FaultKind> = z.output<(typeof faultSchemas)[K]>;

export const FAULT_KINDS = Object.keys(faultSchemas) as FaultKind[];
export const DEVICE_FAULT_KINDS: readonly FaultKind[] = FAULT_KINDS.filter((k) => k !== 'clock');
export const PLC_FAULT_KINDS: readonly FaultKind[] = FAULT_KINDS;

export type LinkFaultKind = 'latency' | 'drop' | 'reset' | 'exception' | 'bad-status';

export function isFaultKind(kind: string): kind is FaultKind {
  return Object.hasOwn(faultSchemas, kind);
}

/** Validates fault parameters (from the typed API or an HTTP body) and fills defaults. */
export function parseFault(kind: string, params: unknown, target: string): Fault {
  if (!isFaultKind(kind)) throw new UnknownFaultError(kind, target);
  const body: unknown = params ?? {};
  if (typeof body !== 'object' || Array.isArray(body) || body === null) {
    throw new InvalidFaultError(kind, [{ path: '', message: 'expected a JSON object' }]);
  }
  const result = faultSchemas[kind].safeParse({ ...body, kind });
  if (!result.success) throw new InvalidFaultError(kind, zodIssues(result.error));
  return result.data;
}

/**
 * An active fault as reported by the control API: `remaining` requests for a `count`,
 * `remainingMs` for a fault that clears itself after a time.
 */
export type ActiveFault = Fault & { remaining?: number; remainingMs?: number };

interface Entry {
  fault: Fault;
  /** Requests still to hit; undefined: until cleared. */
  remaining: number | undefined;
  /** Time-source reading at which the fault clears itself; undefined: until cleared. */
  expiresAt: number | undefined;
}

/** What a `stall` caught waits on: released when the fault is cleared. */
interface Stall {
  readonly released: Promise<void>;
  readonly release: () => void;
}

function newStall(): Stall {
  let release = (): void => undefined;
  const released = new Promise<void>((resolve) => {
    release = resolve;
  });
  return { released, release };
}

/** How long a fault lasts before it clears itself, if it does (`hold` with `ms`). */
function lifetimeMs(fault: Fault): number | undefined {
  return fault.kind === 'hold' ? fault.ms : undefined;
}

/**
 * The faults active on one device or one PLC. Faults with a lifetime expire against the time
 * source, checked whenever the set is consulted: no timer, so manual time steps them exactly.
 */
export class FaultSet {
  readonly #entries = new Map<FaultKind, Entry>();
  readonly #time: TimeSource;
  /** Set with the `stall` fault; what it caught is released when the fault is cleared. */
  #stall: Stall | undefined;

  constructor(time: TimeSource) {
    this.#time = time;
  }

  set(fault: Fault): void {
    const remaining = 'count' in fault ? fault.count : undefined;
    const lifetime = lifetimeMs(fault);
    const expiresAt = lifetime === undefined ? undefined : this.#time.now() + lifetime;
    this.#entries.set(fault.kind, { fault, remaining, expiresAt });
    // Set again (other parameters), a stall keeps what it caught held: only clearing releases.
    if (fault.kind === 'stall') this.#stall ??= newStall();
  }

  clear(kind: FaultKind): boolean {
    this.#expire();
    if (kind === 'stall') this.#releaseStall();
    return this.#entries.delete(kind);
  }

  clearAll(): void {
    this.#releaseStall();
    this.#entries.clear();
  }

  #releaseStall(): void {
    this.#stall?.release();
    this.#stall = undefined;
  }

  has(kind: FaultKind): boolean {
    this.#expire();
    return this.#entries.has(kind);
  }

  get<K extends FaultKind>(kind: K): FaultOf<K> | undefined {
    this.#expire();
    return this.#entries.get(kind)?.fault as FaultOf<K> | undefined;
  }

  list(): ActiveFault[] {
    this.#expire();
    const now = this.#time.now();
    return [...this.#entries.values()].map(({ fault, remaining, expiresAt }) => ({
      ...fault,
      ...(remaining === undefined ? {} : { remaining }),
      ...(expiresAt === undefined ? {} : { remainingMs: expiresAt - now }),
    }));
  }

  #expire(): void {
    const now = this.#time.now();
    for (const [kind, entry] of this.#entries) {
      if (entry.expiresAt !== undefined && now >= entry.expiresAt) this.#entries.delete(kind);
    }
  }

  /**
   * Whether a link fault hits a request going this direction. A hit uses up one of the
   * fault's count; the fault clears itself when none is left.
   */
  hit<K extends LinkFaultKind>(
    kind: K,
    direction: Direction,
    random: () => number,
  ): FaultOf<K> | undefined {
    this.#expire();
    const entry = this.#entries.get(kind);
    if (entry === undefined) return undefined;
    const fault = entry.fault as FaultOf<K>;
    if (fault.on !== 'both' && fault.on !== direction) return undefined;
    if (
      'probability' in fault &&
      fault.probability !== undefined &&
      random() >= fault.probability
    ) {
      return undefined;
    }
    if (entry.remaining !== undefined) {
      entry.remaining -= 1;
      if (entry.remaining <= 0) this.#entries.delete(kind);
    }
    return fault;
  }

  /**
   * Whether a `stall` catches a request going this direction: what to hold it on the link
   * until (the fault cleared). A catch uses up one of the fault's count; when none is left the
   * fault catches no more but stays set (`remaining: 0`), as what it caught is released only
   * when it is cleared.
   */
  stalled(direction: Direction): Promise<void> | undefined {
    const entry = this.#entries.get('stall');
    if (entry === undefined || this.#stall === undefined) return undefined;
    const fault = entry.fault as FaultOf<'stall'>;
    if (fault.on !== 'both' && fault.on !== direction) return undefined;
    if (entry.remaining !== undefined) {
      if (entry.remaining <= 0) return undefined;
      entry.remaining -= 1;
    }
    return this.#stall.released;
  }

  /** Latency does not wear out; the largest applicable one of each `when` wins. */
  latency(direction: Direction, when: 'before' | 'after'): number {
    const fault = this.get('latency');
    if (fault === undefined || (fault.on !== 'both' && fault.on !== direction)) return 0;
    return fault.when === when ? fault.ms : 0;
  }
}

/** What the link layer does with one request, decided before it is processed. */
export interface LinkPlan {
  /** Destroy the connection instead of processing the request. */
  resetBefore: boolean;
  /**
   * Refuse the request: a Modbus exception code or an OPC UA Bad status name. `applied`: the
   * request is applied all the same, and the exception answered instead of its reply.
   */
  refuse: { exception?: number; badStatus?: string; applied?: boolean } | undefined;
  /**
   * Delay on the link before the request reaches the PLC (latency `when: before`). The
   * request is applied when it ends, whatever became of the client's connection meanwhile.
   */
  latencyBeforeMs: number;
  /**
   * Held on the link (after `latencyBeforeMs`) until this settles: a `stall` caught it, and it
   * goes on when the stall is cleared, applied then as a request held by latency `before` is.
   */
  stalledUntil: Promise<void> | undefined;
  /** Delay between processing and the reply (latency `when: after`). */
  latencyMs: number;
  /** Process the request but never reply. */
  drop: boolean;
  /** Process the request, then destroy the connection instead of replying. */
  resetAfter: boolean;
}

/**
 * Decides a request's fate from the fault sets it touches (the devices it addresses, then the
 * PLC). Each kind is taken from the first set that has it, so a device fault and a PLC fault
 * of the same kind do not both wear down on one request.
 */
export function planRequest(
  sets: readonly FaultSet[],
  direction: Direction,
  random: () => number,
  refusal: 'exception' | 'bad-status' | undefined,
): LinkPlan {
  const first = <K extends LinkFaultKind>(kind: K): FaultOf<K> | undefined => {
    for (const set of sets) {
      const fault = set.hit(kind, direction, random);
      if (fault !== undefined) return fault;
    }
    return undefined;
  };
  const plan: LinkPlan = {
    resetBefore: false,
    refuse: undefined,
    latencyBeforeMs: 0,
    stalledUntil: undefined,
    latencyMs: 0,
    drop: false,
    resetAfter: false,
  };
  const resetSets = sets.filter((set) => set.get('reset')?.when === 'before');
  if (resetSets.some((set) => set.hit('reset', direction, random) !== undefined)) {
    plan.resetBefore = true;
    return plan;
  }
  for (const set of sets) {
    plan.stalledUntil = set.stalled(direction);
    if (plan.stalledUntil !== undefined) break;
  }
  if (refusal === 'exception') {
    const fault = first('exception');
    if (fault !== undefined) {
      plan.refuse = { exception: fault.code, applied: fault.when === 'after' };
    }
  } else if (refusal === 'bad-status') {
    const fault = first('bad-status');
    if (fault !== undefined) plan.refuse = { badStatus: fault.status };
  }
  plan.latencyBeforeMs = Math.max(0, ...sets.map((set) => set.latency(direction, 'before')));
  plan.latencyMs = Math.max(0, ...sets.map((set) => set.latency(direction, 'after')));
  if (plan.refuse !== undefined) return plan;
  plan.drop = first('drop') !== undefined;
  if (plan.drop) return plan;
  const afterSets = sets.filter((set) => set.get('reset')?.when === 'after');
  plan.resetAfter = afterSets.some((set) => set.hit('reset', direction, random) !== undefined);
  return plan;
}
