import { afterEach, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import type { CommandRecord } from '../../src/core/journal.js';
import { InvalidCommandError, UnknownDeviceError } from '../../src/core/errors.js';
import { silentLogger } from '../../src/core/logger.js';
import { renderResult } from '../../src/core/result.js';
import { ModbusDeviceDriver, ModbusEndpoint } from '../../src/drivers/modbus.js';
import { profile } from '../helpers/fixtures.js';
import { lockHolder } from '../helpers/journal-lock.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { SimHarness, type SimHarnessOptions } from '../helpers/sim-harness.js';

/**
 * The pipeline's behaviour, command by command, on the real parts: the pipeline with the real
 * Modbus drivers over real sockets against sluice-sim (PLC `mb`: valves `v1`, `v2`, actuator
 * `a1`), on a real SQLite journal. Faults are the simulator's; ground truth is the simulator's
 * write log, command log and counters, and the journal — never the pipeline's word alone.
 * Controller time and gateway time share one source here (no clock offset), so the write
 * log's times compare with the journal's.
 */

let running: SimHarness | undefined;
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (let c = cleanups.pop(); c !== undefined; c = cleanups.pop()) await c();
  await running?.close();
  running = undefined;
});

/** Starts a harness for this test; it is closed after the test. */
async function start(options: SimHarnessOptions = {}): Promise<SimHarness> {
  running = await SimHarness.start(options);
  return running;
}

const open = { device: 'v1', action: 'open' };
const close = { device: 'v1', action: 'close' };

/**
 * Another Modbus master on the same PLC (a SCADA, an engineering station) that commands `v1`
 * with its own sequence numbers: how the plant changes under the bridge without the bridge.
 */
async function otherMaster(harness: SimHarness): Promise<ModbusDeviceDriver> {
  const endpoint = new ModbusEndpoint({
    name: 'other-master',
    host: '127.0.0.1',
    port: (harness.plant.plc('mb').endpoint as { port: number }).port,
    unitId: 1,
    clock: systemClock,
    logger: silentLogger,
  });
  cleanups.push(() => endpoint.close());
  const driver = new ModbusDeviceDriver({
    id: 'v1',
    profile: profile('valve'),
    endpoint,
    base: 0,
    clock: systemClock,
  });
  await driver.read(); // connected before the test needs it to be quick
  return driver;
}

/**
 * The simulator keeps no count of reads. A PLC-wide fault with a large count is a tripwire:
 * every request that reaches the PLC (status read, clock read or write, any device) uses one
 * up. Returns how many requests reached the PLC since it was set.
 */
function tripwire(harness: SimHarness): () => number {
  const COUNT = 1_000_000;
  const plc = harness.plant.plc('mb');
  plc.setFault({ kind: 'exception', code: 4, on: 'both', count: COUNT });
  return () => COUNT - (plc.faults().find((f) => f.kind === 'exception')?.remaining ?? 0);
}

