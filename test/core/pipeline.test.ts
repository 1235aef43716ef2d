import BetterSqlite3 from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { InvalidCommandError, UnknownDeviceError } from '../../src/core/errors.js';
import { renderResult } from '../../src/core/result.js';
import { Harness } from '../helpers/pipeline-harness.js';

let h: Harness;
afterEach(async () => {
  await h.close();
});

const open = { device: 'v1', action: 'open' };
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

describe('confirmation (I2)', () => {
  it('confirms an open only after a post-write readback shows OPEN with its sequence number', async () => {
    h = new Harness();
    expect(h.submit('k1', open).kind).toBe('new');
    const r = await h.settled('k1');
    const d = h.double('v1');
    expect(r).toMatchObject({ state: 'confirmed', code: 'OK', seq: 1, attempts: 1 });
    expect(r.observed).toMatchObject({ state: 'OPEN', position: 100, seq: 1 });
    expect(d.writes).toHaveLength(1);
    const write = d.writes[0]!;
    expect(
      d.reads.some((read) => read.at >= write.at && read.seq === 1 && read.state === 'OPEN'),
    ).toBe(true);
    expect(Date.parse(r.observed!.readAt)).toBeGreaterThanOrEqual(r.dispatchedAt!);
    expect(h.journal.history(r).map((e) => e.to)).toEqual(['accepted', 'dispatched', 'confirmed']);
  });

  it('moves an actuator and confirms at the setpoint', async () => {
    h = new Harness();
    h.submit('m1', { device: 'a1', action: 'move', position: 40 });
    const r = await h.settled('m1');
    expect(r).toMatchObject({ state: 'confirmed', position: 40 });
    expect(r.observed?.position).toBeCloseTo(40, 0);
    expect(h.double('a1').writes[0]).toMatchObject({ action: 'move', position: 40 });
  });

  it('never confirms from a frozen readback: READBACK_TIMEOUT', async () => {
    h = new Harness({ timing: { confirmTimeoutMs: 250 } });
    const d = h.double('v1');
    await d.read();
    d.faults.frozen = true;
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
    expect(r.detail).toMatch(/never echoed sequence number 1/);
    expect(d.writes).toHaveLength(1);
  });

  it('fails with DEVICE_FAULT and the controller fault code when travel sticks (0x81)', async () => {
    h = new Harness();
    h.double('v1').faults.stuck = true;
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT', faultCode: '0x81' });
  });

  it('times out while the controller still travels: READBACK_TIMEOUT', async () => {
    h = new Harness({ travelMs: 2_000, timing: { confirmTimeoutMs: 150 } });
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
    expect(r.detail).toMatch(/travelling \(OPENING\)/);
  });

  it('fails READBACK_MISMATCH when the controller takes the command and rests elsewhere', async () => {
    h = new Harness({ travelMs: 500 });
    const d = h.double('v1');
    h.submit('k1', open);
    await sleep(60);
    d.setLocal(true);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH' });
    expect(r.detail).toMatch(/LOCAL/);
  });

  it('does not confirm a target reached by other means before the controller took the command', async () => {
    h = new Harness({ timing: { confirmTimeoutMs: 200 } });
    const d = h.double('v1');
    d.faults.holdCommands = true;
    d.onWrite = () => {
      // A local operator opens the valve by hand; the controller has not taken our command.
      d.operateByHand('OPEN', 100);
    };
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
    expect(r.observed).toMatchObject({ state: 'OPEN', seq: 0 });
    expect(d.writes).toHaveLength(1);
  });

  it('refused writes end DEVICE_FAULT and are not retried', async () => {
    h = new Harness();
    h.double('v1').faults.refuseWrites = 1;
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT' });
    expect(r.detail).toMatch(/refused the write: Modbus exception/);
    expect(h.double('v1').writes).toHaveLength(0);
  });
});

