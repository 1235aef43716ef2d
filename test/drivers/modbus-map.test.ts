import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { ProfileError } from '../../src/core/errors.js';
import { parseProfile, type DeviceProfile } from '../../src/core/profile.js';
import { modbusMapSchema } from '../../src/core/profile-modbus.js';
import {
  Image,
  decodeState,
  encodeCommand,
  planStatusReads,
  rawValue,
  registerMapLines,
  scaled,
} from '../../src/drivers/modbus-map.js';
import { PROFILES, ROOT } from '../helpers/fixtures.js';

/**
 * The register map of a device profile, resolved and coded without a PLC: which requests read
 * the status, how each encoding decodes, how a command is encoded, and every mistake in a map
 * refused with its path before the daemon touches anything.
 */

const shipped = (name: string): DeviceProfile => {
  const p = PROFILES.get(name);
  if (p === undefined) throw new Error(`no profile ${name}`);
  return p;
};

/** A shipped profile's data with its modbus section replaced. */
function withModbus(name: string, modbus: unknown, controller: object = {}): unknown {
  const data = parse(
    readFileSync(join(ROOT, 'devices', 'profiles', `${name}.yaml`), 'utf8'),
  ) as Record<string, unknown>;
  return {
    ...data,
    controller: { ...(data.controller as object), ...controller },
    modbus,
  };
}

function errorsOf(data: unknown): string[] {
  try {
    parseProfile(data, 'test.yaml');
  } catch (error) {
    if (error instanceof ProfileError) return [...error.errors];
    throw error;
  }
  return [];
}

describe('read planning', () => {
  it('reads the shipped valve map with one request and the clock with another', () => {
    const plan = planStatusReads(shipped('valve').modbus!, 100);
    expect(plan.reads).toEqual([
      {
        table: 'holding',
        start: 100,
        length: 8,
        fields: ['state', 'position', 'fault', 'seqEcho', 'time'],
      },
    ]);
    expect(plan.clock).toEqual({ table: 'holding', start: 900, length: 4, fields: ['clock'] });
  });

  it('groups fields within maxGap, splits beyond it, and reads the image time and the echo first', () => {
    const profile = parseProfile(
      withModbus('actuator', {
        maxGap: 2,
        status: {
          state: { at: 0 },
          position: { at: 3 }, // gap 2 after state: same request
          fault: { at: 20 },
          seqEcho: { at: 40 },
          time: { at: 60, type: 'uint64' },
          clock: { address: 900, type: 'uint64' },
        },
        command: { code: { at: 100 }, setpoint: { at: 101 }, seq: { at: 102 } },
      }),
      'gap.yaml',
    );
    const plan = planStatusReads(profile.modbus!, 1000);
    expect(plan.reads.map((r) => [r.start, r.length, r.fields])).toEqual([
      [1060, 4, ['time']],
      [1040, 1, ['seqEcho']],
      [1000, 4, ['state', 'position']],
      [1020, 1, ['fault']],
    ]);
  });

  it('reads the state, position and fault after the echo where they share a request with the time but not with it', () => {
    // State, fault and time in one block, the echo next to the command registers.
    const split = (time: number) =>
      parseProfile(
        withModbus('valve', {
          status: {
            state: { at: 0 },
            position: { at: 1, scale: 0.1 },
            fault: { at: time === 2 ? 6 : 2 },
            time: { at: time, type: 'uint64' },
            seqEcho: { at: 33 },
            clock: { address: 900, type: 'uint64' },
          },
          command: { code: { at: 30 }, setpoint: { at: 31, scale: 0.1 }, seq: { at: 32 } },
        }),
        'split-echo.yaml',
      );
    const reads = (time: number) =>
      planStatusReads(split(time).modbus!, 100).reads.map((r) => [r.start, r.length, r.fields]);
    expect(reads(4)).toEqual([
      [104, 4, ['time']],
      [133, 1, ['seqEcho']],
      [100, 3, ['state', 'position', 'fault']],
    ]);
    // The time between them: the later request spans it again; the first one's words count.
    expect(reads(2)).toEqual([
      [102, 4, ['time']],
      [133, 1, ['seqEcho']],
      [100, 7, ['state', 'position', 'fault']],
    ]);
    const image = new Image();
    image.add({ table: 'holding', start: 102, length: 4, fields: ['time'] }, [0, 0, 0, 7]);
    image.add({ table: 'holding', start: 100, length: 7, fields: [] }, [2, 0, 0, 0, 0, 9, 0]);
    expect(rawValue(split(2).modbus!.status.time!, 100, image)).toBe(7);
  });

  it('never merges different tables, and bits are requested by count', () => {
    const profile = parseProfile(
      withModbus('limit-switch-valve', {
        status: {
          state: {
            table: 'discrete',
            at: 0,
            count: 6,
            bits: shipped('limit-switch-valve').modbus!.status.state.bits,
          },
        },
        command: { code: { at: 10 } },
      }),
      'di.yaml',
    );
    expect(planStatusReads(profile.modbus!, 5).reads).toEqual([
      { table: 'discrete', start: 5, length: 6, fields: ['state'] },
    ]);
  });
});

