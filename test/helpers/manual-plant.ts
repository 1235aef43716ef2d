import { ManualTime, startPlant, type Plant } from '../../simulators/plant.js';
import type { ModbusDevices } from './daemon-site.js';

/**
 * sluice-sim with one Modbus PLC `plc` on a free loopback port carrying `devices`, on a
 * ManualTime of its own and scanned only when the caller calls plant.scan(); the control API on
 * a free port unless `control: false`. Returns the plant and its time source.
 */
export async function startManualModbusPlant(
  devices: ModbusDevices,
  options: { readonly control?: boolean } = {},
): Promise<{ time: ManualTime; plant: Plant }> {
  const time = new ManualTime();
  const plant = await startPlant(
    { plcs: { plc: { protocol: 'modbus', port: 0, devices } } },
    { time, manualScan: true, ephemeralPorts: true, ...options },
  );
  return { time, plant };
}
