import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * The actuator's `move` (SPEC §3, positioner profile) on the real parts: the pipeline with the
 * real Modbus driver against sluice-sim, a real journal. Ground truth: the simulator's command
 * log and live state.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('a move that rests away from its setpoint', () => {
  it('ends READBACK_MISMATCH naming the setpoint, the tolerance and where the actuator rests', async () => {
    h = await SimHarness.start({ travelMs: 1_500, warm: true });
    const actuator = h.device('a1');
    h.submit('m', { device: 'a1', action: 'move', position: 80 });
    await h.until(
      () => actuator.published.state === 'MOVING' && actuator.published.position > 10,
      5_000,
      'a1 moving',
    );
    // Taken by hand at the panel and put at 30 %, then back in REMOTE, all while the image is
    // frozen: the bridge never sees LOCAL, only an actuator resting in IDLE, with the move's
    // echo, 50 % short of its setpoint.
    actuator.setFault({ kind: 'frozen' });
    actuator.setLocal(true, 30);
    await h.until(() => actuator.state === 'LOCAL', 5_000, 'LOCAL');
    actuator.setLocal(false);
    await h.until(() => actuator.state === 'IDLE', 5_000, 'back in REMOTE');
    actuator.clearFault('frozen');
    const m = await h.settled('m');
    expect(m).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH', attempts: 1 });
    expect(m.observed).toMatchObject({ state: 'IDLE', position: 30, seq: m.seq });
    // It used to say "expected IDLE; the controller took the command and rests in IDLE".
    expect(m.detail).toBe(
      'expected IDLE at 80 % (within 1 %); the controller took the command and rests in IDLE at 30 %',
    );
    // Ground truth: the move was taken once, and the actuator rests where the detail says.
    expect(actuator.log.map((e) => [e.seq, e.outcome])).toEqual([[m.seq, 'accepted']]);
    expect(actuator.snapshot()).toMatchObject({ state: 'IDLE', position: 30 });
  });
});

describe('a reset while the cause of the fault persists', () => {
  it('is never confirmed on the one scan the controller shows IDLE: DEVICE_FAULT 0x82 each time', async () => {
    h = await SimHarness.start({ travelMs: 1_500, warm: true });
    const actuator = h.device('a1');
    // A broken position sensor: the controller leaves FAULT when reset, and falls back into
    // FAULT 0x82 at its next scan while the sensor stays broken.
    actuator.setFault({ kind: 'position-sensor' });
    await h.until(() => actuator.published.state === 'FAULT', 5_000, 'FAULT');
    for (const key of ['r1', 'r2', 'r3', 'r4', 'r5']) {
      h.submit(key, { device: 'a1', action: 'reset' });
      const r = await h.settled(key);
      // Whether a readback fell on the scan that showed IDLE was luck: it used to be
      // "confirmed" then, and DEVICE_FAULT otherwise.
      expect(r, key).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT', faultCode: '0x82' });
      expect(r.observed).toMatchObject({ state: 'FAULT', seq: r.seq });
      expect(r.detail).toMatch(
        /^the controller took the reset and (showed IDLE, then went back to FAULT \(fault 0x82\) at a later scan: the cause of the fault persists|shows FAULT \(fault 0x82\): the fault did not clear, or came back at once)$/,
      );
    }
    // Ground truth: each reset was taken (out of FAULT for a scan), and the device is in FAULT.
    expect(actuator.log.map((e) => [e.outcome, e.from, e.to])).toEqual(
      Array.from({ length: 5 }, () => ['accepted', 'FAULT', 'IDLE']),
    );
    expect(actuator.snapshot()).toMatchObject({ state: 'FAULT', faultCode: 0x82 });
    // Once the sensor is repaired, a reset is confirmed.
    actuator.clearFault('position-sensor');
    h.submit('r6', { device: 'a1', action: 'reset' });
    expect(await h.settled('r6')).toMatchObject({
      state: 'confirmed',
      observed: { state: 'IDLE' },
    });
  });
});
