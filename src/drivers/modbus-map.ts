import type { Action } from '../core/command.js';
import type { DeviceProfile } from '../core/profile.js';
import {
  fieldAddress,
  fieldWidth,
  type ModbusMap,
  type RegisterTable,
  type StatusFieldName,
} from '../core/profile-modbus.js';

/**
 * A device's register map resolved at its base: which read requests fetch its status (as few as
 * the map's gaps allow), how each field decodes, and how a command is encoded into one write.
 * Pure: the Modbus driver does the I/O, `sluiced --check` prints the map.
 */

type StatusField = NonNullable<ModbusMap['status'][StatusFieldName]>;
type CommandField = NonNullable<ModbusMap['command']['code' | 'setpoint' | 'seq']>;
type Field = StatusField | CommandField;

/** Registers per read request (FC3/FC4) and bits per request (FC1/FC2), Modbus §6. */
const MAX_REGISTERS = 125;
const MAX_BITS = 2000;

export interface ReadRequest {
  readonly table: RegisterTable;
  readonly start: number;
  readonly length: number;
  readonly fields: readonly StatusFieldName[];
}

export interface StatusPlan {
  /**
   * In the order they are sent: the request with the image time first, then the one with the
   * echo, then the rest; the state, position and fault are never read before the echo. Later
   * requests see a newer (or the same) controller image, so an image time read first can only
   * make the image look older than it is, and a state read with or after the echo already
   * reflects the command the echo names.
   */
  readonly reads: readonly ReadRequest[];
  /** The live clock, read on its own; null when the profile maps none. */
  readonly clock: ReadRequest | null;
}

/** Groups the status fields (the clock apart) into read requests. */
export function planStatusReads(map: ModbusMap, base: number): StatusPlan {
  const fields: { name: StatusFieldName; table: RegisterTable; start: number; end: number }[] = [];
  let clock: ReadRequest | null = null;
  for (const [name, field] of Object.entries(map.status) as [
    StatusFieldName,
    StatusField | undefined,
  ][]) {
    if (field === undefined) continue;
    const start = fieldAddress(field, base);
    const end = start + fieldWidth(field);
    if (name === 'clock') {
      clock = { table: field.table, start, length: end - start, fields: ['clock'] };
      continue;
    }
    fields.push({ name, table: field.table, start, end });
  }
  fields.sort((a, b) => a.table.localeCompare(b.table) || a.start - b.start);
  const groups: { table: RegisterTable; start: number; end: number; fields: StatusFieldName[] }[] =
    [];
  for (const f of fields) {
    const last = groups[groups.length - 1];
    const limit = f.table === 'coil' || f.table === 'discrete' ? MAX_BITS : MAX_REGISTERS;
    if (
      last !== undefined &&
      last.table === f.table &&
      f.start - last.end <= map.maxGap &&
      Math.max(last.end, f.end) - last.start <= limit
    ) {
      last.end = Math.max(last.end, f.end);
      last.fields.push(f.name);
    } else {
      groups.push({ table: f.table, start: f.start, end: f.end, fields: [f.name] });
    }
  }
  // The state, position and fault must be read after the echo, so that they reflect the
  // command it names, and the image time before it. Where the time shares its request with
  // such fields but not with the echo (state, fault and time at 0..7, the echo at 33), the time
  // is read alone and those fields in a request of their own after the echo: one request more.
  // That request may span the time's registers again; Image.words takes the first request that
  // holds a field, so the time still comes from the one sent first.
  const time = fields.find((f) => f.name === 'time');
  const timeGroup = groups.find((g) => g.fields.includes('time'));
  const echoGroup = groups.find((g) => g.fields.includes('seqEcho'));
  if (
    time !== undefined &&
    timeGroup !== undefined &&
    echoGroup !== undefined &&
    timeGroup !== echoGroup &&
    timeGroup.fields.length > 1
  ) {
    const rest = fields.filter((f) => f.name !== 'time' && timeGroup.fields.includes(f.name));
    timeGroup.start = Math.min(...rest.map((f) => f.start));
    timeGroup.end = Math.max(...rest.map((f) => f.end));
    timeGroup.fields = rest.map((f) => f.name);
    groups.push({ table: time.table, start: time.start, end: time.end, fields: ['time'] });
  }
  const rank = (g: (typeof groups)[number]): number =>
    g.fields.includes('time') ? 0 : g.fields.includes('seqEcho') ? 1 : 2;
  const reads = groups
    .map((g, i) => ({ g, i }))
    .sort((a, b) => rank(a.g) - rank(b.g) || a.i - b.i)
    .map(({ g }) => ({
      table: g.table,
      start: g.start,
      length: g.end - g.start,
      fields: g.fields,
    }));
  return { reads, clock };
}

