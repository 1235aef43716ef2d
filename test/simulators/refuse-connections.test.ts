import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ManualTime, Plant } from '../../simulators/plant.js';
import { startManualModbusPlant } from '../helpers/manual-plant.js';
import { api, modbusEndpoint, rawModbus, until } from './helpers.js';
import type { ModbusEndpoint } from './helpers.js';

const OPEN = 1;
const STOP = 3;
const STOPPED = 4;

/**
 * A Modbus PLC whose communication module drops off the network for a while
 * (SimPlc.refuseConnections, POST /plcs/{id}/refuse-connections): its connections are reset and
 * a connect meets ECONNREFUSED, while the controller goes on with nothing lost — unlike a power
 * cycle. Over real sockets (a raw Modbus client of the test's own); the controller on manual
 * time, the refusal on real time (its listener is opened again by a timer).
 */
describe('a PLC that refuses connections for a while', () => {
  let time: ManualTime;
  let plant: Plant;
  let ep: ModbusEndpoint;
  let url: string;

  beforeEach(async () => {
    ({ time, plant } = await startManualModbusPlant({
      v1: { profile: 'valve', base: 0, travelMs: 200 },
      v2: { profile: 'valve', base: 100, travelMs: 200 },
    }));
    ep = modbusEndpoint(plant.plc('plc').endpoint);
    url = plant.controlUrl ?? '';
  });
  afterEach(() => plant.stop());

  const step = (ms: number): void => {
    time.advance(ms);
    plant.scan();
  };

  /** Connects every 10 ms until the PLC accepts; the moment (performance.now()) it did. */
  async function connectedAgain(): Promise<number> {
    for (let i = 0; i < 500; i++) {
      try {
        const raw = await rawModbus(ep);
        raw.socket.destroy();
        return performance.now();
      } catch (error) {
        expect((error as { code?: string }).code).toBe('ECONNREFUSED');
      }
      await new Promise((r) => setTimeout(r, 10));
    }
    throw new Error('the PLC did not accept connections again within 5 s');
  }

  it('resets its connections and refuses connects for ms; the controller goes on, nothing lost', async () => {
    const plc = plant.plc('plc');
    const device = plant.device('v1');
    const raw = await rawModbus(ep);
    expect((await raw.write(10, [OPEN, 0, 5])).exception).toBeUndefined();
    step(10); // OPENING, echo 5
    device.setFault({ kind: 'hold' });
    expect((await raw.write(10, [STOP, 0, 6])).exception).toBeUndefined(); // waits for a scan
    step(0);
    const accepted = plc.connectionsAccepted;

    const started = performance.now();
    plc.refuseConnections({ ms: 400 });
    expect(await raw.closed).toEqual({ hadError: true }); // reset
    expect(plc.refusingConnections).toBe(true);
    await expect(rawModbus(ep)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect((await api(url, 'GET', '/plcs/plc')).body).toMatchObject({
      refusingConnections: true,
      powered: true,
      powerCycles: 0,
    });

    // The controller runs on: travel, and the write waiting for a scan is taken when it may.
    step(50);
    expect([device.state, device.position, device.pendingWrites, device.seqEcho]).toEqual([
      'OPENING',
      25,
      1,
      5,
    ]);
    device.clearFault('hold');
    step(10);
    expect(device.writeLog.map((w) => [w.seq, w.outcome])).toEqual([
      [5, 'accepted'],
      [6, 'accepted'],
    ]);

    // Back on the same port once ms have passed, with nothing of the controller lost: the
    // image and the command registers as they were (a power cycle would have cleared them).
    const back = await connectedAgain();
    expect(back - started).toBeGreaterThanOrEqual(399);
    await until(() => !plc.refusingConnections);
    expect(plc.connectionsAccepted).toBe(accepted + 1);
    const again = await rawModbus(ep);
    try {
      expect((await again.read(0, 4)).registers).toEqual([STOPPED, 300, 0, 6]);
      expect((await again.read(10, 3)).registers).toEqual([STOP, 0, 6]);
    } finally {
      again.socket.destroy();
    }
  });

  it('refused again while refusing, it listens again at the later end', async () => {
    const plc = plant.plc('plc');
    const started = performance.now();
    plc.refuseConnections({ ms: 150 });
    await new Promise((r) => setTimeout(r, 50));
    plc.refuseConnections({ ms: 300 }); // ends ~350 ms after the first
    const back = await connectedAgain();
    expect(back - started).toBeGreaterThanOrEqual(349);
  });

  it('armed after a read of a device: the read is answered, then the connections reset', async () => {
    const plc = plant.plc('plc');
    const raw = await rawModbus(ep);
    plc.refuseConnections({ ms: 200, afterReadOf: 'v1' });
    expect(plc.refusingConnections).toBe(false);
    // Other devices' registers, the PLC clock, a write of v1: answered, nothing refused.
    expect((await raw.read(100, 4)).registers).toHaveLength(4);
    expect((await raw.read(900, 4)).registers).toHaveLength(4);
    expect((await raw.write(10, [STOP, 0, 3])).exception).toBeUndefined();
    expect(plc.refusingConnections).toBe(false);
    const started = performance.now();
    // The read of v1 is answered; the reset follows it.
    expect((await raw.read(0, 4)).registers).toEqual([0, 0, 0, 0]);
    await raw.closed;
    expect(plc.refusingConnections).toBe(true);
    await expect(rawModbus(ep)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect((await connectedAgain()) - started).toBeGreaterThanOrEqual(199);
    // Used up: the next read of v1 refuses nothing.
    const again = await rawModbus(ep);
    try {
      expect((await again.read(0, 4)).registers).toHaveLength(4);
      expect((await again.read(0, 4)).registers).toHaveLength(4);
      expect(plc.refusingConnections).toBe(false);
    } finally {
      again.socket.destroy();
    }
  });

  it('a write held on the link when the connections reset is applied as its hold ends', async () => {
    const device = plant.device('v1');
    device.setFault({ kind: 'latency', ms: 150, when: 'before', on: 'write' });
    const raw = await rawModbus(ep);
    const reply = raw.write(10, [OPEN, 0, 7]).catch((err: unknown) => err);
    // Noted as it comes in, before the latency holds it: on the link from then on.
    await until(() => device.writers.length === 1);
    plant.plc('plc').refuseConnections({ ms: 1_000 });
    expect(await reply).toBeInstanceOf(Error);
    // Its bytes were on the wire: it reaches the controller, and a scan takes it.
    await until(() => device.writeLog.length === 1);
    step(10);
    expect(device.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[7, 'accepted']]);
    // Held on the link (measured on the time source: manual here, which did not move).
    expect(device.writeLog[0]!.heldOnLinkMs).toBe(0);
  });

  it('through the control API: validated, answered with the refusal', async () => {
    expect(await api(url, 'POST', '/plcs/plc/refuse-connections', { ms: 0 })).toMatchObject({
      status: 400,
      body: { code: 'INVALID_REQUEST' },
    });
    expect(await api(url, 'POST', '/plcs/plc/refuse-connections', {})).toMatchObject({
      status: 400,
      body: { code: 'INVALID_REQUEST' },
    });
    expect(
      await api(url, 'POST', '/plcs/plc/refuse-connections', { ms: 10, afterReadOf: 'nope' }),
    ).toMatchObject({ status: 400, body: { code: 'INVALID_REQUEST' } });
    expect(await api(url, 'POST', '/plcs/nope/refuse-connections', { ms: 10 })).toMatchObject({
      status: 404,
      body: { code: 'UNKNOWN_PLC' },
    });
    const started = performance.now();
    expect(await api(url, 'POST', '/plcs/plc/refuse-connections', { ms: 200 })).toEqual({
      status: 200,
      body: { plc: 'plc', ms: 200, refusingConnections: true },
    });
    await expect(rawModbus(ep)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
    expect((await connectedAgain()) - started).toBeGreaterThanOrEqual(199);
  });

  it('a plant stopped while it refuses stops at once and listens no more', async () => {
    plant.plc('plc').refuseConnections({ ms: 60_000 });
    const started = performance.now();
    await plant.stop();
    expect(performance.now() - started).toBeLessThan(1_000);
    await expect(rawModbus(ep)).rejects.toMatchObject({ code: 'ECONNREFUSED' });
  });
});
