import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';
import type { SimDevice } from '../../simulators/plant.js';
import type { CommandRecord } from '../../src/core/journal.js';

/**
 * SPEC §2: a stop is not queued behind travel. On the real parts (the pipeline with the real
 * drivers against sluice-sim, a real journal): the stop is dispatched at once, the command it
 * interrupts ends `failed` `INTERRUPTED` and is never written again, commands accepted before
 * the stop and not yet written end `rejected` `SUPERSEDED`, and commands after it run as usual.
 * Ground truth: the simulator's write log and live state. The cases across a crash and a
 * restart are in stop-restart.test.ts.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/**
 * An actuator at rest and a move `m` to 80 % whose write is held on the link for 0.8 s, past the
 * request timeout (250 ms) and within the guard (1.5 s): its answer will be lost, and it lands
 * late. Returns once the write has reached the PLC's front end (the hold itself is cleared for
 * the requests after it).
 */
async function moveHeldOnTheLink(
  confirmTimeoutMs: number,
): Promise<{ readonly harness: SimHarness; readonly actuator: SimDevice }> {
  h = await SimHarness.start({
    travelMs: 300,
    warm: true,
    timing: { redispatchGuardMs: 1_500, confirmTimeoutMs },
  });
  const actuator = h.device('a1');
  actuator.setFault({ kind: 'latency', ms: 800, on: 'write', when: 'before' });
  h.submit('m', { device: 'a1', action: 'move', position: 80 });
  await h.until(() => actuator.writers.length === 1, 5_000, 'the move on the link');
  actuator.clearFault('latency');
  return { harness: h, actuator };
}

/**
 * Ground truth of the late-move cases: the controller took the stop first (a no-op at rest),
 * the move after it; each reached it once.
 */
function expectStopThenMove(actuator: SimDevice, s: CommandRecord, m: CommandRecord): void {
  expect(actuator.log.map((e) => [e.seq, e.outcome, e.from, e.to])).toEqual([
    [s.seq, 'noop', 'IDLE', 'IDLE'],
    [m.seq, 'accepted', 'IDLE', 'MOVING'],
  ]);
  expect(actuator.writesWithSeq(s.seq!)).toBe(1);
  expect(actuator.writesWithSeq(m.seq!)).toBe(1);
}

