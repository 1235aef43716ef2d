import { z } from 'zod';

/**
 * The Modbus section of a device profile: where each status and command field lives, in which
 * table, and how its registers encode the value. Real PLC maps are not one contiguous block:
 * fields may sit anywhere, in holding or input registers, coils or discrete inputs, as 16- or
 * 32-bit integers, floats in either word order, or bits of a status word. The driver groups the
 * status fields into as few read requests as the map allows (docs/device-profiles.md).
 */

export const REGISTER_TABLES = ['holding', 'input', 'coil', 'discrete'] as const;
export type RegisterTable = (typeof REGISTER_TABLES)[number];

export const FIELD_TYPES = ['uint16', 'int16', 'uint32', 'int32', 'float32', 'uint64'] as const;
export type FieldType = (typeof FIELD_TYPES)[number];

/** Registers a value of each type occupies. */
export const TYPE_WIDTH: Readonly<Record<FieldType, number>> = {
  uint16: 1,
  int16: 1,
  uint32: 2,
  int32: 2,
  float32: 2,
  uint64: 4,
};

const address = z.int().min(0).max(65535);

/** Where a field is: `at` counts from the device's base (site file), `address` is absolute. */
const location = {
  at: address.optional(),
  address: address.optional(),
  table: z.enum(REGISTER_TABLES).default('holding'),
  /** Coils and discrete inputs: how many consecutive bits form the value (bit i = at + i). */
  count: z.int().min(1).max(16).optional(),
  /** Multi-register values: `big` puts the most significant word first, `little` the least. */
  wordOrder: z.enum(['big', 'little']).default('big'),
};

const bitRule = z.strictObject({
  /** Bits that must be 1. */
  set: z.array(z.int().min(0).max(15)).default([]),
  /** Bits that must be 0. */
  clear: z.array(z.int().min(0).max(15)).default([]),
});

/** An integer code: state, fault, sequence echo, command code, sequence number. */
const codeField = z.strictObject({
  ...location,
  type: z.enum(['uint16', 'int16', 'uint32', 'int32']).default('uint16'),
});

/** The state: a code (controller.stateCodes) or a status word decoded by a bit table. */
const stateField = codeField.extend({
  /**
   * state name → the bits that must be set and clear; the first state (in file order) whose
   * rule matches is the state. A value no rule matches reads as UNKNOWN(0x…).
   */
  bits: z.record(z.string().min(1), bitRule).optional(),
});

/** A percentage: value = raw × scale + offset (0.1 % registers: scale 0.1). */
const scaledField = z.strictObject({
  ...location,
  type: z.enum(['uint16', 'int16', 'uint32', 'int32', 'float32']).default('uint16'),
  scale: z
    .number()
    .refine((v) => v !== 0 && Number.isFinite(v), 'must be a finite number other than 0')
    .default(1),
  offset: z.number().default(0),
});

/** A time in epoch milliseconds, unsigned 64-bit (four registers). */
const timeField = z.strictObject({
  ...location,
  type: z.literal('uint64').default('uint64'),
});

export const modbusMapSchema = z.strictObject({
  /**
   * Status fields of one table at most this many unused registers apart are read in one
   * request (the unused registers must be readable: a PLC answers exception 02 for an
   * unmapped address). 0 reads only contiguous fields together.
   */
  maxGap: z.int().min(0).max(120).default(8),
  status: z.strictObject({
    state: stateField,
    position: scaledField.optional(),
    fault: codeField.optional(),
    seqEcho: codeField.optional(),
    /** The controller time of the scan that published the image (its source time). */
    time: timeField.optional(),
    /** The controller's live clock, read to measure its skew (SPEC §6). */
    clock: timeField.optional(),
  }),
  /** Written with one FC16 request: the fields must cover one contiguous register range. */
  command: z.strictObject({
    code: codeField,
    setpoint: scaledField.optional(),
    seq: codeField.optional(),
  }),
});

export type ModbusMap = z.output<typeof modbusMapSchema>;
export type StatusFieldName = keyof ModbusMap['status'];
export type CommandFieldName = keyof ModbusMap['command'];
type AnyField =
  z.output<typeof codeField> | z.output<typeof scaledField> | z.output<typeof timeField>;

