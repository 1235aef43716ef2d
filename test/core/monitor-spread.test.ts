import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * The idle-device monitor reads every device once per interval. The devices of a PLC share
 * one connection, so reading them all at the same moment would put a burst of reads ahead of
 * any command's fresh read or readback once a period. On the real simulator: the reads of the
 * three devices of the Modbus PLC are spread over the interval, not bunched.
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
    // When each device was last read (the gateway time its read was sent), as it changes.
    const reads = new Map<string, number[]>(ids.map((id) => [id, []]));
    const poll = setInterval(() => {
      for (const view of h!.pipeline.devices()) {
        const at = view.mirror?.requestedAt;
        const seen = reads.get(view.id);
        if (at !== undefined && seen !== undefined && seen.at(-1) !== at) seen.push(at);
      }
    }, 2);
    try {
      // Four reads of each: the first may be the start-up's, the last three the monitor's.
      await h.until(() => [...reads.values()].every((r) => r.length >= 4), 10_000, 'reads');
    } finally {
      clearInterval(poll);
    }
    const last = ids.map((id) => (reads.get(id) ?? []).slice(-3));
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
