import { afterEach, describe, expect, it } from 'vitest';
import { fingerprint, parseCommandRequest } from '../../src/core/command.js';
import type { CommandRecord, Observation } from '../../src/core/journal.js';
import { Harness } from '../helpers/pipeline-harness.js';

let h: Harness;
afterEach(async () => {
  await h.close();
});

const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

async function until(cond: () => boolean, timeoutMs = 3_000): Promise<void> {
  const end = Date.now() + timeoutMs;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not reached');
    await sleep(2);
  }
}

/**
 * Journals a command the way the pipeline does up to `dispatched`, without sending the write:
 * the state a crash between the dispatch commit and the write leaves behind.
 */
function dispatchedNotWritten(key: string, ttlMs = 30_000, attempts = 1): CommandRecord {
  const request = parseCommandRequest({ device: 'v1', action: 'open', ttlMs });
  const now = Date.now();
  const claim = h.journal.claim({
    scope: 'plant',
    key,
    fingerprint: fingerprint(request),
    device: 'v1',
    action: 'open',
    position: null,
    issuedAt: now,
    issuedAtSource: 'gateway',
    ttlMs,
    deadline: now + ttlMs,
    intake: 'https',
    acceptedAt: now,
  });
  const before: Observation = {
    state: 'CLOSED',
    position: 0,
    seq: 0,
    faultCode: null,
    sourceTime: null,
    readAt: new Date(now).toISOString(),
  };
  let rec = h.journal.markDispatched(claim.record, now, before, 'pipeline');
  if (attempts === 2) rec = h.journal.markRedispatched(rec, now, 'earlier life', 'pipeline');
  return rec;
}

function notes(key: string): string[] {
  return h.journal.history({ scope: 'plant', key }).map((e) => e.detail);
}

describe('recovery at start (I5): settled by reading the controller, never a blind re-write', () => {
  it('confirms a command whose write was taken before the crash', async () => {
    h = new Harness({ travelMs: 150 });
    h.submit('k1', { device: 'v1', action: 'open' });
    await until(() => h.double('v1').writes.length === 1);
    await h.crash();
    expect(h.restart()).toBe(1);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.double('v1').writes).toHaveLength(1);
  });

  it('dispatches once more a command provably never written, before its deadline', async () => {
    h = new Harness();
    dispatchedNotWritten('k1');
    await h.crash();
    h.restart();
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 2, seq: 1 });
    expect(h.double('v1').writes).toHaveLength(1);
    expect(notes('k1').some((n) => n.startsWith('recovery: sequence number 1 not echoed'))).toBe(
      true,
    );
  });

  it('leaves open, unwritten, a command not written whose deadline has passed', async () => {
    h = new Harness();
    dispatchedNotWritten('k1', 50);
    await h.crash();
    await sleep(80);
    h.restart();
    await until(() => notes('k1').some((n) => n.includes('its deadline has passed')));
    expect(h.get('k1')?.state).toBe('dispatched');
    expect(h.double('v1').writes).toHaveLength(0);
  });

  it('leaves open a command the controller did not echo when the device has moved', async () => {
    h = new Harness();
    dispatchedNotWritten('k1');
    const d = h.double('v1');
    d.state = 'OPEN';
    d.position = 100;
    await h.crash();
    h.restart();
    await until(() => notes('k1').some((n) => n.includes('moved from CLOSED to OPEN')));
    expect(h.get('k1')?.state).toBe('dispatched');
    expect(d.writes).toHaveLength(0);
  });

  it('never dispatches a third time', async () => {
    h = new Harness();
    dispatchedNotWritten('k1', 30_000, 2);
    await h.crash();
    h.restart();
    await until(() => notes('k1').some((n) => n.includes('already dispatched twice')));
    expect(h.get('k1')?.state).toBe('dispatched');
    expect(h.double('v1').writes).toHaveLength(0);
  });

  it('leaves open a command whose device cannot be read', async () => {
    h = new Harness({ timing: { confirmTimeoutMs: 200 } });
    dispatchedNotWritten('k1');
    h.double('v1').faults.unreachable = true;
    await h.crash();
    h.restart();
    await until(() => notes('k1').some((n) => n.startsWith('recovery: device unreachable')));
    expect(h.get('k1')?.state).toBe('dispatched');
    expect(h.double('v1').writes).toHaveLength(0);
  });

  it('runs an accepted command that was never dispatched through its normal course', async () => {
    h = new Harness();
    h.double('v1').faults.unreachable = true;
    h.submit('k1', { device: 'v1', action: 'open' });
    await sleep(20);
    await h.crash();
    h.double('v1').faults.unreachable = false;
    h.restart();
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.double('v1').writes).toHaveLength(1);
  });

  it('confirms a command that was still travelling, and fails one that faulted meanwhile', async () => {
    h = new Harness({ travelMs: 200 });
    h.submit('k1', { device: 'v1', action: 'open' });
    h.submit('k2', { device: 'v2', action: 'open' });
    await until(() => h.double('v1').writes.length === 1 && h.double('v2').writes.length === 1);
    h.double('v2').faults.stuck = true;
    await h.crash();
    h.restart();
    const [a, b] = await Promise.all([h.settled('k1'), h.settled('k2')]);
    expect(a.state).toBe('confirmed');
    expect(b).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT', faultCode: '0x81' });
    expect(h.double('v1').writes).toHaveLength(1);
    expect(h.double('v2').writes).toHaveLength(1);
  });
});
