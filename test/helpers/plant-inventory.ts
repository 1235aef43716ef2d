import type { Inventory } from '../../src/drivers/inventory.js';
import type { Plant } from '../../simulators/plant.js';

/** The device inventory that reaches a running simulated plant (its bound ports). */
export function inventoryFor(plant: Plant): Inventory {
  const inventory: Inventory = { plcs: {}, devices: {} };
  for (const plc of plant.plcs) {
    const e = plc.endpoint;
    inventory.plcs[plc.name] =
      e.protocol === 'modbus'
        ? {
            protocol: 'modbus',
            host: e.host,
            port: e.port,
            unitId: e.unitId,
            requestTimeoutMs: 300,
          }
        : {
            protocol: 'opcua',
            endpointUrl: e.endpointUrl,
            namespaceUri: e.namespaceUri,
            securityMode: 'None',
            securityPolicy: 'None',
            requestTimeoutMs: 500,
          };
    for (const device of plc.devices) {
      inventory.devices[device.id] = {
        plc: plc.name,
        profile: device.profile,
        ...(e.protocol === 'modbus' ? { base: device.config.base ?? 0 } : {}),
      };
    }
  }
  return inventory;
}
