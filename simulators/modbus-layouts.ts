/**
 * The register maps of simulated Modbus devices, one per layout (codes.ts): which address
 * of a device's block holds what, which may be written, and how a write becomes a command
 * for the controller program. The server (modbus-server.ts) frames requests and finds the
 * block an address belongs to; a block answers for its own offsets only.
 *
 * - `standard`: the device profiles' map (status block, command block with a seq).
 * - `limit-switch`: a motorised on/off valve with a status word (also discrete inputs) and a
 *   bare command register: no seq, every non-zero write is a command.
 * - `float`: a positioner with vendor codes, float32 setpoint/position (low word first) and
 *   its own copy of the controller clock.
 */
import {
  FLOAT_COMMAND,
  FLOAT_COMMAND_CODES,
  FLOAT_COMMAND_LENGTH,
  FLOAT_STATE_CODES,
  FLOAT_STATUS,
  LIMIT_SWITCH_BITS,
  LIMIT_SWITCH_COMMAND_CODES,
  LIMIT_SWITCH_COMMAND_REGISTER,
  LIMIT_SWITCH_INPUT_COUNT,
  LIMIT_SWITCH_STATUS_WORD,
  MODBUS_COMMAND,
  MODBUS_COMMAND_LENGTH,
  MODBUS_COMMAND_OFFSET,
  MODBUS_LAYOUT_SPANS,
  MODBUS_POSITION_SCALE,
  MODBUS_STATUS,
  MODBUS_STATUS_LENGTH,
  MODBUS_STATUS_OFFSET,
} from './codes.js';
import type { ActuatorState, CommandName, ModbusLayout } from './codes.js';
import type { PublishedStatus } from './controller.js';
import type { SimDevice } from './plc.js';

/** Splits an epoch-ms time into four registers, most significant word first. */
export function timeToRegisters(epochMs: number): [number, number, number, number] {
  const value = BigInt.asUintN(64, BigInt(Math.trunc(epochMs)));
  return [
    Number((value >> 48n) & 0xffffn),
    Number((value >> 32n) & 0xffffn),
    Number((value >> 16n) & 0xffffn),
    Number(value & 0xffffn),
  ];
}

/** An IEEE-754 float32 as two registers, low word first ("CDAB"). */
export function floatToRegisters(value: number): [number, number] {
  const bytes = Buffer.alloc(4);
  bytes.writeFloatBE(value, 0);
  return [bytes.readUInt16BE(2), bytes.readUInt16BE(0)];
}

/** Two registers, low word first, as an IEEE-754 float32. */
export function registersToFloat(low: number, high: number): number {
  const bytes = Buffer.alloc(4);
  bytes.writeUInt16BE(high, 0);
  bytes.writeUInt16BE(low, 2);
  return bytes.readFloatBE(0);
}

/** The PLC's live clock as four registers; read at most once per request (one instant). */
export type ClockReading = () => readonly number[];

/** One holding register a request writes: its offset in the device's block and the value. */
export interface BlockWrite {
  offset: number;
  value: number;
}

/** One device's registers as its layout maps them; offsets are from the device's base. */
export interface RegisterBlock {
  readonly layout: ModbusLayout;
  readonly device: SimDevice;
  readonly base: number;
  /** Registers from base the block occupies, gaps included (for the map and fault routing). */
  readonly span: number;
  /** FC3: the holding register at `offset`, or undefined where nothing is mapped. */
  holding(offset: number, clock: ClockReading): number | undefined;
  /** FC4: the input register at `offset`, or undefined where nothing is mapped. */
  input(offset: number, clock: ClockReading): number | undefined;
  /** FC2: the discrete input at `offset`, or undefined where nothing is mapped. */
  discreteInput(offset: number): boolean | undefined;
  /** Whether a client may write the holding register at `offset`. */
  writable(offset: number): boolean;
  /**
   * Applies one request's writes to this block (all of them writable, checked first) and
   * hands the controller the command(s) they make. `heldOnLinkMs`: how long a link fault held
   * the request (the write log's).
   */
  write(writes: readonly BlockWrite[], heldOnLinkMs?: number): void;
  /** Power lost: the command registers are volatile. */
  powerCycled(): void;
  /** A scan of the PLC ran. */
  scanned(): void;
}

export function registerBlock(
  layout: ModbusLayout,
  device: SimDevice,
  base: number,
): RegisterBlock {
  switch (layout) {
    case 'standard':
      return new StandardBlock(device, base);
    case 'limit-switch':
      return new LimitSwitchBlock(device, base);
    case 'float':
      return new FloatBlock(device, base);
  }
}

