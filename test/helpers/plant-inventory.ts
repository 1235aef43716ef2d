import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { buildDrivers, type Drivers, type Inventory } from '../../src/drivers/inventory.js';
import type { Plant } from '../../simulators/plant.js';
import { PROFILES } from './fixtures.js';

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

/** The drivers of a Modbus-only inventory, on the shipped profiles (no OPC UA PKI needed). */
export function modbusDrivers(inventory: Inventory): Promise<Drivers> {
  return buildDrivers({
    inventory,
    profiles: PROFILES,
    pkiDir: '/nonexistent',
    acceptUnknownCertificates: false,
    clock: systemClock,
    logger: silentLogger,
  });
}