describe('confirmation (I2)', () => {
  it('confirms an open only after a post-write readback shows OPEN with its sequence number', async () => {
    const h = await start();
    const valve = h.device('v1');
    expect(h.submit('k1', open).kind).toBe('new');
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', code: 'OK', seq: 1, attempts: 1 });
    expect(r.observed).toMatchObject({ state: 'OPEN', position: 100, seq: 1 });
    // Ground truth: one write, taken by the controller; the confirming image was published by
    // a scan at or after the one that took it, and read after the dispatch.
    expect(valve.writeLog).toMatchObject([{ seq: 1, code: 1, outcome: 'accepted' }]);
    const takenAt = valve.writeLog[0]!.settledAt!;
    expect(Date.parse(r.observed!.sourceTime!)).toBeGreaterThanOrEqual(takenAt);
    expect(Date.parse(r.observed!.readAt)).toBeGreaterThanOrEqual(r.dispatchedAt!);
    expect(valve.snapshot()).toMatchObject({ state: 'OPEN', seqEcho: 1 });
    expect(h.journal.history(r).map((e) => e.to)).toEqual(['accepted', 'dispatched', 'confirmed']);
  });

  it('moves an actuator and confirms at the setpoint', async () => {
    const h = await start();
    const actuator = h.device('a1');
    h.submit('m1', { device: 'a1', action: 'move', position: 40 });
    const r = await h.settled('m1');
    expect(r).toMatchObject({ state: 'confirmed', position: 40 });
    expect(r.observed?.position).toBeCloseTo(40, 0);
    expect(actuator.writeLog).toMatchObject([
      { seq: r.seq, code: 5, setpoint: 40, outcome: 'accepted' },
    ]);
    expect(actuator.snapshot().state).toBe('IDLE');
    expect(actuator.snapshot().position).toBeCloseTo(40, 0);
  });

  it('never confirms from a frozen readback: READBACK_TIMEOUT', async () => {
    const h = await start({ timing: { confirmTimeoutMs: 400 } });
    const valve = h.device('v1');
    // The status image stops updating: the controller takes the command and opens, but every
    // readback still shows CLOSED with the old echo.
    valve.setFault({ kind: 'frozen' });
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT', seq: 1, attempts: 1 });
    expect(r.detail).toMatch(/never echoed sequence number 1/);
    expect(r.observed).toMatchObject({ state: 'CLOSED', seq: 0 });
    // The controller did take it (the image lied): one write, never a second.
    expect(valve.writesWithSeq(1)).toBe(1);
    expect(valve.counters.writesReceived).toBe(1);
    expect(valve.snapshot()).toMatchObject({ seqEcho: 1, published: { seqEcho: 0 } });
    expect(h.notes('k1').some((n) => n.includes('redispatch'))).toBe(false);
  });

  it('fails with DEVICE_FAULT and the controller fault code when travel sticks (0x81)', async () => {
    const h = await start();
    const valve = h.device('v1');
    valve.setFault({ kind: 'stuck-travel' });
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT', faultCode: '0x81' });
    expect(valve.writesWithSeq(r.seq!)).toBe(1);
    expect(valve.snapshot()).toMatchObject({ state: 'FAULT', fault: '0x81', seqEcho: r.seq });
  });

  it('times out while the controller still travels: READBACK_TIMEOUT', async () => {
    const h = await start({ travelMs: 2_000, timing: { confirmTimeoutMs: 300 } });
    const valve = h.device('v1');
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
    expect(r.detail).toMatch(/travelling \(OPENING\)/);
    // Honest: the controller took it and is still on its way.
    expect(valve.writesWithSeq(r.seq!)).toBe(1);
    expect(valve.snapshot()).toMatchObject({ state: 'OPENING', seqEcho: r.seq });
  });

  it('fails READBACK_MISMATCH when the controller takes the command and rests elsewhere', async () => {
    const h = await start({ travelMs: 500 });
    const valve = h.device('v1');
    h.submit('k1', open);
    await h.until(() => valve.writeLog[0]?.outcome === 'accepted', 5_000, 'the command taken');
    // A local operator turns the key switch mid-travel.
    valve.setLocal(true);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH' });
    expect(r.detail).toMatch(/LOCAL/);
    expect(valve.writeLog).toMatchObject([{ seq: r.seq, outcome: 'accepted' }]);
    expect(valve.snapshot().state).toBe('LOCAL');
  });

  it('does not confirm a target reached by other means before the controller took the command', async () => {
    const h = await start({ timing: { confirmTimeoutMs: 500 } });
    const valve = h.device('v1');
    // The controller's handshake is busy (a long task): the write is received, not taken.
    valve.setFault({ kind: 'hold' });
    h.submit('k1', open);
    await h.until(() => valve.pendingWrites === 1, 5_000, 'the write waiting in the PLC');
    // Meanwhile a local operator opens the valve by hand and hands it back to REMOTE.
    valve.setLocal(true, 100);
    await h.until(() => valve.published.state === 'LOCAL', 1_000, 'LOCAL');
    valve.setLocal(false);
    await h.until(() => valve.published.state === 'OPEN', 1_000, 'OPEN by hand');
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
    expect(r.observed).toMatchObject({ state: 'OPEN', seq: 0 });
    // Ground truth: the one write is still waiting; the controller never took it.
    expect(valve.counters.writesReceived).toBe(1);
    expect(valve.pendingWrites).toBe(1);
    expect(valve.writeLog).toMatchObject([{ seq: r.seq, outcome: null }]);
  });

  it('refused writes end DEVICE_FAULT and are not retried', async () => {
    const h = await start();
    const valve = h.device('v1');
    // The PLC answers the next write with exception 03 (illegal data value: not performed); a
    // retry would go through. (0x04 and 0x0B leave the outcome unknown, 0x05 acknowledges the
    // write, 0x06 busy sends it again: readback.)
    valve.setFault({ kind: 'exception', code: 3, on: 'write', count: 1 });
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT', faultCode: null });
    expect(r.detail).toMatch(/refused the write: .*Modbus exception 0x03/);
    expect(valve.faults()).toEqual([]); // the refusal was used up by the one write
    expect(valve.counters.writesReceived).toBe(0);
  });
});