/** The words (or bits, as 0/1) one request returned, by table and address. */
export class Image {
  private readonly blocks: { table: RegisterTable; start: number; values: readonly number[] }[] =
    [];

  add(request: ReadRequest, values: readonly number[]): void {
    this.blocks.push({ table: request.table, start: request.start, values });
  }

  words(table: RegisterTable, start: number, width: number): number[] {
    for (const b of this.blocks) {
      if (b.table === table && start >= b.start && start + width <= b.start + b.values.length) {
        return b.values.slice(start - b.start, start - b.start + width);
      }
    }
    throw new Error(`${table} ${start}+${width} was not read`);
  }
}

/** The raw value of a field: registers combined by word order, or bits as an integer. */
export function rawValue(field: Field, base: number, image: Image): number {
  const start = fieldAddress(field, base);
  const width = fieldWidth(field);
  const words = image.words(field.table, start, width);
  if (field.table === 'coil' || field.table === 'discrete') {
    return words.reduce((value, bit, i) => value + (bit === 0 ? 0 : 2 ** i), 0);
  }
  const ordered = field.wordOrder === 'big' ? words : [...words].reverse();
  switch (field.type) {
    case 'uint16':
      return ordered[0] ?? 0;
    case 'int16': {
      const w = ordered[0] ?? 0;
      return w >= 0x8000 ? w - 0x10000 : w;
    }
    case 'uint32':
    case 'int32':
    case 'float32': {
      const buffer = Buffer.alloc(4);
      buffer.writeUInt16BE(ordered[0] ?? 0, 0);
      buffer.writeUInt16BE(ordered[1] ?? 0, 2);
      if (field.type === 'uint32') return buffer.readUInt32BE(0);
      if (field.type === 'int32') return buffer.readInt32BE(0);
      return buffer.readFloatBE(0);
    }
    case 'uint64': {
      let value = 0n;
      for (const w of ordered) value = (value << 16n) | BigInt(w);
      if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
        throw new Error(
          `value ${value.toString()} at ${field.table} ${start} is not an epoch-ms time`,
        );
      }
      return Number(value);
    }
  }
}

/** A percentage field: raw × scale + offset. */
export function scaled(field: NonNullable<ModbusMap['status']['position']>, raw: number): number {
  // A float32 register holds 24 bits: a positioner at 20.4 % reads 20.399999618530273. The
  // shortest decimal that is the same float32 is the value the register carries (20.4), not
  // "stopped at 20.3999996185 %" in a result, a precision the register does not have.
  const value = field.type === 'float32' ? shortestFloat32(raw) : raw;
  // 12 significant digits: 403 × 0.1 is 40.3, not 40.300000000000004 (what operators read).
  return Number((value * field.scale + field.offset).toPrecision(12));
}

/** The decimal with the fewest significant digits that is the float32 `value` (9 always are). */
function shortestFloat32(value: number): number {
  if (!Number.isFinite(value)) return value;
  for (let digits = 1; digits < 9; digits++) {
    const candidate = Number(value.toPrecision(digits));
    if (Math.fround(candidate) === value) return candidate;
  }
  return value;
}

/** The state name a state field's raw value stands for (UNKNOWN(…) when none). */
export function decodeState(profile: DeviceProfile, raw: number): string {
  const field = profile.modbus?.status.state;
  if (field?.bits !== undefined) {
    for (const [state, rule] of Object.entries(field.bits)) {
      if (
        rule.set.every((b) => (raw & (1 << b)) !== 0) &&
        rule.clear.every((b) => (raw & (1 << b)) === 0)
      ) {
        return state;
      }
    }
    return `UNKNOWN(0x${raw.toString(16).padStart(4, '0')})`;
  }
  for (const [name, value] of Object.entries(profile.controller.stateCodes ?? {})) {
    if (value === raw) return name;
  }
  // Not a profile state: the pipeline refuses to act on it and says so.
  return `UNKNOWN(${raw})`;
}

/** Registers of an integer or float value, in the field's word order. */
function encode(field: CommandField, value: number, what: string): number[] {
  const buffer = Buffer.alloc(4);
  const range = (min: number, max: number): void => {
    if (!Number.isInteger(value) || value < min || value > max) {
      throw new RangeError(`${what} ${value} does not fit the register's ${field.type}`);
    }
  };
  switch (field.type) {
    case 'uint16':
      range(0, 0xffff);
      return [value];
    case 'int16':
      range(-0x8000, 0x7fff);
      return [value & 0xffff];
    case 'uint32':
      range(0, 0xffffffff);
      buffer.writeUInt32BE(value, 0);
      break;
    case 'int32':
      range(-0x80000000, 0x7fffffff);
      buffer.writeInt32BE(value, 0);
      break;
    case 'float32':
      if (!Number.isFinite(value)) throw new RangeError(`${what} ${value} is not a number`);
      buffer.writeFloatBE(value, 0);
      break;
  }
  const words = [buffer.readUInt16BE(0), buffer.readUInt16BE(2)];
  return field.wordOrder === 'big' ? words : words.reverse();
}

