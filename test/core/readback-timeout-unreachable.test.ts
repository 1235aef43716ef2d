import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A command whose PLC stops answering while its valve travels (the PLC's communication module
 * refuses connections: SimPlc.refuseConnections, armed on its next answered read of the valve,
 * so that the confirm loop has one readback of the travel) ends READBACK_TIMEOUT on that last
 * readback, as the SPEC has it (a readback was taken after the write). Its detail said only
 * "not confirmed within … ms: travelling (OPENING)", as if the valve were still seen travelling
 * at the end; it now says how old that readback was when the window ended, that every read of
 * the device failed since (how many, the last error), and what to do. The real pipeline, SQLite
 * journal and drivers against sluice-sim; ground truth: the journal's outcome, the simulator's
 * valve (still travelling: it was the link that went) and its write log (one write).
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('a PLC that stops answering while its valve travels', () => {
  for (const protocol of ['modbus', 'opcua'] as const) {
    const device = protocol === 'modbus' ? 'v1' : 'u1';
    const plcName = protocol === 'modbus' ? 'mb' : 'ua';
    it(`${protocol}: READBACK_TIMEOUT says the reads failed since the last readback, and what to do`, async () => {
      h = await SimHarness.start({
        opcua: protocol === 'opcua',
        travelMs: 30_000,
        timing: { confirmTimeoutMs: 1_500 },
      });
      const harness = h;
      const valve = harness.device(device);
      const plc = harness.plant.plc(plcName);
      harness.submit('k', { device, action: 'open', ttlMs: 30_000 });
      await harness.until(() => valve.snapshot().state === 'OPENING', 5_000, 'the valve opening');
      // The PLC answers one more read of the valve (OPENING), then refuses every connection
      // for longer than the rest of the confirm window.
      plc.refuseConnections({ ms: 4_000, afterReadOf: device });
      const r = await harness.settled('k', 10_000);
      expect(valve.writesWithSeq(r.seq!)).toBe(1);
      expect(valve.snapshot().state).toBe('OPENING');
      expect(r).toMatchObject({
        state: 'failed',
        code: 'READBACK_TIMEOUT',
        observed: { state: 'OPENING' },
      });
      // Before: "not confirmed within 1500 ms: travelling (OPENING)" and nothing else.
      const m =
        /^not confirmed within 1500 ms: travelling \(OPENING\), at the last readback, taken (\d+) ms before the window ended; the device has not answered since: (\d+) reads of it failed \(the last: (.+)\); the command's effect is unknown: check the PLC and its link; once it answers, see where the device is \(sluicectl devices\) before sending the command again$/.exec(
          r.detail ?? '',
        );
      expect(m, r.detail ?? '').not.toBeNull();
      // The refusal began at once after the last answered read: most of the window had failed reads.
      expect(Number(m![1])).toBeGreaterThan(500);
      expect(Number(m![2])).toBeGreaterThan(0);
      expect(m![3]!.length).toBeGreaterThan(0);
    }, 60_000);
  }
});