describe('stop preempts travel', () => {
  for (const device of ['v1', 'u1']) {
    it(`stops ${device === 'v1' ? 'a Modbus' : 'an OPC UA'} valve near 40 %: the open is interrupted, never re-sent`, async () => {
      h = await SimHarness.start({
        travelMs: 1_500,
        opcua: device === 'u1',
        timing: { confirmTimeoutMs: 5_000 },
      });
      const valve = h.device(device);
      const open = h.submit('open-1', { device, action: 'open' }).record;
      await h.travelledTo(device, 40);
      h.submit('stop-1', { device, action: 'stop' });
      const stop = await h.settled('stop-1');
      const opened = await h.settled('open-1');
      expect(stop).toMatchObject({ state: 'confirmed', action: 'stop' });
      expect(stop.observed?.state).toBe('STOPPED');
      expect(opened).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
      expect(opened.detail).toMatch(/^stopped by stop-1 at \d+(\.\d)? %/);
      // Judged again after the stop as the write this life made and the controller
      // acknowledged, not as one "written by an earlier life of the daemon".
      expect(h.notes('open-1')).toContain(
        `dispatched: taken up again: sequence number ${opened.seq} (write acknowledged); settling by readback`,
      );
      // Ground truth: the valve rests where it was when the controller took the stop, short of
      // the end of its travel, and each key reached it exactly once. (Where that is depends on
      // how soon the stop went out after 40 %: on a loaded machine, later; the write log's
      // scan times say where it must be.)
      const live = valve.snapshot();
      expect(live.state).toBe('STOPPED');
      expect(live.position).toBeGreaterThan(35);
      expect(live.position).toBeLessThan(100);
      const [openTaken, stopTaken] = valve.writeLog.map((w) => w.settledAt);
      const travelled = ((stopTaken! - openTaken!) / 1_500) * 100;
      expect(Math.abs(live.position - travelled), `${travelled} %`).toBeLessThan(2);
      expect(valve.writesWithSeq(opened.seq!)).toBe(1);
      expect(valve.writesWithSeq(stop.seq!)).toBe(1);
      expect(valve.writeLog.map((w) => w.seq)).toEqual([open.seq ?? opened.seq, stop.seq]);
      expect(Math.abs(opened.observed!.position! - live.position)).toBeLessThan(1);
    });
  }

  it('supersedes the commands accepted before the stop; those after it run as usual', async () => {
    h = await SimHarness.start({ travelMs: 1_500, timing: { confirmTimeoutMs: 5_000 } });
    const valve = h.device('v1');
    h.submit('a', { device: 'v1', action: 'open' });
    h.submit('b', { device: 'v1', action: 'close' });
    h.submit('c', { device: 'v1', action: 'open' });
    await h.travelledTo('v1', 20);
    h.submit('s', { device: 'v1', action: 'stop' });
    h.submit('d', { device: 'v1', action: 'close' });
    const [a, b, c, s, d] = [
      await h.settled('a'),
      await h.settled('b'),
      await h.settled('c'),
      await h.settled('s'),
      await h.settled('d'),
    ];
    expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    for (const superseded of [b, c]) {
      expect(superseded).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
      expect(superseded.detail).toMatch(/superseded by the stop s/);
    }
    expect(s).toMatchObject({ state: 'confirmed' });
    expect(d).toMatchObject({ state: 'confirmed' });
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, s.seq, d.seq]);
    expect(valve.snapshot().state).toBe('CLOSED');
  });

  it('supersedes a command in flight that was not yet written', async () => {
    h = await SimHarness.start({ requestTimeoutMs: 1_000, timing: { redispatchGuardMs: 1_200 } });
    // Reads take 300 ms: the open is still reading its device when the stop comes.
    h.plant.plc('mb').setFault({ kind: 'latency', ms: 300, on: 'read' });
    h.submit('a', { device: 'v1', action: 'open' });
    h.submit('s', { device: 'v1', action: 'stop' });
    const [a, s] = [await h.settled('a'), await h.settled('s')];
    expect(a).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
    expect(s).toMatchObject({ state: 'confirmed' });
    expect(s.detail).toMatch(/no-op/);
    expect(h.device('v1').counters.writesReceived).toBe(0);
  });

  it('a stop that comes before the controller took the preempted write still stops it', async () => {
    h = await SimHarness.start({ travelMs: 1_500, timing: { confirmTimeoutMs: 5_000 } });
    const valve = h.device('v1');
    // The controller is busy: the open arrives (acknowledged) but is not taken until the stop
    // has arrived behind it. The hold is cleared then, not after a fixed time: a loaded machine
    // took longer than that (400 ms) to write the stop, and the open was taken and travelled
    // before the stop arrived.
    valve.setFault({ kind: 'hold' });
    h.submit('a', { device: 'v1', action: 'open' });
    await h.until(() => valve.counters.writesReceived === 1, 5_000, 'the open');
    h.submit('s', { device: 'v1', action: 'stop' });
    await h.until(() => valve.pendingWrites === 2, 10_000, 'the stop behind the open');
    valve.clearFault('hold');
    const [a, s] = [await h.settled('a'), await h.settled('s')];
    expect(s).toMatchObject({ state: 'confirmed' });
    expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    // Taken in arrival order, by one scan: the open, then the stop.
    const log = valve.writeLog;
    expect(log.map((w) => [w.seq, w.outcome])).toEqual([
      [a.seq, 'accepted'],
      [s.seq, 'accepted'],
    ]);
    expect(log[1]!.settledAt).toBe(log[0]!.settledAt);
    // One scan took both: the valve did not travel.
    expect(valve.snapshot().position).toBe(0);
    expect(['STOPPED', 'CLOSED']).toContain(valve.snapshot().state);
  });

  it('a stop that reaches the controller after the travel ended is a no-op there, and confirmed', async () => {
    h = await SimHarness.start({ travelMs: 600, timing: { confirmTimeoutMs: 3_000 } });
    const valve = h.device('v1');
    h.submit('a', { device: 'v1', action: 'open' });
    await h.travelledTo('v1', 60);
    // The stop is decided on OPENING and written; the controller's handshake is busy until the
    // valve is open, so the stop is taken in OPEN, where it changes nothing (SPEC §3).
    valve.setFault({ kind: 'hold' });
    h.submit('s', { device: 'v1', action: 'stop' });
    await h.until(() => valve.counters.writesReceived === 2, 5_000, 'the stop');
    await h.until(() => valve.snapshot().state === 'OPEN', 5_000, 'OPEN');
    valve.clearFault('hold');
    const [s, a] = [await h.settled('s'), await h.settled('a')];
    expect(s).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(s.observed).toMatchObject({ state: 'OPEN', seq: s.seq, position: 100 });
    expect(h.journal.history(s).map((e) => e.to)).toEqual(['accepted', 'dispatched', 'confirmed']);
    // Ground truth: the open was taken from CLOSED, the stop as a no-op in OPEN; each once.
    expect(valve.log.map((e) => [e.seq, e.outcome, e.from, e.to])).toEqual([
      [a.seq, 'accepted', 'CLOSED', 'OPENING'],
      [s.seq, 'noop', 'OPEN', 'OPEN'],
    ]);
    expect(valve.writesWithSeq(a.seq!)).toBe(1);
  });

  it('a move whose write, its answer lost, reaches the controller after the stop: neither is said to have held', async () => {
    // The move's request is held on the link past the request timeout (250 ms) and within the
    // guard, as the profile's contract allows: the driver replaces the connection, the stop
    // goes out on the new one and is taken first (a no-op: the actuator rests), then the move
    // lands and the actuator travels to 80 %. The stop used to be confirmed on its first
    // readback, and the move to end INTERRUPTED "stopped by s at 0 %", before the move landed.
    const { harness, actuator } = await moveHeldOnTheLink(5_000);
    harness.submit('s', { device: 'a1', action: 'stop' });
    const [s, m] = [await harness.settled('s'), await harness.settled('m')];
    // The stop was taken and then undone by the late move: it says so, and is not written again.
    expect(s).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH', attempts: 1 });
    expect(s.observed).toMatchObject({ seq: m.seq });
    expect(s.detail).toMatch(
      /^the controller took the stop \(it showed IDLE at 0 %\), then the write of m \(sequence number \d+\), whose answer had been lost and which reached it late: .*the stop did not hold, and it is not written again$/,
    );
    // The move did take effect, after the stop: its own readback says so, with its echo.
    expect(m).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 1 });
    expect(m.observed).toMatchObject({ state: 'IDLE', position: 80, seq: m.seq });
    expectStopThenMove(actuator, s, m);
    expect(actuator.snapshot()).toMatchObject({ state: 'IDLE', position: 80 });
  });

  it('a move whose write, its answer lost, reaches the controller right behind the stop: the stop says at once that it did not hold', async () => {
    // As above, but the controller's handshake is held (busy) while the stop arrives and the
    // late move lands behind it: one scan takes both, in order, and no image ever shows the
    // stop's echo — every readback of the stop shows the move's. The stop used to wait out its
    // whole confirm timeout (READBACK_TIMEOUT) while the actuator travelled.
    const { harness, actuator } = await moveHeldOnTheLink(20_000);
    actuator.setFault({ kind: 'hold' });
    harness.submit('s', { device: 'a1', action: 'stop' });
    await harness.until(
      () => actuator.pendingWrites === 2,
      5_000,
      'the stop, then the move, waiting',
    );
    const released = performance.now();
    actuator.clearFault('hold');
    const [s, m] = [await harness.settled('s'), await harness.settled('m')];
    expect(s).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH', attempts: 1 });
    expect(s.observed).toMatchObject({ seq: m.seq });
    expect(s.detail).toMatch(
      /^the controller shows the write of m \(sequence number \d+\), whose answer had been lost and which reached it after the stop was written, and has not shown the stop for \d+ ms since: the stop did not hold \(whether the controller took it first cannot be told\), and it is not written again$/,
    );
    // Settled on the evidence, not at its confirm timeout (20 s; settled() waits 10 s at most).
    expect(performance.now() - released).toBeLessThan(10_000);
    expect(m).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 1 });
    expect(m.observed).toMatchObject({ state: 'IDLE', position: 80, seq: m.seq });
    expectStopThenMove(actuator, s, m);
  });

  // A stop pressed twice (two operators, a retry under a new key): the second comes while the
  // first still waits for its worker. The first stop is not superseded by the second: it runs,
  // the travel stops, the open is judged INTERRUPTED, and the second is a no-op after it.
  for (const crash of [false, true]) {
    it(`a second stop before the first ran: both run, the open is interrupted${crash ? ', also when both are taken up after a crash' : ''}; the device keeps taking stops`, async () => {
      // After the crash, s1 is confirmed no sooner than the confirm timeout from the restart
      // (the open's write in doubt): kept just above the travel.
      h = await SimHarness.start({ travelMs: 1_500, timing: { confirmTimeoutMs: 2_500 } });
      const valve = h.device('v1');
      h.submit('a', { device: 'v1', action: 'open' });
      h.submit('b', { device: 'v1', action: 'close' });
      await h.travelledTo('v1', 30);
      // In one step: the first stop is still queued when the second is accepted.
      h.submit('s1', { device: 'v1', action: 'stop' });
      h.submit('c', { device: 'v1', action: 'close' });
      h.submit('s2', { device: 'v1', action: 'stop' });
      if (crash) {
        // On disk before the crash, as an intake or the admin endpoint answers only then
        // (a crash loses the batch still open).
        await h.journal.durable();
        await h.crash();
        expect(valve.counters.writesReceived).toBe(1);
        await h.restart();
      }
      const [a, b, s1, c, s2] = [
        await h.settled('a'),
        await h.settled('b'),
        await h.settled('s1'),
        await h.settled('c'),
        await h.settled('s2'),
      ];
      expect(s1).toMatchObject({ state: 'confirmed', code: 'OK' });
      expect(s1.observed?.state).toBe('STOPPED');
      expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
      expect(a.detail).toMatch(/^stopped by s1 at \d+(\.\d)? %/);
      expect(b).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
      expect(b.detail).toMatch(/superseded by the stop s1/);
      // Accepted after the first stop and before the second, never written: the second's.
      expect(c).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
      expect(c.detail).toMatch(/superseded by the stop s2/);
      expect(s2).toMatchObject({ state: 'confirmed', seq: null });
      expect(s2.detail).toMatch(/no-op/);
      // Ground truth: the open and the first stop, once each; the valve rests mid-travel.
      expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, s1.seq]);
      expect(valve.snapshot().state).toBe('STOPPED');
      // The device is free again, and a stop still preempts its travel.
      h.submit('d', { device: 'v1', action: 'close' });
      await h.until(() => valve.snapshot().state === 'CLOSING', 5_000, 'closing');
      h.submit('s3', { device: 'v1', action: 'stop' });
      const [d, s3] = [await h.settled('d'), await h.settled('s3')];
      expect(s3).toMatchObject({ state: 'confirmed', code: 'OK' });
      expect(d).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
      expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, s1.seq, d.seq, s3.seq]);
      expect(valve.snapshot()).toMatchObject({ state: 'STOPPED' });
      expect(valve.snapshot().position).toBeGreaterThan(0);
    });
  }

  // A stop pressed twice, and the first ends without taking effect (the controller refuses its
  // write: 0x0A, gateway path unavailable — not 0x06 busy, after which the same write is sent
  // again) while the open travels. The second, waiting behind it (queued with it, or
  // accepted while it was in flight), goes next and stops the travel; the open is taken up after
  // it. Taken up first, the open followed its travel to OPEN by its readbacks, and the second
  // stop waited for that, a no-op at the end of travel.
  for (const second of ['queued with the first', 'accepted while the first is in flight']) {
    it(`a first stop refused by the controller: the second (${second}) goes next and stops the travel`, async () => {
      h = await SimHarness.start({ travelMs: 3_000, timing: { confirmTimeoutMs: 5_000 } });
      const valve = h.device('v1');
      const plc = h.plant.plc('mb');
      h.submit('a', { device: 'v1', action: 'open' });
      await h.travelledTo('v1', 20);
      plc.setFault({ kind: 'exception', code: 0x0a, on: 'write', count: 1 });
      const inFlight = second !== 'queued with the first';
      // Reads take 150 ms: the first stop is still reading its device when the second comes.
      if (inFlight) plc.setFault({ kind: 'latency', ms: 150, on: 'read' });
      h.submit('s1', { device: 'v1', action: 'stop' });
      if (inFlight) {
        await h.until(() => h?.pipeline.device('v1')?.inFlight === 's1', 5_000, 's1 in flight');
      }
      h.submit('s2', { device: 'v1', action: 'stop' });
      plc.clearFault('latency');
      const [a, s1, s2] = [await h.settled('a'), await h.settled('s1'), await h.settled('s2')];
      expect(s1).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT' });
      expect(s2).toMatchObject({ state: 'confirmed', code: 'OK' });
      expect(s2.observed?.state).toBe('STOPPED');
      expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
      expect(a.detail).toMatch(/^stopped by s2 at \d+(\.\d)? %/);
      // Ground truth: the open and the second stop reached the valve (the first was refused),
      // and the valve rests short of the end of its travel.
      expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, s2.seq]);
      expect(valve.snapshot().state).toBe('STOPPED');
      expect(valve.snapshot().position).toBeLessThan(60);
    });
  }

  // A stop pressed again while the first one's effect is not seen: the first stop's write was
  // answered 0x04 (server device failure: whether it was applied is unknown) and not applied,
  // and the valve travels on. The second stop is written at once, preempting the first, which
  // is judged by its readbacks once the second is terminal. Queued behind the first, the
  // second waited for its confirm timeout (5 s) while the valve travelled to OPEN, and was a
  // no-op there.
  it("a second stop while the first one's outcome is unknown and the valve still travels is written at once", async () => {
    h = await SimHarness.start({ travelMs: 3_000, timing: { confirmTimeoutMs: 5_000 } });
    const valve = h.device('v1');
    const plc = h.plant.plc('mb');
    const a = h.submit('a', { device: 'v1', action: 'open' }).record;
    await h.travelledTo('v1', 20);
    plc.setFault({ kind: 'exception', code: 4, on: 'write', count: 1 });
    h.submit('s1', { device: 'v1', action: 'stop' });
    // The first stop's write was answered (the fault is used up), and a readback after it
    // shows the valve still opening.
    await h.until(
      () => plc.faults().length === 0 && valve.snapshot().position >= 30,
      5_000,
      'the first stop refused, the valve still opening',
    );
    const acceptedMono = performance.now();
    const at = valve.snapshot().position;
    h.submit('s2', { device: 'v1', action: 'stop' });
    await h.until(() => valve.writeLog.length === 2, 5_000, 'the second stop written');
    const writtenAfterMs = performance.now() - acceptedMono;
    const [opened, s1, s2] = [await h.settled('a'), await h.settled('s1'), await h.settled('s2')];
    // Ground truth: the open and the second stop reached the valve, the second within a few
    // scans of its acceptance, not after the first stop's 5 s; the valve rests where the
    // second stop found it, far short of the end of travel.
    expect(valve.writeLog.map((w) => [w.seq, w.outcome])).toEqual([
      [a.seq ?? opened.seq, 'accepted'],
      [s2.seq, 'accepted'],
    ]);
    expect(writtenAfterMs).toBeLessThan(1_000);
    expect(valve.snapshot().state).toBe('STOPPED');
    expect(valve.snapshot().position).toBeLessThan(at + 15);
    expect(s2).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 1 });
    expect(s2.observed).toMatchObject({ state: 'STOPPED', seq: s2.seq });
    // The first stop never took effect: not confirmed (I2), never written again (I1).
    expect(s1).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
    expect(s1.detail).toMatch(/^stopped by s2 at \d+(\.\d)? %/);
    expect(valve.writesWithSeq(s1.seq!)).toBe(0);
    expect(opened).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
    expect(opened.detail).toMatch(/^stopped by s2 at \d+(\.\d)? %/);
    expect(valve.writesWithSeq(opened.seq!)).toBe(1);
    // Both stops settle far inside the first one's confirm timeout.
    expect(s1.settledAt! - s2.acceptedAt).toBeLessThan(2_000);
  });

  // The same, but the first stop's reply is lost after the valve took it: the second stop waits
  // for the first's write to time out on the connection (one request at a time), finds the
  // valve stopped, and is a no-op; the first is confirmed by its own echo.
  it("a second stop while the first one's reply is lost: the first, taken, is confirmed by its echo; the second is a no-op", async () => {
    h = await SimHarness.start({ travelMs: 3_000, timing: { confirmTimeoutMs: 5_000 } });
    const valve = h.device('v1');
    const plc = h.plant.plc('mb');
    const a = h.submit('a', { device: 'v1', action: 'open' }).record;
    await h.travelledTo('v1', 20);
    plc.setFault({ kind: 'drop', on: 'write', count: 1 });
    h.submit('s1', { device: 'v1', action: 'stop' });
    await h.until(() => valve.writeLog.length === 2, 5_000, 'the first stop written');
    h.submit('s2', { device: 'v1', action: 'stop' });
    const [opened, s1, s2] = [await h.settled('a'), await h.settled('s1'), await h.settled('s2')];
    expect(s1).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 1 });
    expect(s1.observed).toMatchObject({ state: 'STOPPED', seq: s1.seq });
    expect(s2).toMatchObject({ state: 'confirmed', code: 'OK', seq: null });
    expect(s2.detail).toMatch(/no-op/);
    expect(opened).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    expect(opened.detail).toMatch(/^stopped by s1 at/);
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq ?? opened.seq, s1.seq]);
    expect(valve.snapshot().state).toBe('STOPPED');
    expect(s2.settledAt! - s2.acceptedAt).toBeLessThan(2_000);
  });
});
