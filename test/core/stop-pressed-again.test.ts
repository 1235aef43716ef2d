import { describe, it, type ExpectStatic, type TestContext } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';
import { lockHolder } from '../helpers/journal-lock.js';
import { holdThreadPool } from '../helpers/thread-pool.js';

/**
 * SPEC §2, a stop is not queued behind travel: a stop pressed again while the first stop is in
 * flight and not yet written (its read of the device, or its dispatch being made durable) waits
 * for it, as the first is written in a moment and mostly takes effect. When it does not (its
 * write answered 0x04, the valve still travelling), the second takes the first over at the
 * first readback that shows so (Preemption.stopOvertakes), as it does when it comes after that
 * readback. The real pipeline and journal against sluice-sim; the simulator's write log and the
 * valve's travel are the ground truth.
 */
describe('a stop pressed again while the first stop is not yet written', () => {
  it('while its dispatch is being made durable: the second is written once a readback shows the first did not take effect, and the valve stops', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await SimHarness.start({ travelMs: 6_000, timing: { confirmTimeoutMs: 5_000 } });
    onTestFinished(() => h.close());
    const plc = h.plant.plc('mb');
    // The controller will answer the first stop's write 0x04 (busy: not processed).
    const pool = await firstStopAtItsBarrier(h, onTestFinished, { atPercent: 10, busyWrites: 1 });
    // Claimed while the first stop's dispatch is being made durable: not written yet (the
    // controller's 0x04 still to come), so the second queues behind it.
    expect(plc.faults()).toHaveLength(1);
    h.submit('stop-2', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    await pool.release();
    // The first stop is written, answered 0x04; the valve goes on opening.
    await h.until(() => plc.faults().length === 0, 3_000, "the first stop's write answered 0x04");

    await secondStopHeld(h, expect);
  });

  it('so is a stop pressed again before the first one ran', async ({ expect, onTestFinished }) => {
    const h = await SimHarness.start({ travelMs: 6_000, timing: { confirmTimeoutMs: 5_000 } });
    onTestFinished(() => h.close());
    const valve = h.device('v1');
    const plc = h.plant.plc('mb');
    h.submit('open-1', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await h.until(() => valve.snapshot().position >= 10, 10_000, 'v1 at 10 %');
    // The controller will answer the first stop's write 0x04 (not processed). Both stops are
    // claimed before the first has taken the device: the second queues behind the first.
    plc.setFault({ kind: 'exception', code: 4, on: 'write', count: 1 });
    h.submit('stop-1', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    h.submit('stop-2', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    await h.until(() => plc.faults().length === 0, 3_000, "the first stop's write answered 0x04");

    await secondStopHeld(h, expect);
  });
});

/**
 * A third stop pressed behind the second, both while the first is not yet written: each stop
 * pressed behind another is remembered (lane.stopsBehind), not only the first such, so the third
 * takes the second over as the second took the first, at the first readback that shows it did
 * not take effect (both writes answered 0x04), and not once the second's confirm timeout has
 * passed (5 s: the valve then open to 94 %).
 */
describe('a stop pressed a third time while the first stop is not yet written', () => {
  it('while its dispatch is being made durable: the third is written once a readback shows the second did not take effect, and the valve stops', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await SimHarness.start({ travelMs: 6_000, timing: { confirmTimeoutMs: 5_000 } });
    onTestFinished(() => h.close());
    // The controller will answer the first two stop writes 0x04 (not processed).
    const pool = await firstStopAtItsBarrier(h, onTestFinished, { atPercent: 10, busyWrites: 2 });
    // Both claimed while the first stop's dispatch is being made durable: the second queues
    // behind it, the third behind the second.
    h.submit('stop-2', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    h.submit('stop-3', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    await pool.release();

    await thirdStopHeld(h, expect);
  });

  it('so is a third stop pressed before the first one ran', async ({ expect, onTestFinished }) => {
    const h = await SimHarness.start({ travelMs: 6_000, timing: { confirmTimeoutMs: 5_000 } });
    onTestFinished(() => h.close());
    const valve = h.device('v1');
    const plc = h.plant.plc('mb');
    h.submit('open-1', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await h.until(() => valve.snapshot().position >= 10, 10_000, 'v1 at 10 %');
    plc.setFault({ kind: 'exception', code: 4, on: 'write', count: 2 });
    h.submit('stop-1', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    h.submit('stop-2', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    h.submit('stop-3', { device: 'v1', action: 'stop', ttlMs: 30_000 });

    await thirdStopHeld(h, expect);
  });
});

/**
 * open-1 travelling to `atPercent`, then stop-1 with its read of the device held until the
 * thread pool is held, so that its dispatch's barrier waits for the pool, as on a disk whose
 * flush stalls; the controller set to answer the next `busyWrites` writes 0x04. Returns the held
 * pool once stop-1's dispatch is journaled (not yet durable, not written).
 */
async function firstStopAtItsBarrier(
  h: SimHarness,
  onTestFinished: TestContext['onTestFinished'],
  o: { readonly atPercent: number; readonly busyWrites: number },
): Promise<ReturnType<typeof holdThreadPool>> {
  const valve = h.device('v1');
  h.submit('open-1', { device: 'v1', action: 'open', ttlMs: 30_000 });
  await h.until(() => valve.snapshot().position >= o.atPercent, 10_000, `v1 at ${o.atPercent} %`);
  valve.setFault({ kind: 'stall', on: 'read', count: 1 });
  h.submit('stop-1', { device: 'v1', action: 'stop', ttlMs: 30_000 });
  await h.until(
    () => !valve.faults().some((f) => f.kind === 'stall' && (f.remaining ?? 1) > 0),
    5_000,
    "the first stop's read held",
  );
  await h.journal.durable();
  const pool = holdThreadPool();
  onTestFinished(() => pool.release());
  if (o.busyWrites > 0) {
    h.plant.plc('mb').setFault({ kind: 'exception', code: 4, on: 'write', count: o.busyWrites });
  }
  valve.clearFault('stall');
  await h.until(() => h.get('stop-1')?.seq != null, 5_000, "the first stop's dispatch");
  return pool;
}

/**
 * Ground truth of the third-stop cases: the first two stop writes answered 0x04 (never applied);
 * the third stop reaches the controller while the second is still open, and the valve stops
 * well short of the end of its travel; no stop was written twice, nor the open again. Every
 * command ends: the third confirmed, the two stops before it and the open interrupted by it
 * (the controller took the third).
 */
async function thirdStopHeld(h: SimHarness, expect: ExpectStatic): Promise<void> {
  const valve = h.device('v1');
  const plc = h.plant.plc('mb');
  await h.until(() => plc.faults().length === 0, 3_000, 'the first two stop writes answered 0x04');
  await h.until(() => h.get('stop-3')?.seq != null, 3_000, 'the third stop dispatched');
  const third = h.get('stop-3')!;
  await h.until(() => valve.writesWithSeq(third.seq!) === 1, 3_000, 'the third stop written');
  expect(h.get('stop-2')?.state).toBe('dispatched');
  const [stop3, stop2, stop1, open1] = [
    await h.settled('stop-3'),
    await h.settled('stop-2'),
    await h.settled('stop-1'),
    await h.settled('open-1'),
  ];
  expect(stop3).toMatchObject({ state: 'confirmed', code: 'OK' });
  expect(valve.snapshot().state).toBe('STOPPED');
  expect(valve.snapshot().position).toBeLessThan(60);
  expect(valve.writeLog.map((w) => w.seq)).toEqual([open1.seq, stop3.seq]);
  for (const stop of [stop1, stop2]) {
    expect(valve.writesWithSeq(stop.seq!)).toBe(0);
    expect(stop).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    expect(stop.detail).toContain('stopped by stop-3');
  }
  expect(open1).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
}

/**
 * Ground truth of both cases: the second stop reaches the controller while the first is still
 * open (its confirm timeout is 5 s), and the valve stops well short of the end of its travel; the
 * first stop never reached the controller's program, neither was written twice, nor the open
 * again; the first, judged once the second is terminal, was interrupted (the controller took the
 * second), as was the open.
 */
async function secondStopHeld(h: SimHarness, expect: ExpectStatic): Promise<void> {
  const valve = h.device('v1');
  await h.until(() => h.get('stop-2')?.seq != null, 3_000, 'the second stop dispatched');
  const second = h.get('stop-2')!;
  await h.until(() => valve.writesWithSeq(second.seq!) === 1, 3_000, 'the second stop written');
  expect(h.get('stop-1')?.state).toBe('dispatched');
  const [stop2, stop1, open1] = [
    await h.settled('stop-2'),
    await h.settled('stop-1'),
    await h.settled('open-1'),
  ];
  expect(stop2).toMatchObject({ state: 'confirmed', code: 'OK' });
  expect(valve.snapshot().state).toBe('STOPPED');
  expect(valve.snapshot().position).toBeLessThan(60);
  expect(valve.writesWithSeq(stop1.seq!)).toBe(0);
  expect(valve.writesWithSeq(stop2.seq!)).toBe(1);
  expect(valve.writesWithSeq(open1.seq!)).toBe(1);
  expect(stop1).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
  expect(open1).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
}

/**
 * A stop pressed again while the first stop waits to be taken up — its settlement lost to a
 * journal stall, the command left to the sweep — queues behind it while the device shows the
 * first taken (STOPPED, its echo). When a readback then shows the device travelling without its
 * echo (another master's open), the second takes the first over (stopBehindRejudged), and is
 * written at once: not when the sweep comes to the device (a second in the daemon; the sweep
 * here is ten minutes apart, so that it cannot be what runs it).
 */
describe('a stop pressed again while the first waits to be taken up', () => {
  it('taken over at a readback that shows the device travelling: the second is written at once', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await SimHarness.start({
      warm: true,
      travelMs: 10_000,
      timing: { confirmTimeoutMs: 5_000 },
      monitorMs: 20,
      sweepMs: 600_000,
    });
    onTestFinished(() => h.close());
    const valve = h.device('v1');
    const locker = await lockHolder(h.path);
    onTestFinished(() => {
      locker.close();
    });
    const v1 = () => h.pipeline.devices().find((d) => d.id === 'v1')!;
    // The first stop's dispatch waits for the held pool: meanwhile another process takes the
    // journal's write lock, so that the stop, written and seen taken, cannot be settled.
    const pool = await firstStopAtItsBarrier(h, onTestFinished, { atPercent: 5, busyWrites: 0 });
    const stop1 = h.get('stop-1')!;
    // Held until the stop was left to the sweep, not for a fixed time (1.5 s), which a loaded
    // machine could spend before the stop's settlement was tried.
    await locker.hold();
    await pool.release();
    await h.until(() => valve.writesWithSeq(stop1.seq!) === 1, 5_000, 'the first stop written');
    await h.until(() => v1().unresolved === 'stop-1', 5_000, 'the first stop left to the sweep');
    expect(h.get('stop-1')?.state).toBe('dispatched');
    expect(valve.snapshot()).toMatchObject({ state: 'STOPPED', seqEcho: stop1.seq });
    // The lock ends; the device, waiting for the sweep, is read by the idle monitor. One such
    // read is held on the link while the second stop is pressed: the device rests, showing the
    // first stop's echo, so the second queues behind it.
    await locker.release();
    valve.setFault({ kind: 'stall', on: 'read', count: 1 });
    await h.until(
      () => !valve.faults().some((f) => f.kind === 'stall' && (f.remaining ?? 1) > 0),
      5_000,
      "the monitor's read held",
    );
    h.submit('stop-2', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    expect(v1()).toMatchObject({ unresolved: 'stop-1', queued: 1 });
    // Another master opens the valve; the held read then shows it travelling, without the first
    // stop's echo: the second stop takes the first over.
    valve.receiveWrite({ code: 1, setpoint: 0, seq: 61_000 });
    await h.until(() => valve.snapshot().state === 'OPENING', 1_000, 'the other master’s open');
    valve.clearFault('stall');
    await h.until(() => h.get('stop-2')?.seq != null, 3_000, 'the second stop dispatched');
    const stop2 = h.get('stop-2')!;
    await h.until(() => valve.writesWithSeq(stop2.seq!) === 1, 3_000, 'the second stop written');
    const [second, first, open1] = [
      await h.settled('stop-2'),
      await h.settled('stop-1'),
      await h.settled('open-1'),
    ];
    expect(second).toMatchObject({ state: 'confirmed', code: 'OK' });
    // Ground truth: each write once, the valve stopped where the second stop found it.
    expect(valve.snapshot().state).toBe('STOPPED');
    expect(valve.writeLog.map((w) => w.seq)).toEqual([open1.seq, first.seq, 61_000, second.seq]);
  });
});
