import { afterEach, describe, expect, it } from 'vitest';
import { SIM_TIMING, SimHarness } from '../helpers/sim-harness.js';

/**
 * A controller skew measured over a slow round trip is good to only ± half of it: correct,
 * but too coarse to place readbacks on the controller's scans (readback-pacing.ts). The
 * idle-device monitor measures such an estimate again once the connection answers quickly.
 * On the real simulator, whose clock is set 3 s ahead: the refined estimate still holds the
 * true offset (ground truth: the simulator's own clock setting).
 */

const OFFSET_MS = 3_000;
let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('controller skew between commands', () => {
  it('an estimate taken over a slow link is measured again by the monitor once it is quick', async () => {
    h = await SimHarness.start({ monitorMs: 50 });
    const plc = h.plant.plc('mb');
    plc.setClock({ offsetMs: OFFSET_MS, driftPpm: 0 });
    // Every read answered 40 ms late: the estimate measured for the command is ± ~20 ms.
    plc.setFault({ kind: 'latency', ms: 40, when: 'after', on: 'read' });
    h.submit('k1', { device: 'v1', action: 'open' });
    expect(await h.settled('k1')).toMatchObject({ state: 'confirmed' });
    const coarse = h.pipeline.device('v1')?.skew;
    expect(coarse?.uncertaintyMs).toBeGreaterThan(10);
    expect(Math.abs((coarse?.offsetMs ?? 0) - OFFSET_MS)).toBeLessThanOrEqual(
      (coarse?.uncertaintyMs ?? 0) + 1,
    );

    plc.clearFault('latency');
    const fine = (): boolean =>
      (h!.pipeline.device('v1')?.skew?.uncertaintyMs ?? Infinity) <= SIM_TIMING.scanMs / 20;
    // Without the re-measurement the coarse estimate would stand until it is 60 s old.
    await h.until(fine, 5_000, 'a fine skew estimate');
    const refined = h.pipeline.device('v1')?.skew;
    expect(Math.abs((refined?.offsetMs ?? 0) - OFFSET_MS)).toBeLessThanOrEqual(
      (refined?.uncertaintyMs ?? 0) + 1,
    );
  });
});