describe('the mirrored state machine (I4)', () => {
  it('rejects an illegal transition with 0x88 and writes nothing', async () => {
    // The open times out while the valve still travels; the close then meets OPENING.
    const h = await start({ travelMs: 1_000, timing: { confirmTimeoutMs: 300 } });
    const valve = h.device('v1');
    h.submit('k1', open);
    h.submit('k2', close);
    const k1 = await h.settled('k1');
    const r = await h.settled('k2');
    expect(k1).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
    expect(r).toMatchObject({
      state: 'rejected',
      code: 'ILLEGAL_TRANSITION',
      faultCode: '0x88',
      seq: null,
    });
    expect(r.observed?.state).toBe('OPENING');
    expect(valve.writeLog.map((w) => [w.seq, w.code])).toEqual([[k1.seq, 1]]);
    expect(valve.counters.rejected).toBe(0);
  });

  it('rejects LOCAL_MODE without a write', async () => {
    const h = await start();
    const valve = h.device('v1');
    valve.setLocal(true);
    await h.until(() => valve.published.state === 'LOCAL', 1_000, 'LOCAL');
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'rejected', code: 'LOCAL_MODE', faultCode: null });
    expect(valve.counters.writesReceived).toBe(0);
  });

  it('confirms a no-op from a readback without writing', async () => {
    const h = await start();
    h.submit('k1', close);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', code: 'OK', seq: null, dispatchedAt: null });
    expect(r.detail).toMatch(/no-op/);
    expect(h.device('v1').counters.writesReceived).toBe(0);
  });

  it('confirms a no-op open while OPENING when travel completes, still without a write', async () => {
    const h = await start({ travelMs: 400 });
    const valve = h.device('v1');
    // Another master starts the valve opening; our open finds it OPENING.
    const other = await otherMaster(h);
    await other.write({ action: 'open', position: null, seq: 777 });
    await h.until(() => valve.published.state === 'OPENING', 1_000, 'OPENING');
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', seq: null, dispatchedAt: null });
    expect(r.observed).toMatchObject({ state: 'OPEN', seq: 777 });
    // Ground truth: only the other master's write; the valve reached OPEN after we accepted.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([777]);
    expect(valve.published).toMatchObject({ state: 'OPEN' });
    expect(valve.published.changedAt.state).toBeGreaterThanOrEqual(r.acceptedAt);
  });

  it('ends rejected 0x88 when the controller itself refuses, and resynchronises the mirror', async () => {
    const h = await start({ travelMs: 2_000 });
    const valve = h.device('v1');
    // The valve stands half open (moved by hand in LOCAL, back in REMOTE: STOPPED).
    valve.setLocal(true, 50);
    await h.until(() => valve.published.state === 'LOCAL', 1_000, 'LOCAL');
    valve.setLocal(false);
    await h.until(() => valve.published.state === 'STOPPED', 1_000, 'STOPPED');
    h.submit('k0', { device: 'v1', action: 'stop' }); // a no-op: connects the bridge
    expect((await h.settled('k0')).state).toBe('confirmed');
    const other = await otherMaster(h);
    // Between the bridge's read and its write another master starts the valve opening: the
    // status reply is held 150 ms on the link, the other master's open is taken meanwhile.
    valve.setFault({ kind: 'latency', ms: 150, on: 'read', when: 'after' });
    h.submit('k1', close);
    await other.write({ action: 'open', position: null, seq: 777 });
    await h.until(() => valve.counters.writesReceived === 2, 5_000, "the bridge's write");
    valve.clearFault('latency');
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'rejected', code: 'ILLEGAL_TRANSITION', faultCode: '0x88' });
    expect(r.observed).toMatchObject({ seq: r.seq, faultCode: '0x88', state: 'OPENING' });
    // Ground truth: the controller took the other open, then refused our close with 0x88.
    expect(valve.log.map((e) => [e.seq, e.outcome, e.from])).toEqual([
      [777, 'accepted', 'STOPPED'],
      [r.seq, 'rejected-0x88', 'OPENING'],
    ]);
    expect(valve.writesWithSeq(r.seq!)).toBe(1);
    // The mirror is read again after the refusal and shows what the controller shows.
    await h.until(
      () => (h.pipeline.device('v1')?.mirror?.requestedAt ?? 0) >= r.settledAt!,
      2_000,
      'the mirror read again',
    );
    expect(h.pipeline.device('v1')?.mirror?.state).toBe('OPENING');
    expect(valve.published.state).toBe('OPENING');
  });
});

