import { isIP } from 'node:net';
import { z } from 'zod';
import { MAX_TIMER_MESSAGE, MAX_TIMER_MS } from '../core/clock.js';
import type { DeviceProfile } from '../core/profile.js';
import { fieldAddress, fieldWidth } from '../core/profile-modbus.js';
import { hostAndPort, hostSchema, urlAddressProblem } from '../config/network-addresses.js';
import { COMBINE_READS_DEFAULTS, MAX_REGISTERS } from './modbus-queue.js';
import { UNIT_ID_BROADCAST, unitIdProblem } from './modbus-unit.js';
import { mappedIpv4 } from './mapped-ipv4.js';

/** The most TCP connections one Modbus PLC is given (plcs.<name>.connections). */
export const MAX_CONNECTIONS = 8;

/**
 * The schema of the device inventory (the `plcs` and `devices` sections of the configuration).
 * Kept apart from the drivers so that validating a configuration loads no protocol stack.
 */

/**
 * How long taking up an open command of one of the PLC's devices keeps trying to reach it at
 * least, even past its deadline (docs/configuration.md). Omitted, it stays undefined: the
 * pipeline's default (UNREACHABLE_GRACE_MS, 15 s) applies, as for inventories built in code. No
 * lower bound beyond 0: the take-up reads for the device's confirm timeout at least whatever
 * the grace, so a short one cannot cut a readback short; it only ends sooner a command whose
 * device cannot be reached.
 */
const GRACE_MESSAGE =
  'a whole number of milliseconds, 0 or more: how long taking up an open command keeps trying to reach the PLC (default 15000)';
const unreachableGraceMs = z
  .number({ error: GRACE_MESSAGE })
  .int({ error: GRACE_MESSAGE })
  .min(0, { error: GRACE_MESSAGE })
  .max(MAX_TIMER_MS, { error: MAX_TIMER_MESSAGE })
  .optional();

/** Each request's timer: MAX_TIMER_MS at most (a longer one fires at once: every request timed out). */
const requestTimeoutMs = z
  .number()
  .int()
  .positive()
  .max(MAX_TIMER_MS, { error: MAX_TIMER_MESSAGE });

const OPC_TCP_URL = /^opc\.tcp:\/\/.+/;

const modbusPlc = z.strictObject({
  protocol: z.literal('modbus'),
  // A host written with its port (`10.0.0.20:502`) or as a URL was taken, and every request
  // failed for as long as the daemon ran (getaddrinfo ENOTFOUND) after --check called it valid.
  host: hostSchema,
  port: z.number().int().min(1).max(65535),
  unitId: z
    .number()
    .int()
    .min(0)
    .max(255)
    .refine((id) => id !== 0, { error: UNIT_ID_BROADCAST })
    .default(1),
  /** Where the controller clock is read is a profile field now (modbus.status.clock). */
  clockRegister: z
    .never({
      error:
        'no longer a PLC setting: the controller clock is the profile field modbus.status.clock (docs/device-profiles.md)',
    })
    .optional(),
  requestTimeoutMs: requestTimeoutMs.default(1000),
  /** Overrides clock.maxControllerSkewMs for this PLC's devices. */
  maxClockSkewMs: z.number().int().min(1).max(86_400_000).optional(),
  /**
   * Concurrent reads served by one block read (docs/configuration.md). Omitted, it stays
   * undefined rather than defaulted, so that inventories built in code need not spell it out;
   * the endpoint applies the same defaults (COMBINE_READS_DEFAULTS).
   */
  combineReads: z
    .strictObject({
      enabled: z.boolean().default(COMBINE_READS_DEFAULTS.enabled),
      maxGap: z.number().int().min(0).max(MAX_REGISTERS).default(COMBINE_READS_DEFAULTS.maxGap),
    })
    .optional(),
  /**
   * TCP connections to the PLC (docs/configuration.md), each with one request in flight; its
   * devices are shared among them in address order. Omitted: one (as for combineReads, left
   * undefined rather than defaulted).
   */
  connections: z.number().int().min(1).max(MAX_CONNECTIONS).optional(),
  unreachableGraceMs,
});

