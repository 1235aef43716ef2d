import { describe, expect, it } from 'vitest';
import { commandSteps, STEPS } from '../../bench/phases/steps.js';
import type { CommandSteps } from '../../bench/results.js';
import { isSkipped } from '../../bench/results.js';
import type { ProbeEvent } from '../../bench/trace.js';

/**
 * The bench's step-by-step table joins the daemon's probe events with the client's times and
 * the plant's write log (bench/phases/steps.ts). Its rule for which events are a command's own
 * decides every figure, so it is checked here on a timeline written out by hand: a command of
 * valve-000 (registers 1000..1015) while the daemon polls valve-001 (1016..).
 */

const at = (start: number, end: number, e: Omit<ProbeEvent, 'start' | 'end'>): ProbeEvent => ({
  ...e,
  start: 1_000_000 + start,
  end: 1_000_000 + end,
});

const timeline: ProbeEvent[] = [
  at(1.0, 1.3, { journal: 'claim' }),
  // Another valve's poll: not this command's fresh read.
  at(1.35, 1.45, { modbus: 'read 1016+8', jobs: 1 }),
  at(1.5, 2.0, { modbus: 'read 1000+8', jobs: 1 }),
  at(2.1, 2.3, { journal: 'markDispatched' }),
  at(2.3, 3.3, { journal: 'durable' }),
  // Another valve's write, sent first: not this command's.
  at(3.32, 3.38, { modbus: 'write 1026+3', jobs: 1 }),
  at(3.4, 3.8, { modbus: 'write 1010+3', jobs: 1 }),
  // A readback placed before the taking scan, then the one that confirmed (combined).
  at(4.0, 4.2, { modbus: 'read 1000+8', jobs: 1 }),
  at(8.6, 8.9, { modbus: 'read 984+40 (3 reads combined)', jobs: 3 }),
  at(9.0, 9.3, { journal: 'settle' }),
  at(9.3, 10.5, { journal: 'durable' }),
  at(10.6, 10.7, { http: 'end 200' }),
];

const inputs = {
  sent: [
    {
      key: 'k1',
      device: 'valve-000',
      sentAt: 1_000_000,
      answeredAt: 1_000_011,
      confirmed: true,
    },
  ],
  events: [...timeline].reverse(),
  bases: new Map([
    ['valve-000', 1000],
    ['valve-001', 1016],
  ]),
  span: 16,
  seqOf: new Map([['k1', 7]]),
  // The scan that took seq 7 ran within millisecond 1_000_008.
  taken: new Map([['valve-000', { '7': 1_000_008 }]]),
};

function followed(result: ReturnType<typeof commandSteps>): CommandSteps {
  if (isSkipped(result)) throw new Error(result.skipped);
  return result;
}

describe('bench: a command step by step', () => {
  it('takes the valve’s own requests and journal calls, and the steps add up to the latency', () => {
    const result = followed(commandSteps(inputs));
    const ms = Object.fromEntries(result.steps.map((s) => [s.step, s.meanMs]));
    expect(result.steps.map((s) => s.step)).toEqual([...STEPS]);
    const expected: Record<string, number> = {
      intake: 1.0,
      claim: 0.3,
      toFreshRead: 0.2,
      freshRead: 0.5,
      checks: 0.1,
      dispatchWrite: 0.2,
      dispatchBarrier: 1.0,
      toWrite: 0.1,
      write: 0.4,
      plant: 4.7,
      readbackPlacement: 0.1,
      readback: 0.3,
      settle: 0.4,
      settleBarrier: 1.2,
      answer: 0.5,
    };
    for (const [step, value] of Object.entries(expected)) {
      expect(ms[step], step).toBeCloseTo(value, 6);
    }
    expect(result.commands).toBe(1);
    expect(result.latencyMeanMs).toBe(11);
    // Waits: intake 1.0, fresh read 0.5, barriers 1.0 + 1.2, write 0.4, plant 4.7, readback 0.3,
    // answer 0.5; the rest is the daemon's own.
    expect(result.waitsMs.p50).toBeCloseTo(9.6, 6);
    expect(result.ownMs.p50).toBeCloseTo(1.4, 6);
  });

  it('leaves out a command it cannot follow to its answer, and says so when none is left', () => {
    const noSettle = timeline.filter((e) => e.journal !== 'settle');
    const result = commandSteps({ ...inputs, events: noSettle });
    expect(isSkipped(result)).toBe(true);
    const other = commandSteps({ ...inputs, bases: new Map([['valve-000', 2000]]) });
    expect(isSkipped(other)).toBe(true);
  });
});