describe('freshness (I3)', () => {
  it('rejects a command past its deadline without a read or a write', async () => {
    const h = await start();
    const requests = tripwire(h);
    const issuedAt = new Date(Date.now() - 60_000).toISOString();
    const out = h.submit('k1', { ...open, issuedAt, ttlMs: 30_000 });
    expect(out.record).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND' });
    expect((await h.settled('k1')).state).toBe('rejected');
    expect(requests()).toBe(0);
    expect(h.device('v1').counters.writesReceived).toBe(0);
  });

  it('rejects a command issued too far in the future: CLOCK_SKEW', async () => {
    const h = await start({ maxIssuerSkewMs: 1_000 });
    const requests = tripwire(h);
    const issuedAt = new Date(Date.now() + 5_000).toISOString();
    expect(h.submit('k1', { ...open, issuedAt }).record).toMatchObject({ code: 'CLOCK_SKEW' });
    expect((await h.settled('k1')).state).toBe('rejected');
    expect(requests()).toBe(0);
    expect(h.device('v1').counters.writesReceived).toBe(0);
  });

  it('rejects a command that went stale while it waited for its device', async () => {
    const h = await start({ travelMs: 300 });
    const valve = h.device('v1');
    h.submit('k1', open);
    // Not a stop: a stop would preempt the open (stop.test.ts).
    h.submit('k2', { device: 'v1', action: 'close', ttlMs: 100 });
    const r = await h.settled('k2');
    const k1 = await h.settled('k1');
    expect(r).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND', seq: null });
    expect(k1.state).toBe('confirmed');
    expect(valve.writeLog.map((w) => w.seq)).toEqual([k1.seq]);
    expect(valve.snapshot().state).toBe('OPEN');
  });

  it('rejects a command that went stale while it waited, before the read that would make it a no-op', async () => {
    // An open behind an open: once the first is confirmed, the read would find the valve at
    // the second's target (a no-op, nothing to write), so only the check before that read
    // can judge it; past its deadline it is rejected, not confirmed.
    const h = await start({ travelMs: 300 });
    const valve = h.device('v1');
    h.submit('k1', open);
    h.submit('k2', { ...open, ttlMs: 100 });
    const k1 = await h.settled('k1');
    const k2 = await h.settled('k2');
    expect(k1.state).toBe('confirmed');
    expect(k2, h.notes('k2').join(' | ')).toMatchObject({
      state: 'rejected',
      code: 'STALE_COMMAND',
      seq: null,
      observed: null,
    });
    expect(valve.writeLog.map((w) => w.seq)).toEqual([k1.seq]);
  });

  it('records the gateway receive time when the issuer gives none', async () => {
    const h = await start();
    const before = Date.now();
    const rec = h.submit('k1', open).record;
    expect(rec.issuedAtSource).toBe('gateway');
    expect(rec.issuedAt).toBeGreaterThanOrEqual(before);
    expect(JSON.parse(renderResult(rec))).toMatchObject({ issuedAtSource: 'gateway' });
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', issuedAtSource: 'gateway' });
    expect(h.device('v1').writesWithSeq(r.seq!)).toBe(1);
  });
});