describe('the mirrored state machine (I4)', () => {
  it('rejects an illegal transition with 0x88 and writes nothing', async () => {
    h = new Harness({ travelMs: 1_000 });
    h.submit('k1', open);
    await sleep(50);
    h.submit('k2', { device: 'v1', action: 'close' });
    const r = await h.settled('k2');
    expect(r).toMatchObject({ state: 'rejected', code: 'ILLEGAL_TRANSITION', faultCode: '0x88' });
    expect(r.observed?.state).toBe('OPENING');
    expect(h.double('v1').writes.map((w) => w.action)).toEqual(['open']);
  });

  it('rejects LOCAL_MODE without a write', async () => {
    h = new Harness();
    h.double('v1').setLocal(true);
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'rejected', code: 'LOCAL_MODE', faultCode: null });
    expect(h.double('v1').writes).toHaveLength(0);
  });

  it('confirms a no-op from a readback without writing', async () => {
    h = new Harness();
    h.submit('k1', { device: 'v1', action: 'close' });
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', code: 'OK', seq: null, dispatchedAt: null });
    expect(r.detail).toMatch(/no-op/);
    expect(h.double('v1').writes).toHaveLength(0);
  });

  it('confirms a no-op open while OPENING when travel completes, still without a write', async () => {
    h = new Harness({ travelMs: 150 });
    h.submit('k1', open);
    await sleep(30);
    h.submit('k2', open);
    const [a, b] = await Promise.all([h.settled('k1'), h.settled('k2')]);
    expect(a.state).toBe('confirmed');
    expect(b).toMatchObject({ state: 'confirmed', seq: null });
    expect(h.double('v1').writes).toHaveLength(1);
  });

  it('ends rejected 0x88 when the controller itself refuses, and resynchronises the mirror', async () => {
    h = new Harness({ travelMs: 1_000 });
    const d = h.double('v1');
    // Between the bridge's read and its write a local operator starts the valve closing.
    d.state = 'OPEN';
    d.position = 100;
    d.onWrite = () => {
      d.onWrite = null;
      d.state = 'OPENING';
    };
    h.submit('k1', { device: 'v1', action: 'close' });
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'rejected', code: 'ILLEGAL_TRANSITION', faultCode: '0x88' });
    expect(r.observed).toMatchObject({ seq: 1, faultCode: '0x88' });
    expect(d.writes).toHaveLength(1);
    const view = h.pipeline.devices().find((v) => v.id === 'v1');
    expect(view?.mirror?.state).toBe('OPENING');
  });
});

describe('freshness (I3)', () => {
  it('rejects a command past its deadline without a read or a write', () => {
    h = new Harness();
    const issuedAt = new Date(Date.now() - 60_000).toISOString();
    const out = h.submit('k1', { ...open, issuedAt, ttlMs: 30_000 });
    expect(out.record).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND' });
    expect(h.double('v1').writes).toHaveLength(0);
    expect(h.double('v1').reads).toHaveLength(0);
  });

  it('rejects a command issued too far in the future: CLOCK_SKEW', () => {
    h = new Harness({ maxIssuerSkewMs: 1_000 });
    const issuedAt = new Date(Date.now() + 5_000).toISOString();
    expect(h.submit('k1', { ...open, issuedAt }).record).toMatchObject({ code: 'CLOCK_SKEW' });
    expect(h.double('v1').writes).toHaveLength(0);
  });

  it('rejects a command that went stale while it waited for its device', async () => {
    h = new Harness({ travelMs: 300 });
    h.submit('k1', open);
    h.submit('k2', { device: 'v1', action: 'stop', ttlMs: 100 });
    const r = await h.settled('k2');
    expect(r).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND' });
    expect(h.double('v1').writes).toHaveLength(1);
  });

  it('records the gateway receive time when the issuer gives none', async () => {
    h = new Harness();
    const before = Date.now();
    const rec = h.submit('k1', open).record;
    expect(rec.issuedAtSource).toBe('gateway');
    expect(rec.issuedAt).toBeGreaterThanOrEqual(before);
    expect(JSON.parse(renderResult(rec))).toMatchObject({ issuedAtSource: 'gateway' });
    await h.settled('k1');
  });
});

describe('keys (I1)', () => {
  it('replays a settled key with the stored, byte-identical result and no second write', async () => {
    h = new Harness();
    h.submit('k1', open);
    const first = await h.settled('k1');
    const again = h.submit('k1', open, { intake: 'mqtt' });
    expect(again.kind).toBe('duplicate');
    expect(again.record.response).toBe(first.response);
    expect(h.double('v1').writes).toHaveLength(1);
  });

  it('reports a duplicate of an in-flight key as in flight', async () => {
    h = new Harness({ travelMs: 200 });
    h.submit('k1', open);
    await sleep(20);
    const dup = h.submit('k1', open);
    expect(dup.kind).toBe('duplicate');
    expect(['accepted', 'dispatched']).toContain(dup.record.state);
    await h.settled('k1');
    expect(h.double('v1').writes).toHaveLength(1);
  });

  it('refuses a reused key with another payload and keeps the original', async () => {
    h = new Harness();
    h.submit('k1', open);
    const reuse = h.submit('k1', { device: 'v1', action: 'close' });
    expect(reuse.kind).toBe('reused');
    expect((await h.settled('k1')).action).toBe('open');
  });

  it('rejects FORBIDDEN_DEVICE for an identity without the device, without a write', () => {
    h = new Harness();
    const out = h.submit('k1', open, { identity: { scope: 'ops', devices: new Set(['v2']) } });
    expect(out.record).toMatchObject({ state: 'rejected', code: 'FORBIDDEN_DEVICE' });
    expect(h.double('v1').writes).toHaveLength(0);
  });

  it('refuses unknown devices and actions the profile lacks before journaling', () => {
    h = new Harness();
    expect(() => h.submit('k1', { device: 'nope', action: 'open' })).toThrow(UnknownDeviceError);
    expect(() => h.submit('k2', { device: 'a1', action: 'open' })).toThrow(InvalidCommandError);
    expect(h.journal.list({})).toHaveLength(0);
  });

  it('takes one command at a time per device, in order, and devices in parallel', async () => {
    h = new Harness({ travelMs: 60 });
    h.submit('a', open);
    h.submit('b', { device: 'v1', action: 'close' });
    h.submit('c', open);
    h.submit('d', { device: 'v2', action: 'open' });
    const results = await Promise.all(['a', 'b', 'c', 'd'].map((k) => h.settled(k)));
    expect(results.map((r) => r.state)).toEqual([
      'confirmed',
      'confirmed',
      'confirmed',
      'confirmed',
    ]);
    expect(h.double('v1').writes.map((w) => w.action)).toEqual(['open', 'close', 'open']);
    expect(h.double('v1').maxConcurrent).toBe(1);
    expect(results[3]!.acceptedAt).toBeLessThan(results[0]!.settledAt!);
    expect(results[3]!.settledAt).toBeLessThan(results[2]!.settledAt!);
  });
});

