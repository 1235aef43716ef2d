import { describe, expect, it } from 'vitest';
import { estimateSkew, type SkewEstimate, type TimedReadback } from '../../src/core/skew.js';
import { judgeWritten, predatesWrite } from '../../src/core/readback.js';
import { profile } from '../helpers/fixtures.js';

const valve = profile('valve');
const actuator = profile('actuator');
const WRITE = 1_000_000;

const skewOf = (offsetMs: number, uncertaintyMs: number): SkewEstimate => ({
  offsetMs,
  monoOffsetMs: offsetMs,
  uncertaintyMs,
  measuredAt: WRITE - 10,
  measuredMono: WRITE - 10,
  epoch: 1,
  stamp: { monoOffsetMs: offsetMs, uncertaintyMs: uncertaintyMs + 0.5 },
});

function rb(over: Partial<TimedReadback>): TimedReadback {
  const requestedAt = over.requestedAt ?? WRITE + 60;
  return {
    state: 'OPEN',
    position: 100,
    seq: 7,
    faultCode: null,
    sourceTime: WRITE + 50,
    requestedAt: WRITE + 60,
    receivedAt: WRITE + 62,
    requestedMono: requestedAt,
    receivedMono: requestedAt + 2,
    epoch: 1,
    ...over,
  };
}

const judge = (
  readback: TimedReadback,
  p = valve,
  confirm = ['OPEN'],
  position: number | null = null,
) =>
  judgeWritten({
    profile: p,
    action: 'open',
    readback,
    expect: { confirm, position },
    seq: 7,
    writeSentMono: WRITE,
    skew: skewOf(0, 2),
  });

describe('judgeWritten (I2)', () => {
  it('confirms a post-write readback with the echo and the target state', () => {
    expect(judge(rb({}))).toEqual({ kind: 'confirmed' });
  });
  it('never confirms a readback requested before the write', () => {
    expect(judge(rb({ requestedAt: WRITE - 1 })).kind).toBe('pending');
  });
  it('never confirms without this command’s echoed sequence number', () => {
    expect(judge(rb({ seq: 6 }))).toEqual({ kind: 'not-taken' });
  });
  it('never confirms a readback whose source time predates the write', () => {
    // Echoing this command with a time before the write: the controller clock stepped back.
    expect(judge(rb({ sourceTime: WRITE - 10 }))).toEqual({ kind: 'skew-contradicted' });
    const quiet = { ...valve, controller: { ...valve.controller, echoesSeq: false } };
    expect(judge(rb({ sourceTime: WRITE - 10, sourceIsScan: true }), quiet)).toMatchObject({
      kind: 'pending',
    });
    // Only the last change (no scan time): an image taken after a write that changed no value
    // shows it too; the read order decides (test/core/readback-no-scan-time.test.ts).
    expect(judge(rb({ sourceTime: WRITE - 10 }), quiet)).toEqual({ kind: 'confirmed' });
  });
  it('treats the controller’s own 0x88 with this echo as its refusal', () => {
    expect(judge(rb({ state: 'CLOSING', faultCode: 0x88 }))).toEqual({
      kind: 'controller-rejected',
    });
  });
  it('takes 0x88 with this echo for no refusal of a command no state refuses (a stop)', () => {
    const stop = judgeWritten({
      profile: valve,
      action: 'stop',
      readback: rb({ state: 'FAULT', faultCode: 0x88 }),
      expect: { confirm: ['STOPPED', 'OPEN'], position: null },
      seq: 7,
      writeSentMono: WRITE,
      skew: skewOf(0, 2),
    });
    expect(stop).toEqual({ kind: 'fault', faultCode: '0x88' });
  });
  it('reports a controller fault with its code', () => {
    expect(judge(rb({ state: 'FAULT', faultCode: 0x81 }))).toEqual({
      kind: 'fault',
      faultCode: '0x81',
    });
  });
  it('keeps waiting while travelling, and calls a settled other state wrong', () => {
    expect(judge(rb({ state: 'OPENING' })).kind).toBe('pending');
    expect(judge(rb({ state: 'STOPPED' })).kind).toBe('wrong-state');
  });
  it('calls a readback in the local state LOCAL before anything else, with what the echo says', () => {
    expect(judge(rb({ state: 'LOCAL', position: 0 }))).toEqual({ kind: 'local', echo: 'this' });
    expect(judge(rb({ state: 'LOCAL', seq: 6 }))).toEqual({ kind: 'local', echo: 'other' });
    // A latch an earlier refusal left survives LOCAL: it is not this command's refusal.
    expect(judge(rb({ state: 'LOCAL', faultCode: 0x88 }))).toEqual({ kind: 'local', echo: 'this' });
    const quiet = { ...valve, controller: { ...valve.controller, echoesSeq: false } };
    expect(judge(rb({ state: 'LOCAL', seq: null }), quiet)).toEqual({
      kind: 'local',
      echo: 'none',
    });
    expect(judge(rb({ state: 'LOCAL', seq: null, sourceTime: WRITE - 10 }), quiet)).toEqual({
      kind: 'local',
      echo: 'none',
    });
    // Still never judged on a readback requested before the write.
    expect(judge(rb({ state: 'LOCAL', requestedAt: WRITE - 1 })).kind).toBe('pending');
  });
  it('confirms a move only within the position tolerance', () => {
    const at = (position: number) => judge(rb({ state: 'IDLE', position }), actuator, ['IDLE'], 40);
    expect(at(40.9).kind).toBe('confirmed');
    expect(at(41.5).kind).toBe('wrong-state');
  });
});

describe('predatesWrite (SPEC §6 readback freshness)', () => {
  it('corrects the controller time by the measured skew', () => {
    // The controller runs 10 s behind the gateway.
    const skew = estimateSkew({
      controllerTime: WRITE - 10_000,
      requestedAt: WRITE - 4,
      receivedAt: WRITE,
    });
    expect(skew.offsetMs).toBe(-9_998);
    expect(skew.uncertaintyMs).toBe(2);
    expect(predatesWrite(rb({ sourceTime: WRITE - 10_000 + 200 }), WRITE + 100, skew)).toBe(false);
    expect(predatesWrite(rb({ sourceTime: WRITE - 10_000 + 50 }), WRITE + 100, skew)).toBe(true);
  });
  it('allows for the uncertainty of the estimate, and judges nothing without one', () => {
    const skew = skewOf(0, 5);
    expect(predatesWrite(rb({ sourceTime: WRITE - 4 }), WRITE, skew)).toBe(false);
    expect(predatesWrite(rb({ sourceTime: WRITE - 6 }), WRITE, skew)).toBe(true);
    expect(predatesWrite(rb({ sourceTime: WRITE - 1e6 }), WRITE, null)).toBe(false);
  });
});