describe('keys (I1)', () => {
  it('replays a settled key with the stored, byte-identical result and no second write', async () => {
    const h = await start();
    const valve = h.device('v1');
    h.submit('k1', open);
    const first = await h.settled('k1');
    const again = h.submit('k1', open, { intake: 'mqtt' });
    expect(again.kind).toBe('duplicate');
    expect(again.record.response).toBe(first.response);
    expect(valve.writesWithSeq(first.seq!)).toBe(1);
    expect(valve.counters.writesReceived).toBe(1);
  });

  it('reports a duplicate of an in-flight key as in flight', async () => {
    const h = await start({ travelMs: 200 });
    const valve = h.device('v1');
    h.submit('k1', open);
    await h.until(() => valve.counters.writesReceived === 1, 5_000, 'the write');
    const dup = h.submit('k1', open);
    expect(dup.kind).toBe('duplicate');
    expect(dup.record.state).toBe('dispatched');
    const r = await h.settled('k1');
    expect(r.state).toBe('confirmed');
    expect(valve.writesWithSeq(r.seq!)).toBe(1);
    expect(valve.counters.writesReceived).toBe(1);
  });

  it('refuses a reused key with another payload and keeps the original', async () => {
    const h = await start();
    const valve = h.device('v1');
    h.submit('k1', open);
    const reuse = h.submit('k1', close);
    expect(reuse.kind).toBe('reused');
    const r = await h.settled('k1');
    expect(r).toMatchObject({ action: 'open', state: 'confirmed' });
    expect(valve.writeLog.map((w) => [w.seq, w.code])).toEqual([[r.seq, 1]]);
  });

  it('refuses a key reused with another position, issuedAt or ttlMs: each is in the fingerprint', async () => {
    // SPEC §2: the fingerprint hashes device, action, position, issuedAt and ttlMs. A field
    // left out of it would take a retry that moves elsewhere, or runs on another deadline,
    // as the original, and answer it with the original's success (a move to 70 % confirmed
    // at 30 %).
    const h = await start();
    const actuator = h.device('a1');
    const at = Date.now();
    const withoutTtl = {
      device: 'a1',
      action: 'move',
      position: 30,
      issuedAt: new Date(at).toISOString(),
    };
    const first = { ...withoutTtl, ttlMs: 20_000 };
    expect(h.submit('k1', first).kind).toBe('new');
    for (const other of [
      { ...first, position: 70 },
      { ...first, issuedAt: new Date(at - 1).toISOString() },
      { ...first, ttlMs: 20_001 },
      withoutTtl,
    ]) {
      expect(h.submit('k1', other).kind, JSON.stringify(other)).toBe('reused');
    }
    // The same instant written with another offset is the same command (docs/spec-notes.md).
    const plusOne = new Date(at + 3_600_000).toISOString().replace('Z', '+01:00');
    expect(h.submit('k1', { ...first, issuedAt: plusOne }).kind).toBe('duplicate');
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', position: 30 });
    // Ground truth: one write, the original's setpoint.
    expect(actuator.writeLog.map((w) => [w.seq, w.setpoint])).toEqual([[r.seq, 30]]);
  });

  it('rejects FORBIDDEN_DEVICE for an identity without the device, without a write', async () => {
    const h = await start();
    const requests = tripwire(h);
    const out = h.submit('k1', open, { identity: { scope: 'ops', devices: new Set(['v2']) } });
    expect(out.record).toMatchObject({ state: 'rejected', code: 'FORBIDDEN_DEVICE' });
    expect((await h.settled('k1', 1_000, 'ops')).state).toBe('rejected');
    expect(requests()).toBe(0);
    expect(h.device('v1').counters.writesReceived).toBe(0);
  });

  it('refuses unknown devices and actions the profile lacks before journaling', async () => {
    const h = await start();
    const requests = tripwire(h);
    expect(() => h.submit('k1', { device: 'nope', action: 'open' })).toThrow(UnknownDeviceError);
    expect(() => h.submit('k2', { device: 'a1', action: 'open' })).toThrow(InvalidCommandError);
    expect(h.journal.list({})).toHaveLength(0);
    expect(requests()).toBe(0);
  });

  it('takes one command at a time per device, in order, and devices in parallel', async () => {
    const h = await start({ travelMs: 60 });
    h.submit('a', open);
    h.submit('b', close);
    h.submit('c', open);
    h.submit('d', { device: 'v2', action: 'open' });
    const results = await Promise.all(['a', 'b', 'c', 'd'].map((k) => h.settled(k)));
    expect(results.map((r) => r.state)).toEqual([
      'confirmed',
      'confirmed',
      'confirmed',
      'confirmed',
    ]);
    const [a, b, c, d] = results as [CommandRecord, CommandRecord, CommandRecord, CommandRecord];
    // Ground truth: each write found the valve at rest where the one before left it — the
    // next write never arrived while the previous command was still travelling.
    expect(h.device('v1').log.map((e) => [e.seq, e.code, e.outcome, e.from])).toEqual([
      [a.seq, 1, 'accepted', 'CLOSED'],
      [b.seq, 2, 'accepted', 'OPEN'],
      [c.seq, 1, 'accepted', 'CLOSED'],
    ]);
    expect(b.dispatchedAt!).toBeGreaterThanOrEqual(a.settledAt!);
    expect(c.dispatchedAt!).toBeGreaterThanOrEqual(b.settledAt!);
    expect(h.device('v2').writeLog.map((w) => w.seq)).toEqual([d.seq]);
    expect(d.acceptedAt).toBeLessThan(a.settledAt!);
    expect(d.settledAt).toBeLessThan(c.settledAt!);
  });
});