const opcuaPlc = z.strictObject({
  protocol: z.literal('opcua'),
  // node-opcua takes any opc.tcp:// string and retries it for ever: a port past 65535 was
  // "not connected … connection attempt N failed" with no word of the port.
  endpointUrl: z
    .string()
    .regex(OPC_TCP_URL, 'must be an opc.tcp:// URL')
    .superRefine((url, ctx) => {
      const problem = OPC_TCP_URL.test(url) ? urlAddressProblem(url) : null;
      if (problem !== null) ctx.addIssue({ code: 'custom', message: problem });
    }),
  namespaceUri: z.string().min(1),
  securityMode: z.enum(['None', 'Sign', 'SignAndEncrypt']).default('None'),
  securityPolicy: z
    .enum(['None', 'Basic256Sha256', 'Aes128_Sha256_RsaOaep', 'Aes256_Sha256_RsaPss'])
    .default('None'),
  /**
   * The SHA-256 of the server certificate, pinned (src/drivers/opcua-binding.ts): 64 hex digits,
   * as `openssl x509 -noout -fingerprint -sha256` writes them (pairs separated by ":") or not.
   */
  serverCertificateSha256: z
    .string()
    .regex(
      /^(?:[0-9A-Fa-f]{64}|[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31})$/,
      'the SHA-256 of the server certificate: 64 hexadecimal digits, in pairs separated by ":" or not',
    )
    .optional(),
  /**
   * The server certificate need not name the endpoint URL's host (weakens the binding). Omitted,
   * it stays undefined (false), as combineReads does for Modbus.
   */
  acceptHostNameMismatch: z.boolean().optional(),
  requestTimeoutMs: requestTimeoutMs.default(2000),
  /** Overrides clock.maxControllerSkewMs for this PLC's devices. */
  maxClockSkewMs: z.number().int().min(1).max(86_400_000).optional(),
  unreachableGraceMs,
});

export const plcSchema = z.discriminatedUnion('protocol', [modbusPlc, opcuaPlc]);

export const deviceSchema = z.strictObject({
  plc: z.string().min(1),
  profile: z.string().min(1),
  /** Modbus: first holding register of the device's block. */
  base: z.number().int().min(0).max(65535).optional(),
  /** OPC UA: the device's object name in the controller's namespace (default: the device id). */
  object: z.string().min(1).optional(),
});

export const inventorySchema = z.strictObject({
  plcs: z.record(z.string().min(1), plcSchema),
  devices: z.record(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/), deviceSchema),
});

export type Inventory = z.infer<typeof inventorySchema>;
export type PlcConfig = z.infer<typeof plcSchema>;

/**
 * Cross-references a schema cannot express; every problem is returned with its path.
 * `sluiced --check` (through loadConfig), the daemon and buildDrivers all run it.
 */
