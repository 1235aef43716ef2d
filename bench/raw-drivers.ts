import { join } from 'node:path';
import { pino } from 'pino';
import { systemClock } from '../src/core/clock.js';
import type { CommandWrite, DeviceDriver, Readback } from '../src/core/driver.js';
import type { DeviceProfile } from '../src/core/profile.js';
import { buildDrivers, type Drivers, type Inventory } from '../src/drivers/inventory.js';
import { loadProfiles } from '../src/profiles/load.js';
import type { PlantReady } from './plant-process.js';

/**
 * The drivers without the bridge: built by the daemon's own inventory code (buildDrivers) for
 * the bench plant, so the baseline uses exactly the driver the daemon uses, minus journal,
 * state machine, scheduling and intakes.
 */

export interface RawDrivers {
  readonly drivers: Drivers;
  readonly profile: DeviceProfile;
  driver(id: string): DeviceDriver;
  close(): Promise<void>;
}

export async function rawDrivers(args: {
  readonly plant: PlantReady;
  readonly protocol: 'modbus' | 'opcua';
  readonly profilesDir: string;
  readonly pkiDir: string;
  /** node-opcua's own messages go here instead of the bench's terminal. */
  readonly logFile: string;
}): Promise<RawDrivers> {
  const logger = pino({ level: 'info' }, pino.destination({ dest: args.logFile, sync: false }));
  if (args.protocol === 'opcua') {
    const { routeOpcuaMessages } = await import('../src/daemon/opcua-messages.js');
    routeOpcuaMessages(logger);
  }
  const inventory: Inventory = { plcs: {}, devices: {} };
  for (const plc of args.plant.plcs) {
    const e = plc.endpoint;
    if (e.protocol !== args.protocol) continue;
    inventory.plcs[plc.name] =
      e.protocol === 'modbus'
        ? {
            protocol: 'modbus',
            host: e.host,
            port: e.port,
            unitId: e.unitId,
            requestTimeoutMs: 1000,
          }
        : {
            protocol: 'opcua',
            endpointUrl: e.endpointUrl,
            namespaceUri: e.namespaceUri,
            securityMode: 'None',
            securityPolicy: 'None',
            requestTimeoutMs: 2000,
          };
    for (const d of plc.devices) {
      inventory.devices[d.id] = {
        plc: plc.name,
        profile: 'valve',
        ...(e.protocol === 'modbus' ? { base: d.base ?? 0 } : {}),
      };
    }
  }
  const profiles = loadProfiles(args.profilesDir);
  const profile = profiles.get('valve');
  if (profile === undefined) throw new Error(`no valve profile in ${args.profilesDir}`);
  const drivers = await buildDrivers({
    inventory,
    profiles,
    pkiDir: join(args.pkiDir),
    // The bench's own OPC UA server, created a moment ago on loopback.
    acceptUnknownCertificates: true,
    clock: systemClock,
    logger,
  });
  drivers.start();
  const byId = new Map(drivers.bindings.map((b) => [b.id, b.driver]));
  return {
    drivers,
    profile,
    driver: (id) => {
      const d = byId.get(id);
      if (d === undefined) throw new Error(`no driver for ${id}`);
      return d;
    },
    close: () => drivers.close(),
  };
}

/** Reads until a read succeeds (an OPC UA session may still be opening), within `ms`. */
export async function firstRead(driver: DeviceDriver, ms: number): Promise<Readback> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      return await driver.read();
    } catch (error) {
      if (Date.now() > end) throw error;
      await new Promise((r) => setTimeout(r, 50));
    }
  }
}

/** The command that moves a valve from `state`, and the state that confirms it. */
export function nextMove(state: string): { action: 'open' | 'close'; target: string } {
  return state === 'OPEN' || state === 'OPENING'
    ? { action: 'close', target: 'CLOSED' }
    : { action: 'open', target: 'OPEN' };
}

/** A sequence number the controller will take: never the one it echoes now. */
export function nextSeq(echo: number | null, last: number): number {
  let seq = (last % 65_535) + 1;
  if (seq === echo) seq = (seq % 65_535) + 1;
  return seq;
}

export interface RoundTrip {
  /** From the write being sent to the readback that shows it (echo and target state). */
  readonly confirmMs: number;
  /** From the write being sent to its acknowledgement. */
  readonly ackMs: number;
  readonly reads: number;
}

/**
 * One command through the raw driver: write, then read back to back until the readback
 * echoes its sequence number and shows the target state — the fastest confirmation a bridge
 * could make on this plant. Bounded by `timeoutMs`.
 */
export async function writeAndReadBack(
  driver: DeviceDriver,
  command: CommandWrite,
  target: string,
  timeoutMs: number,
): Promise<RoundTrip> {
  const start = performance.now();
  await driver.write(command);
  const ackMs = performance.now() - start;
  let reads = 0;
  for (;;) {
    const r = await driver.read();
    reads += 1;
    if (r.seq === command.seq && r.state === target) {
      return { confirmMs: performance.now() - start, ackMs, reads };
    }
    if (performance.now() - start > timeoutMs) {
      throw new Error(
        `seq ${command.seq} not confirmed within ${timeoutMs} ms (last: ${r.state}, echo ${r.seq ?? 'none'})`,
      );
    }
  }
}
