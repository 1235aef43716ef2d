import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * The idle-device monitor reads every device once per interval. The devices of a PLC share
 * one connection, so reading them all at the same moment would put a burst of reads ahead of
 * any command's fresh read or readback once a period. On the real simulator, by the times it
 * answered each device's reads: the three devices of the Modbus PLC are read spread over the
 * interval, not bunched.
 */

const INTERVAL_MS = 600;
let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('idle-device monitor', () => {
  it('spreads its reads of a PLC’s devices over the interval', async () => {
    h = await SimHarness.start({ monitorMs: INTERVAL_MS });
    const ids = h.pipeline.devices().map((d) => d.id);
    expect(ids.length).toBeGreaterThanOrEqual(3);
    // Ground truth: when the simulator answered a read of each device's registers.
    const reads = (id: string): number[] => h!.device(id).readLog;
    // Four reads of each: the first may be the start-up's, the last three the monitor's.
    await h.until(() => ids.every((id) => reads(id).length >= 4), 10_000, 'reads');
    const last = ids.map((id) => reads(id).slice(-3));
    // Every pair of devices: no read of one within a sixth of the interval of a read of the
    // other (evenly spread, three devices are a third apart; bunched, they are milliseconds).
    for (let a = 0; a < last.length; a++) {
      for (let b = a + 1; b < last.length; b++) {
        const gaps = (last[a] ?? []).flatMap((x) => (last[b] ?? []).map((y) => Math.abs(x - y)));
        expect(Math.min(...gaps), `${ids[a]} and ${ids[b]}`).toBeGreaterThan(INTERVAL_MS / 6);
      }
    }
  });
});
