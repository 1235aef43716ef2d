import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import {
  ACTUATOR_STATE_CODES,
  COMMAND_CODES,
  MODBUS_CLOCK_ADDRESS,
  MODBUS_COMMAND,
  MODBUS_COMMAND_LENGTH,
  MODBUS_COMMAND_OFFSET,
  MODBUS_POSITION_SCALE,
  MODBUS_STATUS,
  MODBUS_STATUS_LENGTH,
  MODBUS_STATUS_OFFSET,
  OPCUA_COMMAND_VARIABLES,
  OPCUA_STATUS_VARIABLES,
  VALVE_STATE_CODES,
} from '../../simulators/codes.js';
import { packageRoot } from '../../simulators/package-root.js';

/**
 * The simulators keep their own copy of the register map and codes (they must not share code
 * with the bridge); this keeps the copy honest against the device profiles.
 */
interface Profile {
  controller: { stateCodes: Record<string, number>; commandCodes: Record<string, number> };
  modbus: {
    status: Record<string, { at?: number; address?: number; scale?: number; type?: string }>;
    command: Record<string, { at?: number; scale?: number }>;
  };
  opcua: { status: Record<string, string>; command: Record<string, string> };
}

async function profile(name: string): Promise<Profile> {
  return parse(
    await readFile(join(packageRoot(), 'devices', 'profiles', `${name}.yaml`), 'utf8'),
  ) as Profile;
}

describe('simulator constants match the device profiles', () => {
  for (const name of ['valve', 'actuator'] as const) {
    it(`${name}: state codes, command codes, register map and node names`, async () => {
      const p = await profile(name);
      expect(p.controller.stateCodes).toEqual(
        name === 'valve' ? VALVE_STATE_CODES : ACTUATOR_STATE_CODES,
      );
      for (const [command, code] of Object.entries(p.controller.commandCodes)) {
        expect(COMMAND_CODES[command as keyof typeof COMMAND_CODES], command).toBe(code);
      }
      const { status, command } = p.modbus;
      for (const [field, index] of Object.entries(MODBUS_STATUS)) {
        expect(status[field]?.at, field).toBe(MODBUS_STATUS_OFFSET + index);
      }
      expect(MODBUS_STATUS.time + 4).toBe(MODBUS_STATUS_LENGTH);
      expect(status.time?.type).toBe('uint64');
      expect(status.clock).toEqual({ address: MODBUS_CLOCK_ADDRESS, type: 'uint64' });
      for (const [field, index] of Object.entries(MODBUS_COMMAND)) {
        expect(command[field]?.at, field).toBe(MODBUS_COMMAND_OFFSET + index);
      }
      expect(Object.keys(command)).toHaveLength(MODBUS_COMMAND_LENGTH);
      expect(status.position?.scale).toBe(1 / MODBUS_POSITION_SCALE);
      expect(command.setpoint?.scale).toBe(1 / MODBUS_POSITION_SCALE);
      expect(Object.values(p.opcua.command)).toEqual([...OPCUA_COMMAND_VARIABLES]);
      for (const variable of Object.values(p.opcua.status)) {
        expect(OPCUA_STATUS_VARIABLES).toContain(variable);
      }
    });
  }
});
