import type { ProbeEvent } from '../trace.js';
import type { CommandSteps, Skipped, StepTime } from '../results.js';
import { distribution } from '../stats.js';

/**
 * One confirmed command of a one-at-a-time series, step by step: the daemon's probe events
 * (journal calls, Modbus requests, answers; bench/probes.ts) kept while the series ran, joined
 * with the client's send and answer times and the plant's write log. With one command in
 * flight, every journal call of the series' window belongs to it; the Modbus requests are its
 * own when they address its valve's registers (other valves are read meanwhile, by the
 * daemon's own polling). Each step ends where the next begins, so that the steps of a command
 * add up to its latency; what the daemon waits for (a round trip, a barrier, the plant) and
 * what it works (the claim, the checks) are separate steps.
 */

export interface SentCommand {
  readonly key: string;
  readonly device: string;
  readonly sentAt: number;
  readonly answeredAt: number;
  readonly confirmed: boolean;
}

export interface StepInputs {
  readonly sent: readonly SentCommand[];
  readonly events: readonly ProbeEvent[];
  /** Each valve's first register; its registers run to the next valve's, `span` registers on. */
  readonly bases: ReadonlyMap<string, number>;
  readonly span: number;
  /** The journal's sequence number of each command (by key), for the plant's write log. */
  readonly seqOf: ReadonlyMap<string, number>;
  /** Per device, per sequence number: when the scan that took the write ran (whole ms). */
  readonly taken: ReadonlyMap<string, Record<string, number>>;
}

/** The steps in order; their names are the keys of results.json and the rows of the report. */
export const STEPS = [
  'intake',
  'claim',
  'toFreshRead',
  'freshRead',
  'checks',
  'dispatchWrite',
  'dispatchBarrier',
  'toWrite',
  'write',
  'plant',
  'readbackPlacement',
  'readback',
  'settle',
  'settleBarrier',
  'answer',
] as const;
export type StepName = (typeof STEPS)[number];

/**
 * The steps in which the daemon waits for another party: the client and the intake's transport
 * (TLS and HTTP, or the broker), the PLC's round trips, the disk's fdatasync (a barrier is the
 * batch's COMMIT, a few hundredths of a millisecond, and the fdatasync) and the plant's scan. The
 * other steps are the daemon's own work and scheduling, the readback's placement among them.
 */
export const WAITS: ReadonlySet<StepName> = new Set<StepName>([
  'intake',
  'freshRead',
  'dispatchBarrier',
  'write',
  'plant',
  'readback',
  'settleBarrier',
  'answer',
]);

interface Span {
  readonly start: number;
  readonly end: number;
}

const REQUEST = /^(read|write) (?:[a-z]+ )?(\d+)\+(\d+)/;

/** The registers a Modbus request addressed, from its description (src/drivers/modbus.ts). */
function registers(what: string): { kind: 'read' | 'write'; start: number; length: number } | null {
  const m = REQUEST.exec(what);
  if (m === null) return null;
  return { kind: m[1] === 'write' ? 'write' : 'read', start: Number(m[2]), length: Number(m[3]) };
}

export function commandSteps(inputs: StepInputs): CommandSteps | Skipped {
  const events = [...inputs.events].sort((a, b) => a.start - b.start);
  const samples = new Map<StepName, number[]>(STEPS.map((s) => [s, []]));
  let joined = 0;
  /** Why the commands not followed were not: the first event of theirs that was missing. */
  const missing = new Map<string, number>();
  const miss = (what: string): void => {
    missing.set(what, (missing.get(what) ?? 0) + 1);
  };
  const latencies: number[] = [];
  const waits: number[] = [];
  const own: number[] = [];
  for (const s of inputs.sent) {
    if (!s.confirmed) continue;
    const base = inputs.bases.get(s.device);
    const seq = inputs.seqOf.get(s.key);
    const takenAt = seq === undefined ? undefined : inputs.taken.get(s.device)?.[String(seq)];
    if (base === undefined || takenAt === undefined) {
      miss(seq === undefined ? 'its journal record' : "the plant's write log entry");
      continue;
    }
    const steps = oneCommand(s, events, base, inputs.span, takenAt);
    if (typeof steps === 'string') {
      miss(steps);
      continue;
    }
    joined += 1;
    latencies.push(s.answeredAt - s.sentAt);
    let waited = 0;
    for (const name of STEPS) if (WAITS.has(name)) waited += steps[name];
    waits.push(waited);
    own.push(s.answeredAt - s.sentAt - waited);
    for (const name of STEPS) samples.get(name)?.push(steps[name]);
  }
  if (joined === 0) {
    const why = [...missing].map(([what, n]) => `${n} without ${what}`).join(', ');
    return {
      skipped: `no command of the series could be followed step by step${why === '' ? '' : ` (${why})`}`,
    };
  }
  return {
    commands: joined,
    latencyMeanMs: distribution(latencies).mean,
    waitsMs: distribution(waits),
    ownMs: distribution(own),
    steps: STEPS.map((step): StepTime => {
      const d = distribution(samples.get(step) ?? []);
      return { step, p50Ms: d.p50, meanMs: d.mean };
    }),
  };
}