describe('unknown write outcomes', () => {
  it('a dropped reply is recovered by readback, without a second write', async () => {
    const h = await start();
    const valve = h.device('v1');
    // The PLC applies the write and never answers: the request times out (outcome unknown).
    valve.setFault({ kind: 'drop', on: 'write', count: 1 });
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(valve.faults()).toEqual([]);
    expect(valve.writeLog).toMatchObject([{ seq: r.seq, outcome: 'accepted' }]);
  });

  it('a write provably not applied is sent once more and confirmed', async () => {
    // A device that has taken commands before: its echo is not the power-up 0 (redispatch.ts).
    const h = await start({ warm: true });
    const valve = h.device('v1');
    // The connection is reset before the first write reaches the PLC.
    valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 2 });
    expect(valve.writeLog).toMatchObject([{ seq: r.seq, outcome: 'accepted' }]);
    const history = h.journal.history(r);
    const first = history.find((e) => e.to === 'dispatched')!;
    const again = history.find((e) => e.detail.startsWith('redispatch'));
    expect(again).toBeDefined();
    // Proof takes an image fresher than the guard (400 ms) after the outcome became unknown.
    expect(again!.at - first.at).toBeGreaterThanOrEqual(400);
  });

  it('never sends a third write', async () => {
    const h = await start({ warm: true });
    const valve = h.device('v1');
    // Every write is lost on the link (connection reset before it reaches the PLC).
    valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 5 });
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 2 });
    expect(r.detail).toMatch(/never reached the controller.*dispatched twice/);
    // Ground truth: two writes met the fault (5 → 3 left), none reached the controller.
    expect(valve.faults()).toMatchObject([{ kind: 'reset', remaining: 3 }]);
    expect(valve.counters.writesReceived).toBe(0);
  });

  it('an unreachable device fails DEVICE_UNREACHABLE before anything is written', async () => {
    const h = await start();
    // Every connection to the PLC is reset at the first request.
    h.plant.plc('mb').setFault({ kind: 'reset', when: 'before', on: 'both' });
    h.submit('k1', { ...open, ttlMs: 200 });
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', seq: null });
    expect(r.detail).toMatch(/nothing was written/);
    expect(h.device('v1').counters.writesReceived).toBe(0);
  });

  it('reads that fail for a while do not stop a command', async () => {
    const h = await start();
    const valve = h.device('v1');
    // The next three status reads of v1 lose their connection.
    valve.setFault({ kind: 'reset', when: 'before', on: 'read', count: 3 });
    h.submit('k1', open);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(valve.faults()).toEqual([]); // all three reads did fail
    expect(valve.writesWithSeq(r.seq!)).toBe(1);
  });
});

