import { afterEach, describe, expect, it } from 'vitest';
import { PROFILES } from '../helpers/fixtures.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A controller state the profile does not know reads as `UNKNOWN(…)`, on which the bridge never
 * acts; the controller answers every read, so a command that sees only such a state ends
 * `READBACK_TIMEOUT` naming it (docs/device-profiles.md, "States as bits"), never
 * DEVICE_UNREACHABLE (a written command without a readback the profile can read, a command not
 * yet written at its deadline) nor "the device has not answered since … check the PLC and its
 * link". Here the profile gives STOPPED the code 7, so the simulator's STOPPED (code 4) reads
 * `UNKNOWN(4)`.
 *
 * Real parts: the pipeline with the real Modbus driver against sluice-sim's valve `v1`
 * (test/helpers/sim-harness.ts), a real journal. Ground truth: the simulator's command log.
 */

let h: SimHarness | undefined;
const valve = PROFILES.get('valve')!;
afterEach(async () => {
  PROFILES.set('valve', valve);
  await h?.close();
  h = undefined;
});

/** The shipped valve profile, with STOPPED on a code the simulator never reports. */
function stoppedUnknown(): void {
  PROFILES.set('valve', {
    ...valve,
    controller: {
      ...valve.controller,
      stateCodes: { ...valve.controller.stateCodes!, STOPPED: 7 },
    },
  });
}

describe('a command that sees only a state the profile does not know', () => {
  it('a stop written while OPENING ends READBACK_TIMEOUT naming the state', async () => {
    stoppedUnknown();
    h = await SimHarness.start({ warm: true, travelMs: 2_000 });
    const v1 = h.device('v1');
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 3_000 });
    await h.until(
      () => v1.published.state === 'OPENING' && v1.published.position > 10,
      5_000,
      'opening',
    );
    h.submit('s', { device: 'v1', action: 'stop' });
    const s = await h.settled('s');
    // Ground truth: the controller took the stop; it answers every read (STOPPED, code 4).
    expect(v1.log.at(-1)).toMatchObject({ seq: s.seq, outcome: 'accepted', to: 'STOPPED' });
    expect(s).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
    expect(s.detail).toContain(
      'the controller reports a state the profile does not know (UNKNOWN(4)',
    );
    expect(s.detail).not.toContain('has not answered');
  }, 30_000);

  it('a command not yet written ends READBACK_TIMEOUT at its deadline naming the state, unwritten', async () => {
    stoppedUnknown();
    h = await SimHarness.start({ warm: true, travelMs: 300 });
    const v1 = h.device('v1');
    // Another master opens the valve and stops it on its way: it rests in STOPPED.
    v1.receiveWrite({ code: 1, setpoint: 0, seq: 50_000 });
    await h.until(() => v1.published.state === 'OPENING', 5_000, 'opening');
    v1.receiveWrite({ code: 3, setpoint: 0, seq: 50_001 });
    await h.until(() => v1.published.state === 'STOPPED', 5_000, 'stopped');
    h.submit('c', { device: 'v1', action: 'close', ttlMs: 1_000 });
    const c = await h.settled('c');
    expect(c).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT', seq: null });
    expect(c.detail).toContain('the controller reports a state it does not know (UNKNOWN(4))');
    expect(c.detail).toContain('nothing was written');
    // Ground truth: no write of the bridge reached the controller (the command has ended).
    expect(v1.log.map((e) => e.seq)).toEqual([50_000, 50_001]);
  }, 30_000);
});