describe('decoding', () => {
  const image = (table: 'holding' | 'discrete', start: number, values: number[]): Image => {
    const i = new Image();
    i.add({ table, start, length: values.length, fields: [] }, values);
    return i;
  };
  const field = (type: string, wordOrder = 'big') =>
    ({ at: 0, table: 'holding', type, wordOrder }) as Parameters<typeof rawValue>[0];

  it('uint16, int16, uint32, int32 and float32 in both word orders, and uint64 times', () => {
    expect(rawValue(field('uint16'), 0, image('holding', 0, [0xfffe]))).toBe(65534);
    expect(rawValue(field('int16'), 0, image('holding', 0, [0xfffe]))).toBe(-2);
    expect(rawValue(field('uint32'), 0, image('holding', 0, [0x0001, 0x0002]))).toBe(65538);
    expect(rawValue(field('uint32', 'little'), 0, image('holding', 0, [0x0002, 0x0001]))).toBe(
      65538,
    );
    expect(rawValue(field('int32'), 0, image('holding', 0, [0xffff, 0xfffe]))).toBe(-2);
    // 37.25 = 0x42150000
    expect(rawValue(field('float32'), 0, image('holding', 0, [0x4215, 0x0000]))).toBe(37.25);
    expect(rawValue(field('float32', 'little'), 0, image('holding', 0, [0x0000, 0x4215]))).toBe(
      37.25,
    );
    const t = Date.UTC(2026, 11, 1, 12, 0, 0, 123);
    const words = [0, Math.floor(t / 2 ** 32) & 0xffff, Math.floor(t / 65536) & 0xffff, t & 0xffff];
    expect(rawValue(field('uint64'), 0, image('holding', 0, words))).toBe(t);
    expect(rawValue(field('uint64', 'little'), 0, image('holding', 0, [...words].reverse()))).toBe(
      t,
    );
  });

  it('refuses a time beyond 2^53 instead of rounding it', () => {
    expect(() => rawValue(field('uint64'), 0, image('holding', 0, [0xffff, 0, 0, 0]))).toThrow(
      /is not an epoch-ms time/,
    );
  });

  it('bits of coils and discrete inputs form a value, bit i at address + i', () => {
    const bits = { at: 0, table: 'discrete', type: 'uint16', wordOrder: 'big', count: 6 } as const;
    expect(rawValue(bits, 0, image('discrete', 0, [0, 1, 0, 1, 0, 0]))).toBe(0b1010);
  });

  it('scales a percentage: raw × scale + offset', () => {
    const position = shipped('valve').modbus!.status.position!;
    expect(scaled(position, 375)).toBeCloseTo(37.5);
    expect(scaled({ ...position, scale: 0.01, offset: -50 }, 10_000)).toBeCloseTo(50);
  });

  it('reads a float32 percentage as the shortest decimal that is the same float32', () => {
    const position = shipped('float-positioner').modbus!.status.position!;
    // What a float32 register holding 20.4 and 33.33 decodes to, and the register's own limit.
    expect(scaled(position, Math.fround(20.4))).toBe(20.4);
    expect(scaled(position, Math.fround(33.33))).toBe(33.33);
    expect(scaled(position, Math.fround(0.04))).toBe(0.04);
    expect(scaled(position, Math.fround(100 / 3))).toBe(33.333332);
    expect(scaled({ ...position, scale: 100, offset: 0 }, Math.fround(0.375))).toBe(37.5);
    // Every float32 stays itself: the shorter decimal is the same register value.
    for (const raw of [Math.fround(20.4), Math.fround(100 / 3), Math.fround(99.96)]) {
      expect(Math.fround(scaled(position, raw))).toBe(raw);
    }
  });

  it('decodes a status word by the first matching bit rule, and names what it cannot decode', () => {
    const lsv = shipped('limit-switch-valve');
    expect(decodeState(lsv, 0b000010)).toBe('CLOSED');
    expect(decodeState(lsv, 0b000001)).toBe('OPEN');
    expect(decodeState(lsv, 0b001010)).toBe('OPENING'); // still on the closed switch, running open
    expect(decodeState(lsv, 0b000110)).toBe('FAULT'); // fault outranks the limit switch
    expect(decodeState(lsv, 0b100000)).toBe('LOCAL');
    expect(decodeState(lsv, 0)).toBe('STOPPED');
    expect(decodeState(lsv, 0b000011)).toBe('UNKNOWN(0x0003)'); // both switches: a sensor fault
    expect(decodeState(shipped('float-positioner'), 2)).toBe('MOVING');
    expect(decodeState(shipped('float-positioner'), 9)).toBe('UNKNOWN(9)');
  });
});