export function checkInventory(
  inventory: Inventory,
  profiles: ReadonlyMap<string, DeviceProfile>,
): string[] {
  const errors: string[] = [];
  const commandRanges: {
    id: string;
    plc: string;
    controller: string;
    start: number;
    end: number;
  }[] = [];
  const statusFields: {
    id: string;
    plc: string;
    controller: string;
    name: string;
    start: number;
    end: number;
  }[] = [];
  /** Every Modbus status field placed so far, in any table: what a device's reads cover. */
  const statusReads: PlacedStatus[] = [];
  const objects = new Map<string, { id: string; plc: string }>();
  // OPC UA message security is a mode and a policy together: one without the other is no
  // endpoint a server offers, and would be found only at the first connect, then retried for
  // ever ("Cannot find an Endpoint matching security mode: 3 policy: …#None").
  for (const [name, plc] of Object.entries(inventory.plcs)) {
    // The schema refuses it in a site file; an inventory built in code is checked here.
    if (plc.protocol === 'modbus') {
      const problem = unitIdProblem(plc.unitId);
      if (problem !== null) errors.push(`plcs.${name}.unitId: ${problem}`);
    }
    if (plc.protocol !== 'opcua') continue;
    const portProblem = opcuaPortProblem(plc.endpointUrl);
    if (portProblem !== null) errors.push(`plcs.${name}.endpointUrl: ${portProblem}`);
    if (plc.securityMode !== 'None' && plc.securityPolicy === 'None') {
      errors.push(
        `plcs.${name}.securityPolicy: securityMode ${plc.securityMode} needs a policy (Basic256Sha256, Aes128_Sha256_RsaOaep or Aes256_Sha256_RsaPss); None goes with securityMode None only`,
      );
    }
    if (plc.securityMode === 'None' && plc.securityPolicy !== 'None') {
      errors.push(
        `plcs.${name}.securityMode: securityPolicy ${plc.securityPolicy} needs securityMode Sign or SignAndEncrypt; with None nothing is signed or encrypted`,
      );
    }
    // Settings of the server certificate that would check nothing: taken silently, the operator
    // would believe the PLC's server is bound to its certificate.
    if (plc.securityMode === 'None') {
      for (const setting of ['serverCertificateSha256', 'acceptHostNameMismatch'] as const) {
        if (plc[setting] !== undefined) {
          errors.push(
            `plcs.${name}.${setting}: needs securityMode Sign or SignAndEncrypt; with None the server presents no certificate`,
          );
        }
      }
    } else if (plc.serverCertificateSha256 !== undefined && plc.acceptHostNameMismatch === true) {
      errors.push(
        `plcs.${name}.acceptHostNameMismatch: has no effect with serverCertificateSha256 (a pinned certificate is not checked for its host name); leave it out`,
      );
    }
  }
  for (const [id, device] of Object.entries(inventory.devices)) {
    const plc = inventory.plcs[device.plc];
    const profile = profiles.get(device.profile);
    if (plc === undefined) errors.push(`devices.${id}.plc: no PLC named "${device.plc}"`);
    if (profile === undefined) {
      // An empty folder (a wrong profilesDir) said "(have )".
      errors.push(
        `devices.${id}.profile: no profile named "${device.profile}" (${
          profiles.size === 0
            ? 'the profiles folder holds none: set profilesDir to the folder of the device profiles (.yaml), or leave it out for the bundled ones'
            : `have ${[...profiles.keys()].join(', ')}`
        })`,
      );
    }
    // A setting of the other protocol is a mistake in the file (a device moved between PLCs,
    // a copied block): taken silently, the operator would believe it addresses the device.
    if (plc?.protocol === 'modbus' && device.object !== undefined) {
      errors.push(
        `devices.${id}.object: an OPC UA setting, but PLC "${device.plc}" is Modbus (a Modbus device is addressed by base)`,
      );
    }
    if (plc?.protocol === 'opcua' && device.base !== undefined) {
      errors.push(
        `devices.${id}.base: a Modbus setting, but PLC "${device.plc}" is OPC UA (an OPC UA device is addressed by object)`,
      );
    }
    if (plc?.protocol === 'modbus') {
      if (device.base === undefined) errors.push(`devices.${id}.base: required for a Modbus PLC`);
      if (profile !== undefined && profile.modbus === undefined) {
        errors.push(
          `devices.${id}.profile: profile "${profile.profile}" has no Modbus register map`,
        );
      }
    }
    if (plc?.protocol === 'modbus' && profile?.modbus !== undefined && device.base !== undefined) {
      const map = profile.modbus;
      for (const [section, fields] of [
        ['status', map.status],
        ['command', map.command],
      ] as const) {
        for (const [name, field] of Object.entries(fields)) {
          if (field === undefined) continue;
          const end = fieldAddress(field, device.base) + fieldWidth(field) - 1;
          if (end > 65535) {
            errors.push(
              `devices.${id}.base: ${device.base} puts profile "${profile.profile}" field modbus.${section}.${name} at ${end}, past register 65535`,
            );
          }
        }
      }
      // Two PLC entries may name one controller (another connection to it): registers are
      // compared per controller, not per entry.
      const controller = modbusController(plc);
      const span = commandRange(profile, device.base);
      const clash = commandRanges.find(
        (other) =>
          other.controller === controller && span.start < other.end && other.start < span.end,
      );
      if (clash !== undefined) {
        errors.push(
          `devices.${id}.base: its command registers ${span.start}..${span.end - 1} overlap those of device ${clash.id} (${clash.start}..${clash.end - 1}) on PLC ${samePlc(device.plc, clash.plc, controller)}`,
        );
      }
      commandRanges.push({ id, plc: device.plc, controller, ...span });
      const overlaps = statusOverlaps(id, device.plc, controller, device.base, map, statusReads);
      // One line per device: a base that is off puts several fields on another's; and none
      // when its command registers clash already (that error names the same base).
      const first = overlaps[0];
      if (first !== undefined && clash === undefined) {
        errors.push(
          overlaps.length === 1
            ? first
            : `${first} (and ${overlaps.length - 1} more of its status fields)`,
        );
      }
      for (const [name, field] of Object.entries(map.status)) {
        // Commands are written to holding registers; the other tables cannot hold them.
        if (field === undefined || field.table !== 'holding') continue;
        const start = fieldAddress(field, device.base);
        statusFields.push({
          id,
          plc: device.plc,
          controller,
          name,
          start,
          end: start + fieldWidth(field),
        });
      }
    }
    if (plc?.protocol === 'opcua' && profile !== undefined && profile.opcua === undefined) {
      errors.push(`devices.${id}.profile: profile "${profile.profile}" has no OPC UA node names`);
    }
    if (plc?.protocol === 'opcua') {
      // Node ids are ns=<namespace>;s=<object>.<Name>: one object is one controller device.
      // Two PLC entries may name one server in two spellings of its URL: compared per server.
      const object = device.object ?? id;
      const server = opcuaNamespace(plc);
      const where = `${server}\u0000${object}`;
      const other = objects.get(where);
      if (other !== undefined) {
        errors.push(
          `devices.${id}${device.object === undefined ? '' : '.object'}: object "${object}" on PLC ${samePlc(device.plc, other.plc, server)} is also device ${other.id}'s: two devices would command one controller object, each with its own queue and sequence numbers`,
        );
      } else {
        objects.set(where, { id, plc: device.plc });
      }
    }
    // I1: a write whose outcome is unknown (timed out, reply lost) may still land until the
    // driver gives up on it; only a guard longer than that lets a missing echo prove "not
    // applied". Otherwise every timed-out write could be sent again while it may still land.
    if (
      plc !== undefined &&
      profile !== undefined &&
      profile.timing.redispatchGuardMs <= plc.requestTimeoutMs
    ) {
      errors.push(
        `devices.${id}: profile "${profile.profile}" redispatchGuardMs ${profile.timing.redispatchGuardMs} must be longer than plcs.${device.plc}.requestTimeoutMs ${plc.requestTimeoutMs} (raise the guard or lower the timeout)`,
      );
    }
  }
  // A status field on a command block reads back what the bridge writes there (the code of
  // the last command taken for a state): a base off by a block, or an absolute field on it.
  for (const field of statusFields) {
    const clash = commandRanges.find(
      (range) =>
        range.controller === field.controller && field.start < range.end && range.start < field.end,
    );
    if (clash === undefined) continue;
    const whose =
      clash.id === field.id
        ? 'its own command registers'
        : `the command registers of device ${clash.id}`;
    errors.push(
      `devices.${field.id}.base: its status field modbus.status.${field.name} (holding ${field.start}..${field.end - 1}) lies on ${whose} (${clash.start}..${clash.end - 1}) on PLC ${samePlc(field.plc, clash.plc, clash.controller)}: it would read the commands written there as the device's status`,
    );
  }
  return errors;
}