describe('unknown write outcomes', () => {
  it('a dropped reply is recovered by readback, without a second write', async () => {
    h = new Harness();
    h.double('v1').faults.dropReplies = 1;
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.double('v1').writes).toHaveLength(1);
  });

  it('a write provably not applied is sent once more and confirmed', async () => {
    h = new Harness();
    h.double('v1').faults.loseWrites = 1;
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 2 });
    expect(h.double('v1').writes).toHaveLength(1);
    expect(h.journal.history(r).some((e) => e.detail.startsWith('redispatch'))).toBe(true);
  });

  it('never sends a third write', async () => {
    h = new Harness({ timing: { confirmTimeoutMs: 400 } });
    h.double('v1').faults.loseWrites = 5;
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT', attempts: 2 });
    expect(h.double('v1').writes).toHaveLength(0);
  });

  it('an unreachable device fails DEVICE_UNREACHABLE before anything is written', async () => {
    h = new Harness();
    h.double('v1').faults.unreachable = true;
    h.submit('k1', { ...open, ttlMs: 200 });
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', seq: null });
    expect(r.detail).toMatch(/nothing was written/);
  });

  it('reads that fail for a while do not stop a command', async () => {
    h = new Harness();
    h.double('v1').faults.failReads = 3;
    h.submit('k1', open);
    expect((await h.settled('k1')).state).toBe('confirmed');
  });
});

describe('the journal failing mid-flight (I5)', () => {
  it('an outcome that cannot be journaled is settled later by readback, never re-written', async () => {
    h = new Harness({ travelMs: 30 });
    const d = h.double('v1');
    const other = new BetterSqlite3(h.path, { timeout: 0 });
    d.onWrite = () => {
      d.onWrite = null;
      // Another process (an operator's CLI, a backup) holds the write lock past the journal's
      // busy bound just when the outcome is to be journaled.
      other.exec('BEGIN IMMEDIATE');
      setTimeout(() => {
        other.exec('ROLLBACK');
      }, 1_200);
    };
    h.submit('k1', open);
    const r = await h.settled('k1', 8_000);
    other.close();
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(d.writes).toHaveLength(1);
  });

  it('a dispatch that cannot be journaled is not written, and runs once the journal is back', async () => {
    h = new Harness();
    const other = new BetterSqlite3(h.path, { timeout: 0 });
    const d = h.double('v1');
    // The lock is taken after the claim, before the worker journals `dispatched`.
    h.submit('k1', open);
    other.exec('BEGIN IMMEDIATE');
    await sleep(700);
    expect(d.writes).toHaveLength(0);
    expect(h.get('k1')?.state).toBe('accepted');
    other.exec('ROLLBACK');
    other.close();
    const r = await h.settled('k1', 8_000);
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(d.writes).toHaveLength(1);
  });

  it('a forbidden command is rejected in the claim’s own commit', () => {
    h = new Harness();
    const out = h.submit('k1', open, { identity: { scope: 'ops', devices: new Set(['v2']) } });
    expect(out.record.state).toBe('rejected');
    expect(h.journal.listOpen()).toHaveLength(0);
    expect(h.journal.history(out.record).map((e) => e.to)).toEqual(['accepted', 'rejected']);
  });
});

describe('shutdown', () => {
  it('refuses new commands and leaves an unfinished one journaled for recovery', async () => {
    h = new Harness({ travelMs: 2_000, timing: { confirmTimeoutMs: 5_000 } });
    h.submit('k1', open);
    await sleep(50);
    await h.pipeline.stop(50);
    expect(() => h.submit('k2', open)).toThrow(/shutting down/);
    expect(h.get('k1')?.state).toBe('dispatched');
  });
});