describe('command encoding', () => {
  it('writes code, setpoint and sequence number in one contiguous block', () => {
    expect(
      encodeCommand(shipped('valve'), 100, { action: 'close', position: null, seq: 7 }),
    ).toEqual({
      start: 110,
      values: [2, 0, 7],
    });
    expect(
      encodeCommand(shipped('actuator'), 0, { action: 'move', position: 37.55, seq: 65535 }),
    ).toEqual({ start: 10, values: [5, 376, 65535] });
  });

  it('a float setpoint goes out low word first, with the vendor command code', () => {
    expect(
      encodeCommand(shipped('float-positioner'), 200, { action: 'move', position: 37.25, seq: 9 }),
    ).toEqual({ start: 200, values: [1, 0x0000, 0x4215, 9] });
  });

  it('a command register alone: no setpoint, no sequence number', () => {
    expect(
      encodeCommand(shipped('limit-switch-valve'), 100, { action: 'stop', position: null, seq: 3 }),
    ).toEqual({ start: 110, values: [3] });
  });

  it('refuses a setpoint its register cannot carry', () => {
    const narrow = {
      ...shipped('actuator').modbus!,
      command: {
        code: { at: 10 },
        setpoint: { at: 11, type: 'int16', scale: 0.001 },
        seq: { at: 12 },
      },
    };
    // At load: no move to 0..100 % may fail its write once accepted.
    expect(() => parseProfile(withModbus('actuator', narrow), 'narrow.yaml')).toThrow(
      'modbus.command.setpoint: a move to 0..100 % is written as 0..100000 (scale 0.001, offset 0), which its int16 register cannot hold (-32768..32767)',
    );
    // And the encoder still refuses to send a value its register would wrap.
    const p = { ...shipped('actuator'), modbus: modbusMapSchema.parse(narrow) };
    expect(() => encodeCommand(p, 0, { action: 'move', position: 50, seq: 1 })).toThrow(
      "setpoint 50000 does not fit the register's int16",
    );
  });
});

