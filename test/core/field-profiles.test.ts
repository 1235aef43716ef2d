import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * The field profiles of devices/profiles read as they promise, on the real parts: the pipeline
 * with the real Modbus driver against sluice-sim's field layouts (test/helpers/sim-harness.ts,
 * `field`), a real journal. Ground truth: the simulator's write log and live state.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** Travel sticks: the open ends in FAULT 0x81 (the controller's travel timeout). */
async function faulted(harness: SimHarness, device: string): Promise<void> {
  const valve = harness.device(device);
  valve.setFault({ kind: 'stuck-travel' });
  harness.submit('stuck-open', { device, action: 'open' });
  expect(await harness.settled('stuck-open')).toMatchObject({
    state: 'failed',
    code: 'DEVICE_FAULT',
  });
  expect(valve.snapshot().state).toBe('FAULT');
  valve.clearFault('stuck-travel');
}

describe('limit-switch valve (no echo, no fault code, no clock)', () => {
  it('a reset from FAULT is confirmed once the controller takes it, not failed on the image from before its scan', async () => {
    // Scans 30 ms apart: the first readback after the write comes before the scan that takes it.
    h = await SimHarness.start({ field: true, scanMs: 30 });
    const valve = h.device('lsv');
    await faulted(h, 'lsv');
    h.submit('r', { device: 'lsv', action: 'reset' });
    const r = await h.settled('r');
    expect(r).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(['STOPPED', 'CLOSED', 'OPEN']).toContain(r.observed?.state);
    // Ground truth: the reset was written once and taken; the valve is out of FAULT.
    expect(valve.writeLog.map((w) => [w.code, w.outcome])).toEqual([
      [1, 'accepted'],
      [4, 'accepted'],
    ]);
    expect(valve.snapshot().state).not.toBe('FAULT');
  });

  it('a grace not longer than the scan fails an open the controller then carries out: why profiles refuse it', async () => {
    // The timing a profile with mismatchGraceMs <= scanMs would give (parseProfile refuses it;
    // the harness builds its profiles in code): scans a second apart (the simulator's longest),
    // a grace of 80 ms. The readbacks before the scan that takes the write show CLOSED, as a
    // refusal would. The write lands a moment after the first scan, which the simulator runs
    // at its start: the next one comes more than 80 ms after it unless the submit is delayed
    // by most of a second (it was, now and then, on a loaded runner with scans 200 ms apart).
    h = await SimHarness.start({
      field: true,
      scanMs: 1000,
      timing: { scanMs: 1000, mismatchGraceMs: 80 },
    });
    const valve = h.device('lsv');
    h.submit('o', { device: 'lsv', action: 'open' });
    expect(await h.settled('o')).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH' });
    // Ground truth: the controller took that one open at its scan and opened: the failure was
    // false, and a client told so may send it again.
    await h.until(() => valve.snapshot().state === 'OPEN', 5_000, 'lsv open');
    expect(valve.writeLog.map((w) => [w.code, w.outcome])).toEqual([[1, 'accepted']]);
  });

  it('a FAULT that outlasts the grace after a reset ends DEVICE_FAULT, saying so', async () => {
    h = await SimHarness.start({ field: true });
    const valve = h.device('lsv');
    await faulted(h, 'lsv');
    // The controller's handshake stays busy past the profile's mismatch grace (80 ms here):
    // without an echo nothing tells a reset not yet taken from one that left the fault.
    valve.setFault({ kind: 'hold' });
    h.submit('r', { device: 'lsv', action: 'reset' });
    const r = await h.settled('r');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT', faultCode: null });
    expect(r.observed?.state).toBe('FAULT');
    expect(r.detail).toMatch(
      /^the controller still shows FAULT 80 ms after the reset was written: it did not clear the fault/,
    );
    // Ground truth: the reset reached the controller once and still waits for its scan.
    expect(valve.writeLog.map((w) => [w.code, w.outcome])).toEqual([
      [1, 'accepted'],
      [4, null],
    ]);
    expect(valve.snapshot()).toMatchObject({ state: 'FAULT', pendingWrites: 1 });
  });
});

describe('float positioner (float32 position and setpoint, low word first)', () => {
  it('a move and a stop say the positions the float registers carry, not their binary expansion', async () => {
    h = await SimHarness.start({ field: true, travelMs: 1_500 });
    const positioner = h.device('fcv');
    h.submit('m1', { device: 'fcv', action: 'move', position: 33.33 });
    const m1 = await h.settled('m1');
    // Read back from the float32 register it reached, 33.33 is 33.33000183105469 in binary.
    expect(m1).toMatchObject({ state: 'confirmed', observed: { state: 'IDLE', position: 33.33 } });
    h.submit('m2', { device: 'fcv', action: 'move', position: 90 });
    await h.until(() => positioner.snapshot().position >= 50, 10_000, 'fcv past 50 %');
    h.submit('s', { device: 'fcv', action: 'stop' });
    const [s, m2] = [await h.settled('s'), await h.settled('m2')];
    expect(s).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(m2).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    // Ground truth: where the positioner stopped, as its float32 register carries it.
    const stoppedAt = m2.observed!.position!;
    expect(Math.fround(stoppedAt)).toBe(Math.fround(positioner.published.rawPosition));
    expect(m2.detail).toBe(
      `stopped by s at ${String(stoppedAt)} %: the controller took the stop and shows IDLE`,
    );
    expect(String(stoppedAt).replace(/^\d+\.?/, '').length).toBeLessThanOrEqual(6);
  });
});
