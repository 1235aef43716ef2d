import ModbusSerial from 'modbus-serial';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ManualTime, Plant } from '../../simulators/plant.js';
import { startManualModbusPlant } from '../helpers/manual-plant.js';
import { modbusEndpoint } from './helpers.js';

/** See control-api.test.ts: under NodeNext the default import is the client class. */
const ModbusRTU = ModbusSerial as unknown as typeof ModbusSerial.default;

const OPEN = 1;
const STOP = 3;
const MOVE = 5;
const STATE = { CLOSED: 0, OPENING: 1, OPEN: 2, STOPPED: 4, LOCAL: 6 } as const;

/**
 * A valve travels between scans, not at them. A test (or a real scan period) may let time pass
 * without a scan; whatever the next scan takes — a stop, the LOCAL switch, a power cut — must
 * find the valve where its travel has brought it by then, as its position sensor would.
 */
describe('travel between scans (Modbus, modbus-serial client)', () => {
  let time: ManualTime;
  let plant: Plant;

  beforeEach(async () => {
    ({ time, plant } = await startManualModbusPlant(
      {
        v1: { profile: 'valve', base: 0, travelMs: 1000 },
        a1: { profile: 'actuator', base: 100, travelMs: 1000 },
      },
      { control: false },
    ));
  });
  afterEach(() => plant.stop());

  async function modbus<T>(use: (client: ModbusSerial.default) => Promise<T>): Promise<T> {
    const ep = modbusEndpoint(plant.plc('plc').endpoint);
    const client = new ModbusRTU();
    await client.connectTCP(ep.host, { port: ep.port });
    try {
      client.setID(ep.unitId);
      client.setTimeout(1000);
      return await use(client);
    } finally {
      await new Promise((resolve) => {
        client.close(resolve);
      });
    }
  }
  const command = (base: number, code: number, setpoint: number, seq: number): Promise<unknown> =>
    modbus((client) => client.writeRegisters(base + 10, [code, setpoint, seq]));
  /** state, position in 0.1 %, fault, seq echo */
  const status = (base: number): Promise<number[]> =>
    modbus(async (client) => (await client.readHoldingRegisters(base, 4)).data);

  it('a stop taken 400 ms into a 1 s stroke holds the valve at 40 %', async () => {
    await command(0, OPEN, 0, 1);
    plant.scan();
    time.advance(400);
    await command(0, STOP, 0, 2);
    plant.scan();
    expect(await status(0)).toEqual([STATE.STOPPED, 400, 0, 2]);
    time.advance(500);
    plant.scan();
    expect(await status(0)).toEqual([STATE.STOPPED, 400, 0, 2]);
  });

  it('a stop taken after the stroke has ended finds the valve OPEN: a no-op', async () => {
    await command(0, OPEN, 0, 1);
    plant.scan();
    time.advance(1000);
    await command(0, STOP, 0, 2);
    plant.scan();
    expect(await status(0)).toEqual([STATE.OPEN, 1000, 0, 2]);
    expect(plant.device('v1').log.map((e) => [e.seq, e.outcome, e.from, e.to])).toEqual([
      [1, 'accepted', 'CLOSED', 'OPENING'],
      [2, 'noop', 'OPEN', 'OPEN'],
    ]);
  });

  it('an actuator stopped 400 ms into a move to 80 % stays at 40 %', async () => {
    await command(100, MOVE, 800, 1);
    plant.scan();
    time.advance(400);
    await command(100, STOP, 0, 2);
    plant.scan();
    expect(await status(100)).toEqual([0, 400, 0, 2]);
  });

  it('the LOCAL switch read 400 ms into a stroke leaves the valve at 40 %', async () => {
    await command(0, OPEN, 0, 1);
    plant.scan();
    time.advance(400);
    plant.device('v1').setLocal(true);
    plant.scan();
    expect(await status(0)).toEqual([STATE.LOCAL, 400, 0, 1]);
    plant.device('v1').setLocal(false);
    plant.scan();
    expect(await status(0)).toEqual([STATE.STOPPED, 400, 0, 1]);
  });

  it('a power cut 400 ms into a stroke leaves the valve STOPPED at 40 %, not CLOSED', async () => {
    await command(0, OPEN, 0, 1);
    plant.scan();
    time.advance(400);
    plant.plc('plc').powerCycle();
    expect(await status(0)).toEqual([STATE.STOPPED, 400, 0, 0]);
  });

  it('a stuck drive does not move between scans either', async () => {
    plant.device('v1').setFault({ kind: 'stuck-travel' });
    await command(0, OPEN, 0, 1);
    plant.scan();
    time.advance(400);
    await command(0, STOP, 0, 2);
    plant.scan();
    expect(await status(0)).toEqual([STATE.STOPPED, 0, 0, 2]);
  });
});
