import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * Readbacks placed on the controller's scans (src/core/readback-pacing.ts), on the simulator:
 * with travel 0 the scan that takes a command shows its target, and the readback that confirms
 * it is requested in that scan's window — not a whole scan after the write, as readbacks paced
 * one scan apart from the acknowledgement would be (half a scan later on average).
 *
 * Ground truth: the simulator's write log says when the scan took each write (controller time,
 * which is the gateway's wall clock here: no clock fault); the journal's confirming observation
 * says when that readback was requested and which image it showed.
 */

const SCAN_MS = 200;

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('readback placement', () => {
  it('the confirming readback follows the scan that took the command, within half a scan', async () => {
    h = await SimHarness.start({
      travelMs: 0,
      scanMs: SCAN_MS,
      timing: { scanMs: SCAN_MS, pollIntervalMs: 1_000, confirmTimeoutMs: 5_000 },
    });
    let state = h.device('v1').state;
    for (let i = 0; i < 6; i++) {
      // At a random moment of the scan.
      await new Promise((resolve) => setTimeout(resolve, Math.random() * SCAN_MS));
      const action = state === 'OPEN' ? 'close' : 'open';
      const key = `placed-${i}`;
      h.submit(key, { device: 'v1', action });
      const record = await h.settled(key);
      expect(record).toMatchObject({ state: 'confirmed' });
      state = action === 'open' ? 'OPEN' : 'CLOSED';
      const writes = h.device('v1').writesOfSeq(record.seq!);
      expect(writes).toHaveLength(1);
      const takenAt = writes[0]!.settledAt!;
      const observed = record.observed!;
      // The image of the taking scan: the readback was served after that scan, not before it
      // (a readback before it would show the old image, and a later one would confirm).
      expect(Date.parse(observed.sourceTime!)).toBe(takenAt);
      // And requested in the scan's window, not half a scan away from it. readAt is stamped
      // when the request is sent: a read of the window may leave shortly before the scan and be
      // served after it (the image above proves it), by as much as a busy simulator's event
      // loop lags its scan timer.
      const readAfterTake = Date.parse(observed.readAt) - takenAt;
      expect(readAfterTake, `${key}: read ${readAfterTake} ms after the scan`).toBeGreaterThan(
        -SCAN_MS / 2,
      );
      expect(readAfterTake, `${key}: read ${readAfterTake} ms after the scan`).toBeLessThan(
        SCAN_MS / 2,
      );
    }
  });
});