/**
 * A status field read on another's registers: a base a few registers off (`drain-valve` at 103
 * on `inlet-valve`'s block at 100), or a block slid onto its own absolute fields (a `time` on
 * the PLC's clock). The device would take those values for its own state, echo or image time,
 * and a command could be confirmed by another device's readback (I2). A clock or an image time
 * given by absolute address may be shared on purpose (the PLC's clock, read by every device:
 * `shared`); a field placed from the base may not lie on any other, nor any other absolute
 * field on another device's. Records the device's fields in `placed`.
 */
function statusOverlaps(
  id: string,
  plc: string,
  controller: string,
  base: number,
  map: NonNullable<DeviceProfile['modbus']>,
  placed: PlacedStatus[],
): string[] {
  const errors: string[] = [];
  const own = Object.entries(map.status).flatMap(([name, field]): PlacedStatus[] => {
    if (field === undefined) return [];
    const start = fieldAddress(field, base);
    const absolute = field.address !== undefined;
    const end = start + fieldWidth(field);
    return [{ id, plc, controller, base, name, table: field.table, absolute, start, end }];
  });
  const shown = (f: PlacedStatus): string =>
    `${f.table} ${f.end - f.start === 1 ? f.start : `${f.start}..${f.end - 1}`}`;
  for (const field of own) {
    // The profile's check compares its relative fields among themselves: here, against its
    // own absolute ones and every other device's fields.
    const others = [
      ...placed.filter((o) => o.controller === controller),
      ...own.filter((o) => o.absolute && !field.absolute),
    ];
    const clash = others.find(
      (o) =>
        o.table === field.table &&
        !(o.absolute && field.absolute && shared(o, field)) &&
        field.start < o.end &&
        o.start < field.end,
    );
    if (clash === undefined) continue;
    if (clash.absolute && field.absolute) {
      errors.push(
        `devices.${id}: its modbus.status.${field.name} (${shown(field)}, an absolute address) lies on device ${clash.id}'s modbus.status.${clash.name} (${shown(clash)}, an absolute address) on PLC ${samePlc(plc, clash.plc, controller)}: both devices would read those registers as their own ${field.name === clash.name ? field.name : `${field.name} and ${clash.name}`}, ${sharingProblem(field, clash)}`,
      );
      continue;
    }
    // Said of the field placed from its base: that base is what is off.
    const [moved, under] = field.absolute ? [clash, field] : [field, clash];
    const whose =
      under.id === moved.id
        ? `its own modbus.status.${under.name} (${shown(under)}, an absolute address)`
        : `device ${under.id}'s modbus.status.${under.name} (${shown(under)}${under.absolute ? ', an absolute address' : ''})`;
    errors.push(
      `devices.${moved.id}.base: ${moved.base} puts its status field modbus.status.${moved.name} (${shown(moved)}) on ${whose} on PLC ${samePlc(moved.plc, under.plc, controller)}: it would read those registers as its own ${moved.name}; give it a base where its registers are its own`,
    );
  }
  placed.push(...own);
  return errors;
}

