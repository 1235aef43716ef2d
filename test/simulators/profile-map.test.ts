import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import {
  ACTUATOR_STATE_CODES,
  COMMAND_CODES,
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
    status: Record<string, number>;
    command: Record<string, number>;
    positionScale: number;
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
      expect(p.modbus.status).toEqual({
        offset: MODBUS_STATUS_OFFSET,
        length: MODBUS_STATUS_LENGTH,
        ...MODBUS_STATUS,
      });
      expect(p.modbus.command).toEqual({
        offset: MODBUS_COMMAND_OFFSET,
        length: MODBUS_COMMAND_LENGTH,
        ...MODBUS_COMMAND,
      });
      expect(p.modbus.positionScale).toBe(MODBUS_POSITION_SCALE);
      expect(Object.values(p.opcua.command)).toEqual([...OPCUA_COMMAND_VARIABLES]);
      for (const variable of Object.values(p.opcua.status)) {
        expect(OPCUA_STATUS_VARIABLES).toContain(variable);
      }
    });
  }
});