describe('the journal failing mid-flight (I5)', () => {
  it('an outcome that cannot be journaled is settled later by readback, never re-written', async () => {
    const { logger, lines } = recordingLogger();
    const h = await start({ busyTimeoutMs: 300, logger });
    const valve = h.device('v1');
    const locker = await lockHolder(h.path);
    cleanups.push(() => {
      locker.close();
    });
    // The controller takes the write only once the lock below is in place.
    valve.setFault({ kind: 'hold' });
    h.submit('k1', open);
    await h.until(() => valve.counters.writesReceived === 1, 5_000, 'the write');
    // Another process (an operator's CLI, a backup) holds the journal's write lock past the
    // busy bound just when the outcome is to be journaled: from before the controller takes
    // the write until the outcome was refused for it, not for a fixed time (800 ms), which a
    // loaded machine could spend before the outcome was journaled.
    await locker.hold();
    valve.clearFault('hold');
    await h.until(
      () =>
        lines.some(
          (l) => l.key === 'k1' && l.msg === 'outcome could not be journaled; command left open',
        ),
      10_000,
      'the outcome refused for the lock',
    );
    await locker.release();
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    // The stall did hit the outcome: journaled at least the busy bound after the valve opened.
    expect(r.settledAt! - valve.published.changedAt.state).toBeGreaterThanOrEqual(300);
    expect(valve.writeLog).toMatchObject([{ seq: r.seq, outcome: 'accepted' }]);
    expect(
      h.journal.history(r).filter((e) => e.to === 'dispatched' && e.from !== 'dispatched'),
    ).toHaveLength(1);
    expect(h.notes('k1').some((n) => n.includes('redispatch'))).toBe(false);
  });

  it('a dispatch that cannot be journaled is not written, and runs once the journal is back', async () => {
    const { logger, lines } = recordingLogger();
    // Status reads of v1 may be held up to a second (the guard longer, as configuration asks).
    const h = await start({
      busyTimeoutMs: 300,
      logger,
      requestTimeoutMs: 1_000,
      timing: { redispatchGuardMs: 1_200 },
    });
    const valve = h.device('v1');
    const locker = await lockHolder(h.path);
    cleanups.push(() => {
      locker.close();
    });
    // The worker's status read of v1 is held until the lock is in place: the lock is taken
    // before the worker journals `dispatched`, and held until that was refused for it, not for
    // a fixed time (700 ms), which a loaded machine could spend before the dispatch.
    valve.setFault({ kind: 'stall', on: 'read', count: 1 });
    h.submit('k1', open);
    h.submit('k2', close);
    await h.until(
      () => valve.faults().some((f) => f.kind === 'stall' && f.remaining === 0),
      5_000,
      "the worker's read held",
    );
    await locker.hold();
    valve.clearFault('stall');
    await h.until(
      () =>
        lines.some(
          (l) =>
            l.key === 'k1' &&
            l.msg ===
              'command left open (journal unavailable); the device waits until it is taken up again',
        ),
      10_000,
      'the dispatch refused for the lock',
    );
    // The dispatch could not be journaled: k1 stays the device's command, unwritten, and the
    // queue does not move past it — shown below by the ground truth: k1's write, first, only
    // after the lock was gone.
    const releasedFrom = Date.now();
    await locker.release();
    const r1 = await h.settled('k1');
    const r2 = await h.settled('k2');
    expect(r1).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(r2).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.journal.history(r1).map((e) => e.to)).toEqual(['accepted', 'dispatched', 'confirmed']);
    // Ground truth: one write each, in order, the first only after the lock was gone.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([r1.seq, r2.seq]);
    expect(valve.writeLog[0]!.receivedAt).toBeGreaterThanOrEqual(releasedFrom);
  });

  it('a forbidden command is rejected in the claim’s own commit', async () => {
    const h = await start();
    const requests = tripwire(h);
    const out = h.submit('k1', open, { identity: { scope: 'ops', devices: new Set(['v2']) } });
    expect(out.record.state).toBe('rejected');
    expect(h.journal.listOpen()).toHaveLength(0);
    expect(h.journal.history(out.record).map((e) => e.to)).toEqual(['accepted', 'rejected']);
    expect((await h.settled('k1', 1_000, 'ops')).state).toBe('rejected');
    expect(requests()).toBe(0);
  });
});

describe('shutdown', () => {
  it('refuses new commands and leaves an unfinished one journaled for recovery', async () => {
    const h = await start({ travelMs: 2_000, timing: { confirmTimeoutMs: 5_000 } });
    const valve = h.device('v1');
    h.submit('k1', open);
    await h.until(() => valve.counters.writesReceived === 1, 5_000, 'the write');
    await h.pipeline.stop(50);
    expect(() => h.submit('k2', open)).toThrow(/shutting down/);
    const k1 = h.get('k1');
    expect(k1).toMatchObject({ state: 'dispatched', attempts: 1 });
    // It really is unfinished: the controller took it and is still travelling.
    expect(valve.snapshot()).toMatchObject({ state: 'OPENING', seqEcho: k1?.seq });
    expect(valve.writesWithSeq(k1!.seq!)).toBe(1);
  });
});