/** The device profiles' map: base+0..7 status, base+10..12 command (code, setpoint, seq). */
class StandardBlock implements RegisterBlock {
  readonly layout = 'standard';
  readonly span = MODBUS_LAYOUT_SPANS.standard;
  readonly device: SimDevice;
  readonly base: number;
  /** The command block as last written: [code, setpoint in 0.1 %, seq]. */
  #command: [number, number, number] = [0, 0, 0];

  constructor(device: SimDevice, base: number) {
    this.device = device;
    this.base = base;
  }

  holding(offset: number): number | undefined {
    if (offset >= MODBUS_STATUS_OFFSET && offset < MODBUS_STATUS_OFFSET + MODBUS_STATUS_LENGTH) {
      return standardStatus(this.device.published)[offset - MODBUS_STATUS_OFFSET];
    }
    if (commandIndex(offset) !== undefined) {
      return this.#command[offset - MODBUS_COMMAND_OFFSET];
    }
    return undefined;
  }

  /** Input registers are the same image as the holding registers in this layout. */
  input(offset: number): number | undefined {
    return this.holding(offset);
  }

  discreteInput(): undefined {
    return undefined;
  }

  writable(offset: number): boolean {
    return commandIndex(offset) !== undefined;
  }

  /** The command block as it stands after the whole request: one FC16 is one command. */
  write(writes: readonly BlockWrite[], heldOnLinkMs?: number): void {
    let seqWritten = false;
    for (const { offset, value } of writes) {
      const index = commandIndex(offset);
      if (index === undefined) continue;
      this.#command[index] = value;
      if (index === MODBUS_COMMAND.seq) seqWritten = true;
    }
    if (!seqWritten) return;
    const [code, setpoint, seq] = this.#command;
    this.device.receiveWrite(
      { code, setpoint: setpoint / MODBUS_POSITION_SCALE, seq },
      heldOnLinkMs,
    );
  }

  powerCycled(): void {
    this.#command = [0, 0, 0];
  }

  scanned(): void {
    // The command block holds what was written last, as the profile's handshake expects.
  }
}

function commandIndex(offset: number): 0 | 1 | 2 | undefined {
  const index = offset - MODBUS_COMMAND_OFFSET;
  return index >= 0 && index < MODBUS_COMMAND_LENGTH ? (index as 0 | 1 | 2) : undefined;
}

/** The status block as published by the last scan: what a client reads. */
function standardStatus(image: PublishedStatus): number[] {
  const block = new Array<number>(MODBUS_STATUS_LENGTH).fill(0);
  block[MODBUS_STATUS.state] = image.stateCode;
  block[MODBUS_STATUS.position] = Math.round(image.position * MODBUS_POSITION_SCALE);
  block[MODBUS_STATUS.fault] = image.faultCode;
  block[MODBUS_STATUS.seqEcho] = image.seqEcho;
  timeToRegisters(image.scanTime).forEach((word, i) => {
    block[MODBUS_STATUS.time + i] = word;
  });
  return block;
}

const LIMIT_SWITCH_COMMANDS = new Map<number, CommandName>(
  Object.entries(LIMIT_SWITCH_COMMAND_CODES).map(([name, code]) => [code, name as CommandName]),
);

/**
 * A motorised on/off valve: B+0 status word (read-only; bits also discrete inputs B+0..B+5),
 * B+10 command register. There is no seq: every non-zero write is a command, counted and
 * logged with seq 0. The register reads back the last command until the scan that takes it.
 */
class LimitSwitchBlock implements RegisterBlock {
  readonly layout = 'limit-switch';
  readonly span = MODBUS_LAYOUT_SPANS['limit-switch'];
  readonly device: SimDevice;
  readonly base: number;
  #command = 0;

  constructor(device: SimDevice, base: number) {
    this.device = device;
    this.base = base;
  }

  holding(offset: number): number | undefined {
    if (offset === LIMIT_SWITCH_STATUS_WORD) return statusWord(this.device);
    if (offset === LIMIT_SWITCH_COMMAND_REGISTER) return this.#command;
    return undefined;
  }

  input(): undefined {
    return undefined;
  }

  discreteInput(offset: number): boolean | undefined {
    if (offset < 0 || offset >= LIMIT_SWITCH_INPUT_COUNT) return undefined;
    return ((statusWord(this.device) >> offset) & 1) === 1;
  }

  writable(offset: number): boolean {
    return offset === LIMIT_SWITCH_COMMAND_REGISTER;
  }

  /**
   * Writing 0 is no command: it is not counted or logged and leaves the register as it is, so
   * a command still waiting for its scan keeps showing.
   */
  write(writes: readonly BlockWrite[], heldOnLinkMs?: number): void {
    for (const { offset, value } of writes) {
      if (offset !== LIMIT_SWITCH_COMMAND_REGISTER || value === 0) continue;
      this.#command = value;
      this.device.receiveWrite(
        {
          code: value,
          setpoint: 0,
          seq: 0,
          command: LIMIT_SWITCH_COMMANDS.get(value) ?? null,
        },
        heldOnLinkMs,
      );
    }
  }