/** The one write (FC16) that carries a command: its first register and values. */
export function encodeCommand(
  profile: DeviceProfile,
  base: number,
  command: { readonly action: Action; readonly position: number | null; readonly seq: number },
): { readonly start: number; readonly values: number[] } {
  const map = profile.modbus;
  if (map === undefined) throw new Error(`profile ${profile.profile} has no Modbus register map`);
  const code = profile.controller.commandCodes[command.action];
  if (code === undefined) {
    throw new Error(`profile ${profile.profile} has no command code for ${command.action}`);
  }
  const parts: { start: number; words: number[] }[] = [
    {
      start: fieldAddress(map.command.code, base),
      words: encode(map.command.code, code, 'command code'),
    },
  ];
  const { setpoint, seq } = map.command;
  if (setpoint !== undefined) {
    const percent = command.position ?? 0;
    let raw = (percent - setpoint.offset) / setpoint.scale;
    // 37.55 / 0.1 is 375.49999999999994 in binary: round to 12 digits before to the integer.
    if (setpoint.type !== 'float32') raw = Math.round(Number(raw.toPrecision(12)));
    parts.push({ start: fieldAddress(setpoint, base), words: encode(setpoint, raw, 'setpoint') });
  }
  if (seq !== undefined) {
    parts.push({
      start: fieldAddress(seq, base),
      words: encode(seq, command.seq, 'sequence number'),
    });
  }
  parts.sort((a, b) => a.start - b.start);
  const start = parts[0]?.start ?? 0;
  const values: number[] = [];
  for (const part of parts) {
    // The profile check makes the command fields contiguous; a hole here is a bug.
    if (part.start !== start + values.length) {
      throw new Error(`profile ${profile.profile}: command fields are not contiguous`);
    }
    values.push(...part.words);
  }
  return { start, values };
}

/** The register range the command write covers. */
export function commandSpan(map: ModbusMap, base: number): { start: number; length: number } {
  let start = Infinity;
  let end = -Infinity;
  for (const field of Object.values(map.command)) {
    if (field === undefined) continue;
    start = Math.min(start, fieldAddress(field, base));
    end = Math.max(end, fieldAddress(field, base) + fieldWidth(field));
  }
  return { start, length: end - start };
}

const TABLE_FC: Readonly<Record<RegisterTable, string>> = {
  coil: 'coil (FC1)',
  discrete: 'discrete input (FC2)',
  holding: 'holding (FC3)',
  input: 'input (FC4)',
};

function describeField(name: string, field: Field, base: number): string {
  const start = fieldAddress(field, base);
  const width = fieldWidth(field);
  const range = width === 1 ? `${start}` : `${start}..${start + width - 1}`;
  const bitTable = field.table === 'coil' || field.table === 'discrete';
  const table =
    name === 'code' || name === 'setpoint' || name === 'seq' ? 'holding' : TABLE_FC[field.table];
  const parts = [`${name.padEnd(9)}${table} ${range}`];
  if (!bitTable) parts.push(field.type);
  if (!bitTable && width > 1) parts.push(`${field.wordOrder}-endian words`);
  if ('scale' in field && (field.scale !== 1 || field.offset !== 0)) {
    parts.push(`× ${field.scale}${field.offset === 0 ? '' : ` + ${field.offset}`}`);
  }
  if ('bits' in field && field.bits !== undefined) {
    parts.push(`bits → ${Object.keys(field.bits).join(', ')}`);
  }
  return parts.join(', ');
}

/** One line per field and per read request, for `sluiced --check`. */
export function registerMapLines(profile: DeviceProfile, base: number): string[] {
  const map = profile.modbus;
  if (map === undefined) return ['no Modbus register map'];
  const lines: string[] = [];
  for (const [name, field] of Object.entries(map.status)) {
    if (field !== undefined) lines.push(`status  ${describeField(name, field, base)}`);
  }
  for (const [name, field] of Object.entries(map.command)) {
    if (field !== undefined) lines.push(`command ${describeField(name, field, base)}`);
  }
  const plan = planStatusReads(map, base);
  const requests = plan.reads.map((r) => `${r.table} ${r.start}+${r.length}`).join(', ');
  lines.push(`reads   ${requests} (maxGap ${map.maxGap})`);
  const command = commandSpan(map, base);
  lines.push(`writes  holding ${command.start}+${command.length} (one FC16)`);
  return lines;
}