/** Registers (or bits) a field occupies. */
export function fieldWidth(field: AnyField): number {
  if (field.table === 'coil' || field.table === 'discrete') return field.count ?? 1;
  return TYPE_WIDTH[field.type];
}

/** The field's first address for a device at `base`. */
export function fieldAddress(field: AnyField, base: number): number {
  return field.address ?? base + (field.at ?? 0);
}

/**
 * The bit rules of a decoded status word that can never match: every value a rule matches, a
 * rule before it (the driver tries them in this order, modbus-map.ts decodeState) matches
 * first. Such a rule's state is never read: with `STOPPED: { clear: [0, 1, 3, 4] }` before
 * `FAULT: { set: [2], clear: [0, 1, 3, 4] }`, a valve faulted between its limits reads STOPPED.
 * Each is returned as an error naming the rules that take its values. Rules with faults of
 * their own (a bit set and clear, a bit past the value) are refused for those and skipped.
 */
function shadowedBitRules(
  bits: NonNullable<ModbusMap['status']['state']['bits']>,
  width: number,
): string[] {
  const mask = (list: readonly number[]): number => list.reduce((m, bit) => m | (1 << bit), 0);
  const rules = Object.entries(bits)
    .filter(
      ([, rule]) =>
        [...rule.set, ...rule.clear].every((bit) => bit < width) &&
        !rule.set.some((bit) => rule.clear.includes(bit)),
    )
    .map(([name, rule]) => ({ name, set: mask(rule.set), clear: mask(rule.clear) }));
  // Only the bits some rule names decide which rule matches first.
  const named = rules.reduce((m, rule) => m | rule.set | rule.clear, 0);
  const errors: string[] = [];
  rules.forEach((rule, index) => {
    const earlier = rules.slice(0, index);
    const takers = new Set<string>();
    // Every value of the named bits this rule matches: its set bits, and each combination of
    // the named bits it leaves free (at most 2^16, and the search ends at the first value the
    // rule is the first to match).
    const free = named & ~(rule.set | rule.clear);
    for (let combination = free; ; combination = (combination - 1) & free) {
      const value = rule.set | combination;
      const first = earlier.find(
        (other) => (value & other.set) === other.set && (value & other.clear) === 0,
      );
      if (first === undefined) return;
      takers.add(first.name);
      if (combination === 0) break;
    }
    const names = earlier.filter((other) => takers.has(other.name)).map((other) => other.name);
    const list =
      names.length === 1
        ? names.join('')
        : `${names.slice(0, -1).join(', ')} and ${names.slice(-1).join('')}`;
    errors.push(
      `modbus.status.state.bits.${rule.name}: never matched: every value it matches, ${list} ${names.length === 1 ? 'matches' : 'match'} first (the first rule that matches, in file order, is the state), so the device would never be read as ${rule.name}; put ${rule.name} before ${list}, or give it bits that tell it apart`,
    );
  });
  return errors;
}

/**
 * Checks a register map beyond its schema: each field placed exactly once, widths and tables
 * that fit, no two fields on one register, a command that one write can carry, a bit rule for
 * every state of a decoded status word that some value matches first, and the fields the
 * controller section promises. Every problem is returned with its path.
 */