/**
 * Two devices' absolute fields that may lie on one register: the PLC's clock read whole by both
 * as their clock, or an image time a whole-PLC scan publishes read whole by both as their time.
 * Any other field is one device's own (ownOnly, and its fault code), and one register read as
 * two values is neither's: an image time read from the live clock always looks fresh.
 */
function shared(a: PlacedStatus, b: PlacedStatus): boolean {
  return (
    a.name === b.name &&
    (a.name === 'clock' || a.name === 'time') &&
    a.start === b.start &&
    a.end === b.end
  );
}

/**
 * A status field that ties a readback to one device: its state, its position, its echo of the
 * device's own sequence numbers (which every device counts from 1). Shared by two devices, one
 * would be confirmed by the other's readback (I2): a close a no-op at CLOSED because the other
 * valve is closed.
 */
function ownOnly(field: PlacedStatus): boolean {
  return field.name === 'state' || field.name === 'position' || field.name === 'seqEcho';
}

/** What two devices' absolute fields on one register would do (not `shared`), and the fix. */
function sharingProblem(a: PlacedStatus, b: PlacedStatus): string {
  if (ownOnly(a) || ownOnly(b)) {
    return `and a command to one could be confirmed by the other's readback; a state, position or echo at an absolute address fits one device per controller: place it with "at" (from the device's base) in the profile`;
  }
  // A latched 0x88 with a command's own echo is the controller refusing that command
  // (readback.ts): the other device's refusal would end a command its controller took rejected.
  if (a.name === 'fault' && b.name === 'fault') {
    return `and a refusal the controller latches there for one (fault 0x88) would end a command to the other rejected though its controller took it; a fault code at an absolute address fits one device per controller: place it with "at" (from the device's base) in the profile`;
  }
  const why =
    a.name === b.name
      ? `though not on the same registers (each would read its ${a.name} partly from the other's)`
      : 'though one register holds one value';
  return `${why}: an absolute register may be shared only as the PLC's clock, read whole by every device as its clock, or as an image time, read whole by every device as its time; place the field with "at" (from the device's base) in the profile, or give it the other's address and type`;
}

interface PlacedStatus {
  readonly id: string;
  readonly plc: string;
  readonly controller: string;
  readonly base: number;
  readonly name: string;
  readonly table: string;
  readonly absolute: boolean;
  readonly start: number;
  readonly end: number;
}

/**
 * A Modbus controller as the network reaches it: host, port and unit id. The journal's record of
 * device addresses keys on it too (daemon/renamed-devices.ts).
 */
export function modbusController(plc: { host: string; port: number; unitId: number }): string {
  return `${sameHost(plc.host)}:${plc.port} unit ${plc.unitId}`;
}

/** OPC UA's registered port: the one node-opcua connects to when the URL gives none. */
const OPC_UA_PORT = 4840;