describe('a register map with a mistake is refused with its path', () => {
  const valveMap = (patch: { status?: object; command?: object }, extra: object = {}) => ({
    status: { ...shipped('valve').modbus!.status, ...patch.status },
    command: { ...shipped('valve').modbus!.command, ...patch.command },
    ...extra,
  });

  it.each([
    ['a misspelt key', valveMap({}, { maxGapp: 3 }), 'modbus: Unrecognized key: "maxGapp"'],
    [
      'a misspelt field option',
      valveMap({ status: { time: { at: 4, typ: 'uint64' } } }),
      'modbus.status.time: Unrecognized key: "typ"',
    ],
    [
      'both at and address',
      valveMap({ status: { fault: { at: 2, address: 2 } } }),
      'modbus.status.fault: give exactly one of "at" (from the device\'s base) or "address" (absolute)',
    ],
    [
      'a field on a register another one uses',
      valveMap({ status: { fault: { at: 4 } } }),
      'modbus.status.time: holding 4..7 overlaps modbus.status.fault',
    ],
    [
      'a time without a clock',
      valveMap({ status: { clock: undefined } }),
      'modbus.status.time: needs modbus.status.clock (the live controller clock) to measure the skew against',
    ],
    [
      'an echo promised but not mapped',
      valveMap({ status: { seqEcho: undefined } }),
      'modbus.status.seqEcho: required when controller.echoesSeq is true (map the echo, or set echoesSeq: false)',
    ],
    [
      'a gap in the command block',
      valveMap({ command: { seq: { at: 13 } } }),
      'modbus.command: registers 12..12 between setpoint and seq are not mapped; one write must carry the whole command, so the command fields must be contiguous',
    ],
    [
      'a command on input registers',
      valveMap({ command: { code: { at: 10, table: 'input' } } }),
      'modbus.command.code.table: commands are written to holding registers',
    ],
    [
      'a position on discrete inputs',
      valveMap({ status: { position: { at: 1, table: 'discrete' } } }),
      'modbus.status.position.table: discrete bits can carry the state only (a bit table with "bits" or a code)',
    ],
    [
      'an unknown type',
      valveMap({ status: { position: { at: 1, type: 'float64' } } }),
      'modbus.status.position.type: Invalid option: expected one of "uint16"|"int16"|"uint32"|"int32"|"float32"',
    ],
  ])('%s', (_, modbus, message) => {
    expect(errorsOf(withModbus('valve', modbus))).toContain(message);
  });

  it('a bit rule naming an unknown state or a bit past the value', () => {
    const errors = errorsOf(
      withModbus('limit-switch-valve', {
        status: {
          state: {
            table: 'discrete',
            at: 0,
            count: 4,
            bits: { OPNE: { set: [0] }, CLOSED: { set: [5] } },
          },
        },
        command: { code: { at: 10 } },
      }),
    );
    expect(errors).toContain('modbus.status.state.bits.OPNE: unknown state "OPNE"');
    expect(errors).toContain('modbus.status.state.bits.CLOSED: bit 5 is not in a 4-bit value');
  });

  it('a state code without stateCodes, and a move without a setpoint', () => {
    const errors = errorsOf({
      ...(withModbus('actuator', {
        status: { state: { at: 0 }, seqEcho: { at: 3 } },
        command: { code: { at: 10 }, seq: { at: 11 } },
      }) as object),
      controller: { commandCodes: { move: 5, stop: 3, reset: 4 }, echoesSeq: true },
    });
    expect(errors).toContain(
      'modbus.status.state: a state code needs controller.stateCodes (or decode a status word with "bits")',
    );
    expect(errors).toContain(
      'modbus.command.setpoint: required for a profile with the move action',
    );
    expect(errors).toContain('modbus.status.position: required for a profile with the move action');
  });

  it('a signed 16-bit sequence number or echo, and a command code its register cannot carry', () => {
    // Sequence numbers run 1..65535: from 32768 on an int16 register could not be written, and
    // its echo would read negative — every command then failed DEVICE_UNREACHABLE ("the write
    // never reached the controller"), dispatched twice, after the 32767th.
    const actuator = shipped('actuator').modbus!;
    const errors = errorsOf(
      withModbus(
        'actuator',
        {
          status: { ...actuator.status, seqEcho: { at: 3, type: 'int16' } },
          command: {
            ...actuator.command,
            code: { at: 10, type: 'int16' },
            seq: { at: 12, type: 'int16' },
          },
        },
        { commandCodes: { move: 40_000, stop: 3, reset: 4 } },
      ),
    );
    expect(errors).toContain(
      'modbus.command.seq.type: int16 cannot carry sequence numbers 32768..65535 (they run 1..65535); declare the register uint16 (the same 16 bits, read unsigned) or a 32-bit type',
    );
    expect(errors).toContain(
      'modbus.status.seqEcho.type: int16 cannot carry sequence numbers 32768..65535 (they run 1..65535); declare the register uint16 (the same 16 bits, read unsigned) or a 32-bit type',
    );
    expect(errors).toContain(
      'controller.commandCodes.move: 40000 does not fit modbus.command.code, a int16 register (-32768..32767)',
    );
    expect(errors).toHaveLength(3);
    // The same registers declared uint16 load; an int16 code register carries codes that fit it.
    expect(
      errorsOf(
        withModbus('actuator', {
          status: { ...actuator.status, seqEcho: { at: 3, type: 'uint16' } },
          command: { ...actuator.command, code: { at: 10, type: 'int16' } },
        }),
      ),
    ).toEqual([]);
  });

  it('a state code its register cannot carry', () => {
    // Accepted before: the controller can never report 70000 in a 16-bit register, so the valve
    // was never read as LOCAL (its raw value read UNKNOWN, or another state's code).
    const valve = shipped('valve');
    const codes = { ...valve.controller.stateCodes, LOCAL: 70_000, FAULT: 40_000 };
    const inInt16 = {
      ...valve.modbus,
      status: { ...valve.modbus!.status, state: { at: 0, type: 'int16' } },
    };
    expect(errorsOf(withModbus('valve', inInt16, { stateCodes: codes }))).toEqual([
      'controller.stateCodes.FAULT: 40000 does not fit modbus.status.state, a int16 register (-32768..32767): the controller could never report it, and the device would never be read as FAULT',
      'controller.stateCodes.LOCAL: 70000 does not fit modbus.status.state, a int16 register (-32768..32767): the controller could never report it, and the device would never be read as LOCAL',
    ]);
    // Three discrete inputs carry codes 0..7.
    const onBits = {
      ...valve.modbus,
      status: { ...valve.modbus!.status, state: { table: 'discrete', at: 0, count: 3 } },
    };
    expect(
      errorsOf(withModbus('valve', onBits, { stateCodes: { ...codes, LOCAL: 8, FAULT: 7 } })),
    ).toEqual([
      'controller.stateCodes.LOCAL: 8 does not fit modbus.status.state, 3 discrete bits (0..7): the controller could never report it, and the device would never be read as LOCAL',
    ]);
    // A 32-bit register carries them (here at a register of its own).
    const inUint32 = {
      ...valve.modbus,
      status: { ...valve.modbus!.status, state: { address: 800, type: 'uint32' } },
    };
    expect(errorsOf(withModbus('valve', inUint32, { stateCodes: codes }))).toEqual([]);
  });

  it('unknown keys anywhere in a profile', () => {
    const data = withModbus('valve', shipped('valve').modbus) as Record<string, unknown>;
    const errors = errorsOf({
      ...data,
      timing: { ...(data.timing as object), pollIntervallMs: 50 },
      controller: { ...(data.controller as object), echoSeq: true },
    });
    expect(errors).toContain('timing: Unrecognized key: "pollIntervallMs"');
    expect(errors).toContain('controller: Unrecognized key: "echoSeq"');
  });
});

describe('the map as sluiced --check prints it', () => {
  it('lists each field, the read requests and the command write', () => {
    expect(registerMapLines(shipped('float-positioner'), 200)).toEqual([
      'status  state    holding (FC3) 210, uint16',
      'status  position holding (FC3) 211..212, float32, little-endian words',
      'status  fault    holding (FC3) 213, uint16',
      'status  seqEcho  holding (FC3) 214, uint16',
      'status  time     holding (FC3) 216..219, uint64, big-endian words',
      'status  clock    holding (FC3) 220..223, uint64, big-endian words',
      'command code     holding 200, uint16',
      'command setpoint holding 201..202, float32, little-endian words',
      'command seq      holding 203, uint16',
      'reads   holding 210+10 (maxGap 8)',
      'writes  holding 200+4 (one FC16)',
    ]);
  });
});
