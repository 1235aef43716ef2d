import { z } from 'zod';

/**
 * The schema of the device inventory (the `plcs` and `devices` sections of the configuration).
 * Kept apart from the drivers so that validating a configuration loads no protocol stack.
 */

const modbusPlc = z.object({
  protocol: z.literal('modbus'),
  host: z.string().min(1),
  port: z.number().int().min(1).max(65535),
  unitId: z.number().int().min(0).max(255).default(1),
  clockRegister: z.number().int().min(0).max(65532).default(900),
  requestTimeoutMs: z.number().int().positive().default(1000),
});

const opcuaPlc = z.object({
  protocol: z.literal('opcua'),
  endpointUrl: z.string().regex(/^opc\.tcp:\/\/.+/, 'must be an opc.tcp:// URL'),
  namespaceUri: z.string().min(1),
  securityMode: z.enum(['None', 'Sign', 'SignAndEncrypt']).default('None'),
  securityPolicy: z
    .enum(['None', 'Basic256Sha256', 'Aes128_Sha256_RsaOaep', 'Aes256_Sha256_RsaPss'])
    .default('None'),
  requestTimeoutMs: z.number().int().positive().default(2000),
});

export const plcSchema = z.discriminatedUnion('protocol', [modbusPlc, opcuaPlc]);

export const deviceSchema = z.object({
  plc: z.string().min(1),
  profile: z.string().min(1),
  /** Modbus: first holding register of the device's block. */
  base: z.number().int().min(0).max(65535).optional(),
  /** OPC UA: the device's object name in the controller's namespace (default: the device id). */
  object: z.string().min(1).optional(),
});

export const inventorySchema = z.object({
  plcs: z.record(z.string().min(1), plcSchema),
  devices: z.record(z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$/), deviceSchema),
});

export type Inventory = z.infer<typeof inventorySchema>;
export type PlcConfig = z.infer<typeof plcSchema>;