/**
 * Why node-opcua would not connect to the port an endpoint URL names, or null. It reads the URL
 * as an http: URL (node-opcua-transport's parseEndpointUrl), which drops port 80 as http's
 * default, and then connects to 4840 as for a URL without a port: `opc.tcp://plc:80` reached
 * whatever served 4840 on that host, or nothing, without a word of the port. A URL of another
 * scheme keeps the port as written (`opc.tcp:` is not one of the URL standard's special schemes).
 */
function opcuaPortProblem(endpointUrl: string): string | null {
  let port: string;
  try {
    port = new URL(endpointUrl).port;
  } catch {
    return null; // Not a URL: the schema says so (urlAddressProblem).
  }
  return port === '80'
    ? `port 80 cannot be used: node-opcua takes it for http's default port and connects to ${OPC_UA_PORT} instead; serve OPC UA on another port (${OPC_UA_PORT} is its registered one)`
    : null;
}

/**
 * An OPC UA server's namespace as the client reaches it: host and port, and the namespace URI.
 * node-opcua opens its socket to the host and port of the endpoint URL, which it reads as an
 * http: URL (client_tcp_transport; so a port written 80 would be dropped as http's default, and
 * 4840 taken as for a port not written: checkInventory refuses port 80), and with endpointMustExist false (opcua.ts) takes the first
 * endpoint the server lists for the security asked, whatever the path: a URL with or without a
 * path or a trailing "/", or with the port 4840 left out, is one server. (Two servers behind one
 * port told apart by path alone, with one namespace URI, are taken for one: a refusal, never a
 * clash let through.) The journal's record of device addresses keys on it too
 * (daemon/renamed-devices.ts).
 */
export function opcuaNamespace(plc: { endpointUrl: string; namespaceUri: string }): string {
  let server: string;
  try {
    const url = new URL(plc.endpointUrl.replace(/^[A-Za-z][A-Za-z0-9+.-]*:/, 'http:'));
    const host = sameHost(url.hostname.replace(/^\[(.*)\]$/, '$1'));
    server = `opc.tcp://${hostAndPort(host, url.port === '' ? OPC_UA_PORT : Number(url.port))}`;
  } catch {
    // Not a URL (an inventory built in code is not checked by the schema): as written.
    server = plc.endpointUrl.toLowerCase();
  }
  return `${server} namespace ${plc.namespaceUri}`;
}

/**
 * One spelling of a host for all of its spellings the name service reads as one: a host name in
 * any case and with or without its root dot (`PLC-7.plant.` is `plc-7.plant`), an IPv6 address
 * compressed, its zone apart (`0:0:0:0:0:0:0:1` is `::1`, `fe80:0::21%eth0` is `fe80::21%eth0`),
 * an IPv4 address mapped into IPv6 as the IPv4 address (`::ffff:127.0.0.1` is `127.0.0.1`: a
 * socket to it reaches that host). Told apart, two PLC
 * entries for one controller were compared as two, and their devices' registers never against
 * each other.
 */
function sameHost(host: string): string {
  if (isIP(host) === 6) {
    // A zone (`fe80::1%eth0`, the interface a link-local address is reached through) is no
    // part of a URL: the address is compressed without it, and the zone kept, its case aside
    // (two entries are then compared as one controller, never missed as two).
    const at = host.indexOf('%');
    const address = at < 0 ? host : host.slice(0, at);
    const zone = at < 0 ? '' : host.slice(at).toLowerCase();
    let compressed: string;
    try {
      compressed = new URL(`http://[${address}]/`).hostname.slice(1, -1);
    } catch {
      return host.toLowerCase();
    }
    return zone === '' ? (mappedIpv4(compressed) ?? compressed) : `${compressed}${zone}`;
  }
  return host.toLowerCase().replace(/\.$/, '');
}

/** A PLC entry's name, and the other entry's when both name one controller. */
function samePlc(plc: string, other: string, controller: string): string {
  return plc === other ? plc : `${plc} (the same controller as PLC ${other}: ${controller})`;
}

/** The holding registers a device's command write covers, [start, end). */
function commandRange(profile: DeviceProfile, base: number): { start: number; end: number } {
  let start = Infinity;
  let end = -Infinity;
  for (const field of Object.values(profile.modbus?.command ?? {})) {
    if (field === undefined) continue;
    start = Math.min(start, fieldAddress(field, base));
    end = Math.max(end, fieldAddress(field, base) + fieldWidth(field));
  }
  return { start, end };
}