export function checkModbusMap(
  map: ModbusMap,
  context: {
    readonly states: readonly string[];
    readonly echoesSeq: boolean;
    readonly hasMove: boolean;
    readonly stateCodes: boolean;
    /** The profile's name and positionTolerance, for the check of a move's resolution. */
    readonly profile?: string;
    readonly positionTolerance?: number;
    /** controller.commandCodes: each must fit the command code register. */
    readonly commandCodes?: Readonly<Record<string, number>>;
    /** controller.stateCodes: each must fit the state register (when it carries a code). */
    readonly stateCodeValues?: Readonly<Record<string, number>>;
  },
): string[] {
  const errors: string[] = [];
  const placed: {
    name: string;
    table: RegisterTable;
    absolute: boolean;
    start: number;
    end: number;
  }[] = [];
  const check = (section: 'status' | 'command', name: string, field: AnyField): void => {
    const path = `modbus.${section}.${name}`;
    if ((field.at === undefined) === (field.address === undefined)) {
      errors.push(
        `${path}: give exactly one of "at" (from the device's base) or "address" (absolute)`,
      );
    }
    const bitTable = field.table === 'coil' || field.table === 'discrete';
    if (bitTable && (name !== 'state' || field.type !== 'uint16')) {
      errors.push(
        `${path}.table: ${field.table} bits can carry the state only (a bit table with "bits" or a code)`,
      );
    }
    if (!bitTable && field.count !== undefined) {
      errors.push(`${path}.count: only for coils and discrete inputs`);
    }
    if (section === 'command' && field.table !== 'holding') {
      errors.push(`${path}.table: commands are written to holding registers`);
    }
    const absolute = field.address !== undefined;
    const start = fieldAddress(field, 0);
    const width = fieldWidth(field);
    if (absolute && start + width > 65536) {
      errors.push(`${path}: registers ${start}..${start + width - 1} run past 65535`);
    }
    // Relative and absolute fields are compared among themselves; the site check compares
    // them once the device's base is known.
    const clash = placed.find(
      (other) =>
        other.table === field.table &&
        other.absolute === absolute &&
        start < other.end &&
        other.start < start + width,
    );
    if (clash !== undefined) {
      errors.push(`${path}: ${field.table} ${start}..${start + width - 1} overlaps ${clash.name}`);
    }
    placed.push({ name: path, table: field.table, absolute, start, end: start + width });
  };
  for (const [name, field] of Object.entries(map.status)) {
    if (field !== undefined) check('status', name, field);
  }
  for (const [name, field] of Object.entries(map.command)) {
    if (field !== undefined) check('command', name, field);
  }

  const { state, seqEcho, time, clock, position } = map.status;
  if (state.bits === undefined && !context.stateCodes) {
    errors.push(
      'modbus.status.state: a state code needs controller.stateCodes (or decode a status word with "bits")',
    );
  }
  if (state.bits !== undefined) {
    const width = state.table === 'coil' || state.table === 'discrete' ? (state.count ?? 1) : 16;
    for (const [name, rule] of Object.entries(state.bits)) {
      if (!context.states.includes(name)) {
        errors.push(`modbus.status.state.bits.${name}: unknown state "${name}"`);
      }
      for (const bit of [...rule.set, ...rule.clear]) {
        if (bit >= width) {
          errors.push(
            `modbus.status.state.bits.${name}: bit ${bit} is not in a ${width}-bit value`,
          );
        }
      }
      if (rule.set.some((bit) => rule.clear.includes(bit))) {
        errors.push(`modbus.status.state.bits.${name}: a bit cannot be both set and clear`);
      }
    }
    // As every state needs a state code: a state without a rule is never read. Without its
    // FAULT rule a faulted valve at its closed limit read CLOSED (a reset there a no-op), and
    // without its LOCAL rule a valve in LOCAL read CLOSED, and an open was written to it.
    for (const name of context.states) {
      if (!Object.hasOwn(state.bits, name)) {
        errors.push(
          `modbus.status.state.bits.${name}: missing bit rule: the device would never be read as ${name} (give each state the bits the controller reports it by)`,
        );
      }
    }
    errors.push(...shadowedBitRules(state.bits, width));
    if (state.type !== 'uint16' && state.type !== 'int16') {
      errors.push('modbus.status.state.type: a bit-decoded status word is one 16-bit register');
    }
  }
  if (context.echoesSeq && seqEcho === undefined) {
    errors.push(
      'modbus.status.seqEcho: required when controller.echoesSeq is true (map the echo, or set echoesSeq: false)',
    );
  }
  if (!context.echoesSeq && seqEcho !== undefined) {
    errors.push('modbus.status.seqEcho: mapped, but controller.echoesSeq is false');
  }
  if (context.echoesSeq && map.command.seq === undefined) {
    errors.push('modbus.command.seq: required when controller.echoesSeq is true');
  }
  // Sequence numbers run 1..65535 (src/core/sequence.ts). A signed 16-bit register carries
  // half of them: from 32768 on the write could not be encoded — after 32767 commands every
  // command would fail as if its write were lost — and an echo read as int16 would be negative
  // and never match the command. The register's 16 bits are the same read unsigned.
  for (const [path, field] of [
    ['modbus.command.seq', map.command.seq],
    ['modbus.status.seqEcho', seqEcho],
  ] as const) {
    if (field?.type === 'int16') {
      errors.push(
        `${path}.type: int16 cannot carry sequence numbers 32768..65535 (they run 1..65535); declare the register uint16 (the same 16 bits, read unsigned) or a 32-bit type`,
      );
    }
  }
  const codeRange = CODE_RANGE[map.command.code.type];
  for (const [action, code] of Object.entries(context.commandCodes ?? {})) {
    if (code < codeRange[0] || code > codeRange[1]) {
      errors.push(
        `controller.commandCodes.${action}: ${code} does not fit modbus.command.code, a ${map.command.code.type} register (${codeRange[0]}..${codeRange[1]})`,
      );
    }
  }
  // A state code the register cannot carry is never read: decodeState compares the raw value,
  // and that state would never be seen (a LOCAL never read as LOCAL, a fault state never read).
  if (state.bits === undefined) {
    const bits = state.table === 'coil' || state.table === 'discrete' ? (state.count ?? 1) : null;
    const [min, max] = bits === null ? CODE_RANGE[state.type] : [0, 2 ** bits - 1];
    const register =
      bits === null
        ? `a ${state.type} register`
        : `${bits} ${state.table} bit${bits === 1 ? '' : 's'}`;
    for (const [name, code] of Object.entries(context.stateCodeValues ?? {})) {
      if (code < min || code > max) {
        errors.push(
          `controller.stateCodes.${name}: ${code} does not fit modbus.status.state, ${register} (${min}..${max}): the controller could never report it, and the device would never be read as ${name}`,
        );
      }
    }
  }
  if (time !== undefined && clock === undefined) {
    // A source time means nothing without the controller's clock offset: read alone, an
    // image time would be taken as gateway time.
    errors.push(
      'modbus.status.time: needs modbus.status.clock (the live controller clock) to measure the skew against',
    );
  }
  if (context.hasMove && map.command.setpoint === undefined) {
    errors.push('modbus.command.setpoint: required for a profile with the move action');
  }
  if (context.hasMove && position === undefined) {
    errors.push('modbus.status.position: required for a profile with the move action');
  }
  if (context.hasMove && map.command.setpoint !== undefined) {
    errors.push(...setpointRangeProblems(map.command.setpoint));
    if (position !== undefined && context.positionTolerance !== undefined) {
      errors.push(
        ...resolutionProblems(
          map.command.setpoint,
          position,
          context.positionTolerance,
          context.profile ?? '(unnamed)',
        ),
      );
    }
  }

  // One FC16 request carries the whole command: its fields must tile one register range.
  const commandFields: [string, AnyField][] = [];
  for (const [name, field] of Object.entries(map.command)) {
    if (field !== undefined) commandFields.push([name, field]);
  }
  const absolute = commandFields.filter(([, f]) => f.address !== undefined).length;
  if (absolute !== 0 && absolute !== commandFields.length) {
    errors.push('modbus.command: use "at" for every command field, or "address" for every one');
  } else {
    const spans = commandFields
      .map(([name, f]) => ({
        name,
        start: fieldAddress(f, 0),
        end: fieldAddress(f, 0) + fieldWidth(f),
      }))
      .sort((a, b) => a.start - b.start);
    for (let i = 1; i < spans.length; i++) {
      const previous = spans[i - 1];
      const span = spans[i];
      if (previous !== undefined && span !== undefined && span.start > previous.end) {
        errors.push(
          `modbus.command: registers ${previous.end}..${span.start - 1} between ${previous.name} and ${span.name} are not mapped; one write must carry the whole command, so the command fields must be contiguous`,
        );
      }
    }
    const first = spans[0];
    const last = spans[spans.length - 1];
    if (first !== undefined && last !== undefined && last.end - first.start > 123) {
      errors.push('modbus.command: more than 123 registers cannot be written in one request');
    }
  }
  return errors;
}

