import ModbusSerial from 'modbus-serial';
import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';
import { modbusEndpoint } from '../simulators/helpers.js';

const ModbusRTU = ModbusSerial as unknown as typeof ModbusSerial.default;

/**
 * A limit-switch valve whose status word shows LOCAL and FAULT together (the local operator has
 * it, and its drive tripped) reads LOCAL: every command is refused `LOCAL_MODE` and never
 * written. The bundled profile decoded FAULT first, so a reset was written to a valve in the
 * local operator's hands.
 *
 * Real parts: the pipeline with the real Modbus driver and the bundled limit-switch-valve
 * profile against sluice-sim's limit-switch valve `lsv` (test/helpers/sim-harness.ts, `field`),
 * a real journal. The simulator's `drive-trip` fault sets the status word's FAULT bit past the
 * controller program, so the word carries both bits as a real one can. Ground truth: the
 * simulator's write log and counters, and its status word as an independent Modbus client
 * (modbus-serial) reads it.
 */

/** The valve's status word (holding register 300, the device's base), read by its own client. */
async function statusWord(harness: SimHarness): Promise<number> {
  const ep = modbusEndpoint(harness.plant.plc('mb').endpoint);
  const client = new ModbusRTU();
  await client.connectTCP(ep.host, { port: ep.port });
  try {
    client.setID(ep.unitId);
    client.setTimeout(1000);
    const word = (await client.readHoldingRegisters(300, 1)).data[0];
    if (word === undefined) throw new Error('no status word');
    return word;
  } finally {
    await new Promise((resolve) => {
      client.close(resolve);
    });
  }
}

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('a limit-switch valve showing LOCAL and FAULT at once', () => {
  it('reads LOCAL: a reset is rejected LOCAL_MODE and never written', async () => {
    h = await SimHarness.start({ field: true });
    const valve = h.device('lsv');
    valve.setFault({ kind: 'drive-trip' });
    valve.setLocal(true);
    await h.until(() => valve.snapshot().state === 'LOCAL', 5_000, 'lsv in LOCAL');
    // Premise, on the word the PLC serves: the closed limit, FAULT and LOCAL bits.
    expect(await statusWord(h)).toBe((1 << 1) | (1 << 2) | (1 << 5));

    h.submit('r', { device: 'lsv', action: 'reset' });
    const r = await h.settled('r');
    expect(r).toMatchObject({
      state: 'rejected',
      code: 'LOCAL_MODE',
      observed: { state: 'LOCAL' },
    });
    // Ground truth: nothing reached the controller (the rejection is decided before a write).
    expect(valve.counters.writesReceived).toBe(0);
    expect(valve.writeLog.length).toBe(0);
  });
});
