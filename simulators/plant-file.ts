/**
 * The plant file: which PLCs listen where and which devices each one runs. One zod schema
 * gives validation, defaults and every error at once with its path (STYLE.md §10).
 */
import { readFile } from 'node:fs/promises';
import { parseDocument } from 'yaml';
import { z } from 'zod';
import {
  MODBUS_CLOCK_ADDRESS,
  MODBUS_CLOCK_LENGTH,
  MODBUS_LAYOUTS,
  MODBUS_LAYOUT_PROFILE,
  MODBUS_LAYOUT_SPANS,
  REFUSALS,
} from './codes.js';
import type { DeviceProfile, ModbusLayout } from './codes.js';
import { PlantFileError } from './errors.js';
import type { PlantFileIssue } from './errors.js';
import { zodIssues } from './zod-issues.js';

/** Names end up in URLs, node ids (`ns=1;s=<device>.<Name>`) and namespace URIs: no dots. */
const NAME = /^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/;
const nameSchema = z
  .string()
  .regex(NAME, 'letters, digits, "_" and "-" (no dots), 1–64 characters');

const port = z.int().min(0).max(65535).describe('0 binds an ephemeral port');

const clockSchema = z
  .strictObject({
    offsetMs: z.number().default(0),
    driftPpm: z.number().min(-1_000_000).max(1_000_000).default(0),
  })
  .prefault({});

const deviceCommon = {
  profile: z.enum(['valve', 'actuator']),
  /** Full stroke 0 → 100 %. */
  travelMs: z.int().min(0).max(600_000).default(1500),
  /** Default: twice the travel time. */
  travelTimeoutMs: z.int().min(1).max(1_200_000).optional(),
  initialPosition: z.number().min(0).max(100).default(0),
  /** An illegal command keeps the state (`keep`) or puts the device in FAULT (`fault`). */
  refusal: z.enum(REFUSALS).default('keep'),
};

const modbusDeviceSchema = z.strictObject({
  ...deviceCommon,
  /** The span of the layout must fit below 65536: checked with the register map. */
  base: z.int().min(0).max(65535),
  layout: z.enum(MODBUS_LAYOUTS).default('standard'),
});

const opcuaDeviceSchema = z.strictObject({
  ...deviceCommon,
  layout: z.undefined({ error: 'a register layout is for Modbus devices only' }).optional(),
});

const plcCommon = {
  host: z.string().min(1).default('127.0.0.1'),
  port,
  scanMs: z.int().min(1).max(1000).default(10),
  clock: clockSchema,
};

const modbusPlcSchema = z.strictObject({
  protocol: z.literal('modbus'),
  ...plcCommon,
  unitId: z.int().min(0).max(255).default(1),
  /**
   * A read touching an address no device maps: `refuse` answers exception 02, as a PLC that
   * maps only what is configured; `zero` reads it as 0, as a PLC whose registers are one flat
   * memory area (block reads across devices then go through).
   */
  unmappedReads: z.enum(['refuse', 'zero']).default('refuse'),
  devices: z.record(nameSchema, modbusDeviceSchema),
});

const opcuaPlcSchema = z.strictObject({
  protocol: z.literal('opcua'),
  ...plcCommon,
  /**
   * Message security the endpoint offers. `Sign` and `SignAndEncrypt` are offered with the
   * Basic256Sha256 and Aes128_Sha256_RsaOaep policies; client certificates are accepted.
   */
  securityModes: z
    .array(z.enum(['None', 'Sign', 'SignAndEncrypt']))
    .min(1)
    .default(['None']),
  /**
   * Namespace URIs the server registers before the plant's own, which then has the index after
   * them (1 without any): a server that orders its namespaces otherwise after a restart (a
   * firmware update that registers another, another start order). Restarting a plant on the
   * same port with one moves the plant's namespace under a client that keeps its session.
   */
  namespacesBefore: z.array(z.string().min(1)).default([]),
  /**
   * The server's application URI (its endpoint descriptions, and the certificate it makes):
   * default urn:sluice-sim:<plc>. Another one plays another server with the same program and
   * namespace (a twin line's PLC) taking the address.
   */
  applicationUri: z.string().min(1).optional(),
  devices: z.record(nameSchema, opcuaDeviceSchema),
});

const plcSchema = z.discriminatedUnion('protocol', [modbusPlcSchema, opcuaPlcSchema]);

/** The control API must never leave the machine: loopback addresses only. */
const controlSchema = z
  .strictObject({
    host: z.enum(['127.0.0.1', '::1', 'localhost']).default('127.0.0.1'),
    port: port.default(5080),
  })
  .prefault({});

