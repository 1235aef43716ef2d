import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A positioner that goes to FAULT when it refuses a command (`refusal: fault`) keeps fault
 * 0x88 until a reset, also through a later command it takes as a no-op. A stop, decided on
 * MOVING and taken after another master's refused move put the positioner in FAULT, shows its
 * own echo with FAULT and 0x88: not the controller refusing the stop (no state refuses a stop),
 * but the device in FAULT from an earlier refusal. It ends `failed` DEVICE_FAULT 0x88 saying
 * so (docs/device-profiles.md, "A command the controller refuses"), where it ended `rejected`
 * ILLEGAL_TRANSITION "the controller refused stop". The move the stop preempted is not
 * INTERRUPTED either: the refusal ended its travel before the stop, a no-op in FAULT, was taken.
 * It ends `failed` DEVICE_FAULT 0x88 saying the stop interrupted nothing, where it ended
 * INTERRUPTED "stopped by s".
 *
 * Real parts: the pipeline with the real Modbus driver against sluice-sim's float positioner
 * `fcv` (test/helpers/sim-harness.ts, `field`), a real journal. The simulator's `hold` fault
 * (its command handshake busy) makes both writes wait for one scan, so that the foreign move
 * is taken first. Ground truth: the simulator's command log.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('a stop taken by a refusal:fault positioner already in FAULT 0x88', () => {
  it('ends DEVICE_FAULT 0x88 naming the earlier refusal, not as the controller refusing the stop; the move it preempted is not INTERRUPTED', async () => {
    h = await SimHarness.start({ field: true, travelMs: 10_000, warm: false });
    const fcv = h.device('fcv');
    h.submit('m', { device: 'fcv', action: 'move', position: 90 });
    await h.until(
      () => fcv.published.state === 'MOVING' && fcv.published.position > 2,
      5_000,
      'moving',
    );
    // The handshake is busy for a moment: writes wait for a later scan, the image still publishes.
    fcv.setFault({ kind: 'hold' });
    // Another master's illegal move (a move while MOVING) reaches the controller first...
    fcv.receiveWrite({ code: 1, setpoint: 20, seq: 61_000 });
    // ...then the operator's stop, decided on MOVING (the image shows it) and written.
    h.submit('s', { device: 'fcv', action: 'stop' });
    await h.until(() => fcv.pendingWrites === 2, 5_000, 'stop written');
    fcv.clearFault('hold');
    const s = await h.settled('s');
    // Ground truth: the controller refused the foreign move, and took the stop as a no-op in FAULT.
    const log = fcv.log.map((e) => [e.seq, e.outcome, e.from, e.to]);
    expect(log.slice(-2)).toEqual([
      [61_000, 'rejected-0x88', 'MOVING', 'FAULT'],
      [s.seq, 'noop', 'FAULT', 'FAULT'],
    ]);
    expect(s).toMatchObject({
      state: 'failed',
      code: 'DEVICE_FAULT',
      faultCode: '0x88',
      observed: { state: 'FAULT', seq: s.seq },
    });
    expect(s.detail).toContain('it refused an earlier command (no state refuses a stop)');
    // The preempted move, judged after the stop: the controller took it, then refused the
    // foreign move, and took the stop in FAULT.
    expect(log.slice(-3)[0]).toEqual([1, 'accepted', 'IDLE', 'MOVING']);
    const m = await h.settled('m');
    expect(m).toMatchObject({
      state: 'failed',
      code: 'DEVICE_FAULT',
      faultCode: '0x88',
      observed: { state: 'FAULT', seq: s.seq },
    });
    expect(m.detail).toContain(`before it took the stop s, a no-op there`);
    expect(m.detail).toContain('the stop interrupted nothing');
  }, 30_000);
});