/** A command's event that its window does not hold: the command is not followed. */
class NotFound extends Error {}

interface Found {
  readonly claim: ProbeEvent;
  readonly fresh: ProbeEvent;
  readonly dispatch: ProbeEvent;
  readonly dispatchBarrier: ProbeEvent;
  readonly write: ProbeEvent;
  readonly readback: ProbeEvent;
  readonly settle: ProbeEvent;
  readonly settleBarrier: ProbeEvent;
}

function oneCommand(
  s: SentCommand,
  events: readonly ProbeEvent[],
  base: number,
  span: number,
  takenAt: number,
): Record<StepName, number> | string {
  const window = events.filter((e) => e.start >= s.sentAt && e.start <= s.answeredAt);
  const own = (kind: 'read' | 'write') => (e: ProbeEvent) => {
    const r = e.modbus === undefined ? null : registers(e.modbus);
    return r !== null && r.kind === kind && r.start < base + span && r.start + r.length > base;
  };
  const journal = (name: string) => (e: ProbeEvent) => e.journal === name;
  const after = (at: number, match: (e: ProbeEvent) => boolean): ProbeEvent | undefined =>
    window.find((e) => e.start >= at && match(e));

  const found = (e: ProbeEvent | undefined, what: string): ProbeEvent => {
    if (e === undefined) throw new NotFound(what);
    return e;
  };
  try {
    const claim = found(after(s.sentAt, journal('claim')), 'a claim');
    const fresh = found(after(claim.start, own('read')), 'a fresh read');
    const dispatch = found(after(fresh.end, journal('markDispatched')), 'a dispatch');
    // The barrier the write waits for: the journal's durable() called once the dispatch is written.
    const dispatchBarrier = found(after(dispatch.end, journal('durable')), 'a dispatch barrier');
    const write = found(after(dispatchBarrier.start, own('write')), 'a write');
    const settle = found(after(write.end, journal('settle')), 'a settlement');
    // The readback that confirmed: the valve's last read before the settlement.
    const readback = found(
      window.filter((e) => own('read')(e) && e.start >= write.end && e.end <= settle.start).at(-1),
      'a readback',
    );
    const settleBarrier = found(after(settle.end, journal('durable')), 'a settle barrier');
    return stepsOf(s, takenAt, {
      claim,
      fresh,
      dispatch,
      dispatchBarrier,
      write,
      readback,
      settle,
      settleBarrier,
    });
  } catch (error) {
    if (error instanceof NotFound) return `${error.message} in its window`;
    throw error;
  }
}

function stepsOf(s: SentCommand, takenAt: number, f: Found): Record<StepName, number> | string {
  const { claim, fresh, dispatch, dispatchBarrier, write, readback, settle, settleBarrier } = f;
  // The plant stamps whole milliseconds: the scan ran within [takenAt, takenAt + 1).
  const taken = takenAt + 0.5;
  const spans: Span[] = [claim, fresh, dispatch, dispatchBarrier, write, readback, settle];
  if (spans.some((x) => x.end < x.start)) return 'events in order';
  return {
    intake: claim.start - s.sentAt,
    claim: claim.end - claim.start,
    toFreshRead: fresh.start - claim.end,
    freshRead: fresh.end - fresh.start,
    checks: dispatch.start - fresh.end,
    dispatchWrite: dispatch.end - dispatch.start,
    dispatchBarrier: dispatchBarrier.end - dispatch.end,
    toWrite: write.start - dispatchBarrier.end,
    write: write.end - write.start,
    plant: taken - write.end,
    readbackPlacement: readback.start - taken,
    readback: readback.end - readback.start,
    settle: settle.end - readback.end,
    settleBarrier: settleBarrier.end - settle.end,
    answer: s.answeredAt - settleBarrier.end,
  };
}
