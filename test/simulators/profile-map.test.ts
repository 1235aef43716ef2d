import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import {
  ACTUATOR_STATE_CODES,
  FLOAT_COMMAND,
  FLOAT_COMMAND_CODES,
  FLOAT_STATE_CODES,
  FLOAT_STATUS,
  LIMIT_SWITCH_BITS,
  LIMIT_SWITCH_COMMAND_CODES,
  LIMIT_SWITCH_COMMAND_REGISTER,
  LIMIT_SWITCH_STATUS_WORD,
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

describe('simulator vendor layouts match the field-device profiles', () => {
  interface FieldProfile {
    controller: {
      stateCodes?: Record<string, number>;
      commandCodes: Record<string, number>;
      echoesSeq: boolean;
      refusal: string;
    };
    modbus: {
      status: Record<
        string,
        { at?: number; type?: string; wordOrder?: string; bits?: Record<string, object> }
      >;
      command: Record<string, { at?: number; type?: string; wordOrder?: string }>;
    };
  }
  const load = async (name: string): Promise<FieldProfile> =>
    parse(
      await readFile(join(packageRoot(), 'devices', 'profiles', `${name}.yaml`), 'utf8'),
    ) as FieldProfile;

  it('limit-switch-valve: status word bits and the command register', async () => {
    const p = await load('limit-switch-valve');
    const b = LIMIT_SWITCH_BITS;
    expect(p.controller.commandCodes).toEqual(LIMIT_SWITCH_COMMAND_CODES);
    expect(p.controller.echoesSeq).toBe(false);
    expect(p.modbus.status.state?.at).toBe(LIMIT_SWITCH_STATUS_WORD);
    expect(p.modbus.status.state?.bits).toEqual({
      FAULT: { set: [b.fault] },
      LOCAL: { set: [b.local] },
      OPENING: { set: [b.runningOpen] },
      CLOSING: { set: [b.runningClosed] },
      OPEN: { set: [b.openLimit], clear: [b.closedLimit] },
      CLOSED: { set: [b.closedLimit], clear: [b.openLimit] },
      STOPPED: { clear: [b.openLimit, b.closedLimit, b.runningOpen, b.runningClosed] },
    });
    expect(Object.keys(p.modbus.status)).toEqual(['state']);
    expect(p.modbus.command).toEqual({ code: { at: LIMIT_SWITCH_COMMAND_REGISTER } });
  });

  it('float-positioner: vendor codes, float32 low word first, refusal to FAULT', async () => {
    const p = await load('float-positioner');
    expect(p.controller.stateCodes).toEqual(FLOAT_STATE_CODES);
    expect(p.controller.commandCodes).toEqual(FLOAT_COMMAND_CODES);
    expect(p.controller.refusal).toBe('fault');
    const { status, command } = p.modbus;
    expect(status.state?.at).toBe(FLOAT_STATUS.state);
    expect(status.position).toEqual({
      at: FLOAT_STATUS.position,
      type: 'float32',
      wordOrder: 'little',
    });
    expect(status.fault?.at).toBe(FLOAT_STATUS.fault);
    expect(status.seqEcho?.at).toBe(FLOAT_STATUS.seqEcho);
    expect(status.time).toEqual({ at: FLOAT_STATUS.time, type: 'uint64' });
    expect(status.clock).toEqual({ at: FLOAT_STATUS.clock, type: 'uint64' });
    expect(command.code?.at).toBe(FLOAT_COMMAND.code);
    expect(command.setpoint).toEqual({
      at: FLOAT_COMMAND.setpoint,
      type: 'float32',
      wordOrder: 'little',
    });
    expect(command.seq?.at).toBe(FLOAT_COMMAND.seq);
  });
});
