import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { ModbusEndpoint } from '../../src/drivers/modbus.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { inventoryFor, modbusDrivers } from '../helpers/plant-inventory.js';

/**
 * Unit id 0, the Modbus broadcast address, is refused where the drivers are built, not only in a
 * site file (the configuration's schema): an inventory built in code never goes through that
 * schema, and buildDrivers took it, so every write went out to unit 0 — on a serial line behind
 * a TCP-to-serial gateway, to every device on it. sluice-sim's PLC here answers unit 0, as a
 * device that does not check the unit would: ground truth, its write counter stays 0.
 */

let plant: Plant;

beforeAll(async () => {
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          unitId: 0,
          devices: { 'line-valve': { profile: 'valve', base: 0 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
});

afterAll(async () => {
  await plant.stop();
});

const BROADCAST = /unitId: 0 is the Modbus broadcast address/;

describe('Modbus unit id 0 in an inventory built in code', () => {
  it('buildDrivers refuses it, naming the PLC; nothing reaches the controller', async () => {
    const inventory = inventoryFor(plant);
    expect(inventory.plcs.mb).toMatchObject({ protocol: 'modbus', unitId: 0 });
    const built = modbusDrivers(inventory);
    await expect(built).rejects.toThrow(/plcs\.mb\.unitId: 0 is the Modbus broadcast address/);
    // Had it been built (the code before), close what it opened.
    await built.then((d) => d.close()).catch(() => undefined);
    expect(plant.device('line-valve').counters.writesReceived).toBe(0);
  });

  it('the Modbus endpoint refuses it, and any other number that is not a unit id', () => {
    const plc = inventoryFor(plant).plcs.mb;
    if (plc?.protocol !== 'modbus') throw new Error('no Modbus PLC');
    for (const unitId of [0, -1, 256, 1.5]) {
      expect(() => {
        const endpoint = new ModbusEndpoint({
          name: 'mb',
          host: '127.0.0.1',
          port: plc.port,
          unitId,
          clock: systemClock,
          logger: silentLogger,
        });
        void endpoint.close();
      }).toThrow(unitId === 0 ? BROADCAST : /is no Modbus unit id/);
    }
  });
});