type ScaledField = z.output<typeof scaledField>;

/** The values an integer code register can carry, by its type. */
const CODE_RANGE: Readonly<Record<z.output<typeof codeField>['type'], readonly [number, number]>> =
  {
    uint16: [0, 0xffff],
    int16: [-0x8000, 0x7fff],
    uint32: [0, 0xffffffff],
    int32: [-0x80000000, 0x7fffffff],
  };

/** The range of each setpoint type's raw value. */
const RAW_RANGE: Readonly<Record<ScaledField['type'], readonly [number, number]>> = {
  uint16: [0, 0xffff],
  int16: [-0x8000, 0x7fff],
  uint32: [0, 0xffffffff],
  int32: [-0x80000000, 0x7fffffff],
  // The largest finite float32: beyond it the register would carry Infinity.
  float32: [-3.4028234663852886e38, 3.4028234663852886e38],
};

/** A number as an operator reads it: 0.05, not 0.05000000000000000277. */
const shown = (v: number): string => String(Number(v.toPrecision(12)));

/** The raw value a position is written as (encodeCommand's arithmetic). */
function rawOf(field: ScaledField, percent: number): number {
  const raw = (percent - field.offset) / field.scale;
  return field.type === 'float32' ? raw : Math.round(Number(raw.toPrecision(12)));
}