  powerCycled(): void {
    this.#command = 0;
  }

  /** The scan that took the waiting commands clears the register (not a held handshake). */
  scanned(): void {
    if (this.device.pendingWrites === 0) this.#command = 0;
  }
}

/**
 * The status word, from the published image. The limit switches are physical: they follow
 * the position whatever the state, at the unrounded position. The FAULT bit also shows the
 * drive's own fault output (`drive-trip`), wired past the controller program: it is set in
 * any state, LOCAL included.
 */
function statusWord(device: SimDevice): number {
  const image = device.published;
  const bit = (on: boolean, n: number): number => (on ? 1 << n : 0);
  return (
    bit(image.rawPosition >= 100, LIMIT_SWITCH_BITS.openLimit) |
    bit(image.rawPosition <= 0, LIMIT_SWITCH_BITS.closedLimit) |
    bit(image.state === 'FAULT' || device.driveTripped, LIMIT_SWITCH_BITS.fault) |
    bit(image.state === 'OPENING', LIMIT_SWITCH_BITS.runningOpen) |
    bit(image.state === 'CLOSING', LIMIT_SWITCH_BITS.runningClosed) |
    bit(image.state === 'LOCAL', LIMIT_SWITCH_BITS.local)
  );
}

const FLOAT_COMMANDS = new Map<number, CommandName>(
  Object.entries(FLOAT_COMMAND_CODES).map(([name, code]) => [code, name as CommandName]),
);

/**
 * A positioner: B+0..3 command block (vendor code, float32 setpoint, seq), B+10..23 status
 * block (vendor state code, float32 position, fault, seq echo, reserved, scan time, live
 * clock). B+4..9 are not mapped.
 */
class FloatBlock implements RegisterBlock {
  readonly layout = 'float';
  readonly span = MODBUS_LAYOUT_SPANS.float;
  readonly device: SimDevice;
  readonly base: number;
  /** The command block as last written: [code, setpoint low word, high word, seq]. */
  #command: [number, number, number, number] = [0, 0, 0, 0];

  constructor(device: SimDevice, base: number) {
    this.device = device;
    this.base = base;
  }

  holding(offset: number, clock: ClockReading): number | undefined {
    if (offset >= 0 && offset < FLOAT_COMMAND_LENGTH) return this.#command[offset];
    const image = this.device.published;
    const at = (field: number, length = 1): number | undefined =>
      offset >= field && offset < field + length ? offset - field : undefined;
    if (at(FLOAT_STATUS.state) !== undefined) {
      // The plant file gives this layout to actuators only.
      return FLOAT_STATE_CODES[image.state as ActuatorState];
    }
    const position = at(FLOAT_STATUS.position, 2);
    if (position !== undefined) return floatToRegisters(image.rawPosition)[position];
    if (at(FLOAT_STATUS.fault) !== undefined) return image.faultCode;
    if (at(FLOAT_STATUS.seqEcho) !== undefined) return image.seqEcho;
    if (at(FLOAT_STATUS.reserved) !== undefined) return 0;
    const time = at(FLOAT_STATUS.time, 4);
    if (time !== undefined) return timeToRegisters(image.scanTime)[time];
    const live = at(FLOAT_STATUS.clock, 4);
    if (live !== undefined) return clock()[live];
    return undefined;
  }

  input(): undefined {
    return undefined;
  }

  discreteInput(): undefined {
    return undefined;
  }

  writable(offset: number): boolean {
    return offset >= 0 && offset < FLOAT_COMMAND_LENGTH;
  }

  /** The command block as it stands after the whole request: one FC16 of B+0..3 is one command. */
  write(writes: readonly BlockWrite[], heldOnLinkMs?: number): void {
    let seqWritten = false;
    for (const { offset, value } of writes) {
      if (offset < 0 || offset >= FLOAT_COMMAND_LENGTH) continue;
      this.#command[offset] = value;
      if (offset === FLOAT_COMMAND.seq) seqWritten = true;
    }
    if (!seqWritten) return;
    const [code, low, high, seq] = this.#command;
    this.device.receiveWrite(
      {
        code,
        setpoint: registersToFloat(low, high),
        seq,
        command: FLOAT_COMMANDS.get(code) ?? null,
      },
      heldOnLinkMs,
    );
  }

  powerCycled(): void {
    this.#command = [0, 0, 0, 0];
  }

  scanned(): void {
    // The command block holds what was written last, as the seq handshake expects.
  }
}