export const plantSchema = z
  .strictObject({
    control: controlSchema,
    plcs: z.record(nameSchema, plcSchema),
  })
  .superRefine((plant, ctx) => {
    const plcNames = Object.keys(plant.plcs);
    if (plcNames.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['plcs'], message: 'a plant needs at least one PLC' });
    }
    const seenDevices = new Map<string, string>();
    const seenPorts = new Map<string, string>();
    const claimPort = (host: string, value: number, owner: string, path: string[]): void => {
      if (value === 0) return;
      const key = `${host}:${value}`;
      const previous = seenPorts.get(key);
      if (previous !== undefined) {
        ctx.addIssue({
          code: 'custom',
          path,
          message: `port ${key} is already used by ${previous}`,
        });
      } else {
        seenPorts.set(key, owner);
      }
    };
    claimPort(plant.control.host, plant.control.port, 'the control API', ['control', 'port']);
    for (const [plcName, plc] of Object.entries(plant.plcs)) {
      claimPort(plc.host, plc.port, `PLC ${plcName}`, ['plcs', plcName, 'port']);
      const deviceIds = Object.keys(plc.devices);
      if (deviceIds.length === 0) {
        ctx.addIssue({
          code: 'custom',
          path: ['plcs', plcName, 'devices'],
          message: 'a PLC needs at least one device',
        });
      }
      const devices: Readonly<Record<string, DeviceConfig>> = plc.devices;
      for (const [id, device] of Object.entries(devices)) {
        const path = ['plcs', plcName, 'devices', id];
        const other = seenDevices.get(id);
        if (other !== undefined) {
          ctx.addIssue({
            code: 'custom',
            path,
            message: `device id "${id}" is also on PLC ${other}`,
          });
        }
        seenDevices.set(id, plcName);
        if (device.layout !== undefined) checkLayout(device.layout, device.profile, path, ctx);
        if (device.travelTimeoutMs !== undefined && device.travelTimeoutMs <= device.travelMs) {
          ctx.addIssue({
            code: 'custom',
            path: [...path, 'travelTimeoutMs'],
            message: 'must be longer than travelMs, or a full stroke would always time out',
          });
        }
      }
      if (plc.protocol === 'modbus') checkRegisterMap(plcName, plc.devices, ctx);
    }
  });

/** A vendor layout plays one kind of field device: its codes only fit that profile. */
function checkLayout(
  layout: ModbusLayout,
  profile: DeviceProfile,
  path: string[],
  ctx: z.RefinementCtx,
): void {
  const fits = MODBUS_LAYOUT_PROFILE[layout];
  if (fits !== undefined && fits !== profile) {
    ctx.addIssue({
      code: 'custom',
      path: [...path, 'layout'],
      message: `layout ${layout} is for profile ${fits}, not ${profile}`,
    });
  }
}

function checkRegisterMap(
  plcName: string,
  devices: Readonly<Record<string, { base: number; layout: ModbusLayout }>>,
  ctx: z.RefinementCtx,
): void {
  const spans: { owner: string; start: number; end: number }[] = [
    {
      owner: 'the PLC clock',
      start: MODBUS_CLOCK_ADDRESS,
      end: MODBUS_CLOCK_ADDRESS + MODBUS_CLOCK_LENGTH,
    },
  ];
  for (const [id, device] of Object.entries(devices)) {
    const span = {
      owner: `device ${id}`,
      start: device.base,
      end: device.base + MODBUS_LAYOUT_SPANS[device.layout],
    };
    if (span.end > 65536) {
      ctx.addIssue({
        code: 'custom',
        path: ['plcs', plcName, 'devices', id, 'base'],
        message: `registers ${span.start}..${span.end - 1} (layout ${device.layout}) run past 65535`,
      });
      continue;
    }
    const clash = spans.find((other) => span.start < other.end && other.start < span.end);
    if (clash !== undefined) {
      ctx.addIssue({
        code: 'custom',
        path: ['plcs', plcName, 'devices', id, 'base'],
        message: `registers ${span.start}..${span.end - 1} overlap ${clash.owner} (${clash.start}..${clash.end - 1})`,
      });
    }
    spans.push(span);
  }
}

export type PlantInput = z.input<typeof plantSchema>;
export type PlantConfig = z.output<typeof plantSchema>;
export type PlcConfig = z.output<typeof plcSchema>;
export type ModbusPlcConfig = z.output<typeof modbusPlcSchema>;
export type OpcuaPlcConfig = z.output<typeof opcuaPlcSchema>;
/** `base` and `layout` are present on Modbus devices only; typed on both so callers can test for them. */
export type DeviceConfig =
  z.output<typeof modbusDeviceSchema> | (z.output<typeof opcuaDeviceSchema> & { base?: undefined });

/** Validates a plant given as data (tests build plants in code); throws PlantFileError. */
export function parsePlant(input: unknown, source = 'plant'): PlantConfig {
  const result = plantSchema.safeParse(input);
  if (!result.success) throw new PlantFileError(source, zodIssues(result.error));
  return result.data;
}

/** Reads, parses and validates a YAML plant file; every problem is reported at once. */
export async function loadPlantFile(path: string): Promise<PlantConfig> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const message = err instanceof Error ? err.message : String(err);
    throw new PlantFileError(path, [{ path: '', message: `cannot read: ${message}` }], {
      cause: err,
    });
  }
  return parsePlantYaml(text, path);
}

export function parsePlantYaml(text: string, source: string): PlantConfig {
  const document = parseDocument(text, { uniqueKeys: true, prettyErrors: false });
  if (document.errors.length > 0) {
    const issues: PlantFileIssue[] = document.errors.map((error) => ({
      path: '',
      message: `YAML ${error.code} at line ${error.linePos?.[0].line ?? '?'}: ${error.message}`,
    }));
    throw new PlantFileError(source, issues);
  }
  return parsePlant(document.toJS(), source);
}
