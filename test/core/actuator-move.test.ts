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