/**
 * A move takes any position from 0 to 100 % (SPEC §2): the setpoint register must hold the
 * raw value of each, or the write of an accepted, journaled command fails at its dispatch.
 * The raw value is linear in the position, so the two ends decide.
 */
function setpointRangeProblems(field: ScaledField): string[] {
  const ends = [rawOf(field, 0), rawOf(field, 100)];
  const [min, max] = RAW_RANGE[field.type];
  if (ends.every((raw) => raw >= min && raw <= max)) return [];
  return [
    `modbus.command.setpoint: a move to 0..100 % is written as ${shown(Math.min(...ends))}..${shown(Math.max(...ends))} (scale ${shown(field.scale)}, offset ${shown(field.offset)}), which its ${field.type} register cannot hold (${shown(min)}..${shown(max)})`,
  ];
}

/**
 * How far from its value a field's register can carry a position, at worst: half a step of
 * an integer register, half a float32 unit in the last place of the largest raw value.
 */
function halfStep(field: ScaledField): number {
  if (field.type !== 'float32') return Math.abs(field.scale) / 2;
  const largest = Math.max(...[0, 100].map((p) => Math.abs((p - field.offset) / field.scale)));
  return 2 ** (Math.floor(Math.log2(largest)) - 24) * Math.abs(field.scale);
}

/** Whether every value the setpoint can be written as is a value the position can read. */
function onReadGrid(setpoint: ScaledField, position: ScaledField): boolean {
  if (setpoint.type === 'float32' || position.type === 'float32') return false;
  const whole = (v: number): boolean => Math.abs(v - Math.round(v)) < 1e-9;
  return (
    whole(setpoint.scale / position.scale) &&
    whole((setpoint.offset - position.offset) / position.scale)
  );
}

/**
 * A move is confirmed when the position read back lies within positionTolerance of the
 * position asked for (readback.ts). The setpoint is written rounded to its register's step and
 * the position is read rounded to its own: a move halfway between two steps lands half a step
 * off, and is read up to half a read step further off even by a controller that rounds. Past
 * the tolerance such a move is written, moves the device, and can never be confirmed: it fails
 * READBACK_TIMEOUT after its confirm timeout, having actuated. A profile whose registers cannot
 * honour every position within its own tolerance is refused, with the tolerance it needs.
 */
function resolutionProblems(
  setpoint: ScaledField,
  position: ScaledField,
  tolerance: number,
  profile: string,
): string[] {
  const written = halfStep(setpoint);
  const read = onReadGrid(setpoint, position) ? 0 : halfStep(position);
  // Strictly less: the readback's subtraction is not exact at the boundary (37.6 − 37.55 is
  // 0.0500000000000043), so a tolerance of exactly the worst offset would still miss.
  if (written + read < tolerance) return [];
  const steps = [
    `modbus.command.setpoint is written in steps of ${shown(2 * written)} % (a position between two steps lands up to ${shown(written)} % off)`,
    ...(read === 0
      ? []
      : [
          `modbus.status.position reads in steps of ${shown(2 * read)} % (up to ${shown(read)} % further off)`,
        ]),
  ];
  // A position halfway between two steps of the coarser register, near mid-stroke.
  const [grid, half] = written >= read ? [setpoint, written] : [position, read];
  const example = Math.min(
    100,
    Math.floor((37.5 - grid.offset) / (2 * half)) * 2 * half + grid.offset + half,
  );
  return [
    `positionTolerance: ${shown(tolerance)} % is finer than profile "${profile}" can confirm: ${steps.join(', and ')}; a move to some positions (e.g. ${shown(example)}) would be written, move the device and never be confirmed. Set positionTolerance above ${shown(written + read)}, or map finer registers`,
  ];
}
