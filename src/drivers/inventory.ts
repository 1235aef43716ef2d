import { join } from 'node:path';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { DeviceBinding } from '../core/pipeline.js';
import type { DeviceProfile } from '../core/profile.js';
import { ModbusDeviceDriver, ModbusEndpoint } from './modbus.js';
import type { OpcuaClientPki, OpcuaEndpoint } from './opcua.js';
import { checkInventory, type Inventory } from './inventory-schema.js';

export { checkInventory, deviceSchema, inventorySchema, plcSchema } from './inventory-schema.js';
export type { Inventory, PlcConfig } from './inventory-schema.js';

/**
 * The device inventory: the PLC endpoints a gateway reaches and the devices on them. It is a
 * section of the site configuration; this module validates it (checkInventory, kept with the
 * schema so that validating loads no protocol stack) and builds the drivers.
 */

export interface Drivers {
  readonly bindings: DeviceBinding[];
  readonly modbus: ModbusEndpoint[];
  readonly opcua: OpcuaEndpoint[];
  /** Connects OPC UA sessions in the background (Modbus connects on first use). */
  start(): void;
  close(): Promise<void>;
}

/**
 * Builds one endpoint per PLC connection (a Modbus PLC may have several, shared among its
 * devices: shareConnections), and one driver per device. node-opcua
 * takes seconds to load on a small gateway and prints warnings as it does: it is loaded only
 * when a PLC speaks OPC UA.
 */
export async function buildDrivers(args: {
  readonly inventory: Inventory;
  readonly profiles: ReadonlyMap<string, DeviceProfile>;
  /** The state directory's PKI folder; the OPC UA client store is its `client/` folder. */
  readonly pkiDir: string;
  /** Trust unknown OPC UA server certificates (the demo only; see OpcuaClientPki). */
  readonly acceptUnknownCertificates: boolean;
  readonly clock: Clock;
  readonly logger: Logger;
}): Promise<Drivers> {
  const { inventory, profiles, clock, logger } = args;
  const errors = checkInventory(inventory, profiles);
  if (errors.length > 0) throw new Error(`invalid device inventory: ${errors.join('; ')}`);
  const speaksOpcua = Object.values(inventory.plcs).some((plc) => plc.protocol === 'opcua');
  const ua = speaksOpcua ? await import('./opcua.js') : null;
  const opcuaModule = (): NonNullable<typeof ua> => {
    if (ua === null) throw new Error('inventory: OPC UA driver not loaded');
    return ua;
  };
  let pki: OpcuaClientPki | null = null;
  const clientPki = (): OpcuaClientPki =>
    (pki ??= new (opcuaModule().OpcuaClientPki)({
      dir: join(args.pkiDir, 'client'),
      acceptUnknownCertificates: args.acceptUnknownCertificates,
      logger,
    }));
  /** Each Modbus PLC's connections: one endpoint each. */
  const modbus = new Map<string, ModbusEndpoint[]>();
  const opcua = new Map<string, OpcuaEndpoint>();
  for (const [name, plc] of Object.entries(inventory.plcs)) {
    switch (plc.protocol) {
      case 'modbus': {
        // No more connections than devices to carry: a connection without one would never open.
        const devices = Object.values(inventory.devices).filter((d) => d.plc === name).length;
        const count = Math.max(1, Math.min(plc.connections ?? 1, devices));
        modbus.set(
          name,
          Array.from(
            { length: count },
            (_, i) =>
              new ModbusEndpoint({
                name: count === 1 ? name : `${name}#${i + 1}`,
                host: plc.host,
                port: plc.port,
                unitId: plc.unitId,
                requestTimeoutMs: plc.requestTimeoutMs,
                ...(plc.combineReads === undefined ? {} : { combineReads: plc.combineReads }),
                clock,
                logger,
              }),
          ),
        );
        break;
      }
      case 'opcua':
        opcua.set(
          name,
          new (opcuaModule().OpcuaEndpoint)({
            name,
            endpointUrl: plc.endpointUrl,
            namespaceUri: plc.namespaceUri,
            securityMode: plc.securityMode,
            securityPolicy: plc.securityPolicy,
            serverCertificateSha256: plc.serverCertificateSha256,
            acceptHostNameMismatch: plc.acceptHostNameMismatch,
            pki: clientPki(),
            requestTimeoutMs: plc.requestTimeoutMs,
            clock,
            logger,
          }),
        );
        break;
    }
  }
  const need = <T>(value: T | undefined, what: string): T => {
    // checkInventory above guarantees these; a miss here is a bug, not bad input.
    if (value === undefined) throw new Error(`inventory: ${what} missing after validation`);
    return value;
  };
  const connectionOf = shareConnections(inventory, modbus);
  const bindings: DeviceBinding[] = Object.entries(inventory.devices).map(([id, device]) => {
    const profile = need(profiles.get(device.profile), `profile ${device.profile}`);
    const plc = need(inventory.plcs[device.plc], `plc ${device.plc}`);
    // Its PLC's grace, when the PLC sets one (the pipeline's default otherwise), and its
    // request timeout (how long an earlier life's write may have been on its way: Lane).
    const plcTimings = {
      plc: device.plc,
      ...(plc.unreachableGraceMs === undefined
        ? {}
        : { unreachableGraceMs: plc.unreachableGraceMs }),
      requestTimeoutMs: plc.requestTimeoutMs,
    };
    switch (plc.protocol) {
      case 'modbus':
        return {
          id,
          profile,
          ...plcTimings,
          driver: new ModbusDeviceDriver({
            id,
            profile,
            endpoint: need(connectionOf.get(id), `endpoint ${device.plc}`),
            base: device.base ?? 0,
            clock,
          }),
        };
      case 'opcua':
        return {
          id,
          profile,
          ...plcTimings,
          driver: new (opcuaModule().OpcuaDeviceDriver)({
            id,
            profile,
            endpoint: need(opcua.get(device.plc), `endpoint ${device.plc}`),
            ...(device.object === undefined ? {} : { object: device.object }),
            clock,
          }),
        };
    }
  });
  return {
    bindings,
    modbus: [...modbus.values()].flat(),
    opcua: [...opcua.values()],
    start: () => {
      for (const e of opcua.values()) e.start();
    },
    close: async () => {
      await Promise.allSettled([
        ...[...modbus.values()].flat().map((e) => e.close()),
        ...[...opcua.values()].map((e) => e.close()),
      ]);
    },
  };
}

/**
 * Which connection each Modbus device uses: a PLC's devices in address order (by `base`), shared
 * among its connections in runs of neighbours, as equal as they divide. A device keeps its
 * connection, so its own reads and writes stay in the order it made them (the queue of one
 * connection keeps them so); neighbours share one, so that their reads still combine into
 * block reads.
 */
export function shareConnections<E>(
  inventory: Inventory,
  connections: ReadonlyMap<string, readonly E[]>,
): Map<string, E> {
  const shared = new Map<string, E>();
  for (const [plc, endpoints] of connections) {
    const ids = Object.entries(inventory.devices)
      .filter(([, device]) => device.plc === plc)
      .sort(([a, x], [b, y]) => (x.base ?? 0) - (y.base ?? 0) || (a < b ? -1 : a > b ? 1 : 0))
      .map(([id]) => id);
    ids.forEach((id, i) => {
      const endpoint = endpoints[Math.floor((i * endpoints.length) / ids.length)];
      if (endpoint !== undefined) shared.set(id, endpoint);
    });
  }
  return shared;
}
