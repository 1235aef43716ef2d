/**
 * Modbus TCP front end of a simulated PLC, hand-written on node:net rather than modbus-serial's
 * ServerTCP: fault injection needs control that a vector callback API does not give (destroy
 * the socket before or after a request is applied, apply a write and never answer, answer with
 * an exception, hold a reply back).
 *
 * Supported: FC3 / FC4 (read holding / input registers: one register image), FC6 (write
 * single register), FC16 (write multiple registers). Modbus Application Protocol v1.1b3 §6;
 * MBAP framing per Modbus Messaging on TCP/IP v1.0b §3.1.
 *
 * Requests on one connection are served one at a time, in order, as a PLC's communication
 * task does; a request is applied when it is served and its reply leaves after any injected
 * latency. Latency `when: before` holds a request on the link before it is applied (and the
 * requests behind it on that connection with it); it is applied when the delay ends even if
 * the client has gone meanwhile: its bytes were already on the wire.
 *
 * A power cycle resets every connection and clears the command registers (volatile memory);
 * while the power is off, new connections are reset at once.
 */
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import {
  MODBUS_CLOCK_ADDRESS,
  MODBUS_CLOCK_LENGTH,
  MODBUS_COMMAND,
  MODBUS_COMMAND_LENGTH,
  MODBUS_COMMAND_OFFSET,
  MODBUS_DEVICE_SPAN,
  MODBUS_POSITION_SCALE,
  MODBUS_STATUS,
  MODBUS_STATUS_LENGTH,
  MODBUS_STATUS_OFFSET,
} from './codes.js';
import { planRequest } from './faults.js';
import type { Direction, FaultSet } from './faults.js';
import type { ModbusPlcConfig } from './plant-file.js';
import type { PlcEndpoint, SimDevice, SimPlc } from './plc.js';
import { Timers } from './timers.js';

export const EXCEPTION = {
  illegalFunction: 0x01,
  illegalDataAddress: 0x02,
  illegalDataValue: 0x03,
  serverDeviceFailure: 0x04,
  gatewayTargetFailed: 0x0b,
} as const;

const FC_READ_HOLDING = 0x03;
const FC_READ_INPUT = 0x04;
const FC_WRITE_SINGLE = 0x06;
const FC_WRITE_MULTIPLE = 0x10;
const MAX_READ_QUANTITY = 125;
const MAX_WRITE_QUANTITY = 123;
const MBAP_LENGTH = 7;

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

interface DeviceRegisters {
  device: SimDevice;
  base: number;
  /** The command block as last written: [code, setpoint in 0.1 %, seq]. */
  command: [number, number, number];
}

type Decoded =
  | { fc: number; direction: Direction; start: number; quantity: number; values: number[] }
  | { fc: number; direction: Direction; exception: number; start?: number; quantity?: number };

export class ModbusPlcServer {
  readonly #plc: SimPlc;
  readonly #config: ModbusPlcConfig;
  readonly #registers: DeviceRegisters[];
  readonly #sockets = new Set<Socket>();
  readonly #timers = new Timers();
  #server: Server | undefined;

  constructor(plc: SimPlc, config: ModbusPlcConfig) {
    this.#plc = plc;
    this.#config = config;
    this.#registers = plc.devices.map((device) => {
      const deviceConfig = config.devices[device.id];
      if (deviceConfig === undefined) throw new Error(`device ${device.id} has no base address`);
      return { device, base: deviceConfig.base, command: [0, 0, 0] };
    });
    plc.onPowerCycle(() => {
      this.#powerCycled();
    });
  }

  async start(): Promise<PlcEndpoint> {
    const server = createServer((socket) => {
      this.#accept(socket);
    });
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ host: this.#config.host, port: this.#config.port }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => {
      this.#plc.log.error({ err }, 'Modbus listener error');
    });
    const address = server.address() as AddressInfo;
    return {
      protocol: 'modbus',
      host: this.#config.host,
      port: address.port,
      unitId: this.#config.unitId,
    };
  }

  async stop(): Promise<void> {
    this.#timers.cancelAll();
    for (const socket of this.#sockets) socket.destroy();
    this.#sockets.clear();
    const server = this.#server;
    this.#server = undefined;
    if (server === undefined) return;
    await new Promise<void>((resolve) => {
      server.close(() => {
        resolve();
      });
    });
  }

  /** Power lost: connections die with the PLC's TCP stack, the command block is volatile. */
  #powerCycled(): void {
    for (const socket of this.#sockets) socket.resetAndDestroy();
    this.#sockets.clear();
    for (const block of this.#registers) block.command = [0, 0, 0];
  }

  #accept(socket: Socket): void {
    if (!this.#plc.powered) {
      // Nothing listens on a PLC without power; the accepted connection is reset at once.
      socket.on('error', () => undefined);
      socket.resetAndDestroy();
      return;
    }
    this.#sockets.add(socket);
    socket.setNoDelay(true);
    const log = this.#plc.log.child({ peer: `${socket.remoteAddress}:${socket.remotePort}` });
    let buffer: Buffer = Buffer.alloc(0);
    const queue: Buffer[] = [];
    let serving = false;

    const serveQueue = async (): Promise<void> => {
      if (serving) return;
      serving = true;
      try {
        for (let frame = queue.shift(); frame !== undefined; frame = queue.shift()) {
          if (socket.destroyed) return;
          await this.#serve(frame, socket);
        }
      } finally {
        serving = false;
      }
    };

    socket.on('data', (chunk: Buffer) => {
      buffer = buffer.length === 0 ? chunk : Buffer.concat([buffer, chunk]);
      while (buffer.length >= MBAP_LENGTH) {
        const length = buffer.readUInt16BE(4);
        // The MBAP length counts the unit id and the PDU: at least a function code, at most
        // a 253-byte PDU. Anything else means we lost the framing; a PLC drops the link.
        if (length < 2 || length > 254) {
          log.warn({ length }, 'bad MBAP length, closing the connection');
          socket.destroy();
          return;
        }
        const total = 6 + length;
        if (buffer.length < total) break;
        queue.push(buffer.subarray(0, total));
        buffer = buffer.subarray(total);
      }
      serveQueue().catch((err: unknown) => {
        log.error({ err }, 'Modbus request failed');
        socket.destroy();
      });
    });
    socket.on('error', (err) => {
      // Clients that go away mid-request (ECONNRESET, EPIPE) are ordinary on a plant network.
      log.debug({ err }, 'Modbus connection error');
    });
    socket.on('close', () => {
      this.#sockets.delete(socket);
    });
  }

  async #serve(frame: Buffer, socket: Socket): Promise<void> {
    const transactionId = frame.readUInt16BE(0);
    const protocolId = frame.readUInt16BE(2);
    const unitId = frame.readUInt8(6);
    const pdu = frame.subarray(MBAP_LENGTH);
    if (protocolId !== 0) {
      // Not Modbus (protocol identifier 0 is the only one defined): no reply, drop the link.
      socket.destroy();
      return;
    }
    const request = decode(pdu);
    const sets = this.#faultSets(request);
    const plan = planRequest(sets, request.direction, this.#plc.random, 'exception');
    if (plan.resetBefore) {
      socket.destroy();
      return;
    }
    if (plan.latencyBeforeMs > 0 && !(await this.#heldOnLink(plan.latencyBeforeMs))) return;

    let reply: Buffer;
    if (plan.refuse?.exception !== undefined) {
      reply = exceptionPdu(request.fc, plan.refuse.exception);
    } else if (unitId !== this.#config.unitId) {
      reply = exceptionPdu(request.fc, EXCEPTION.gatewayTargetFailed);
    } else {
      reply = this.#execute(request);
    }

    if (plan.latencyMs > 0) await this.#timers.delay(plan.latencyMs);
    if (socket.destroyed) return;
    if (plan.drop) return;
    if (plan.resetAfter) {
      socket.destroy();
      return;
    }
    const header = Buffer.alloc(MBAP_LENGTH);
    header.writeUInt16BE(transactionId, 0);
    header.writeUInt16BE(0, 2);
    header.writeUInt16BE(reply.length + 1, 4);
    header.writeUInt8(unitId, 6);
    socket.write(Buffer.concat([header, reply]));
  }

  /**
   * Holds a request on the link. True when it then reaches the PLC, even if its connection is
   * gone by now; false when the PLC was power cycled meanwhile (the link and whatever was on
   * it died with it) or the plant stopped.
   */
  async #heldOnLink(ms: number): Promise<boolean> {
    const powerCycles = this.#plc.powerCycles;
    await this.#timers.delay(ms);
    return this.#server !== undefined && this.#plc.powerCycles === powerCycles;
  }

  /** The fault sets a request touches: each device whose registers it addresses, then the PLC. */
  #faultSets(request: Decoded): FaultSet[] {
    const sets: FaultSet[] = [];
    if (request.start !== undefined && request.quantity !== undefined) {
      const end = request.start + request.quantity;
      for (const { device, base } of this.#registers) {
        if (request.start < base + MODBUS_DEVICE_SPAN && base < end) sets.push(device.faultSet);
      }
    }
    sets.push(this.#plc.faultSet);
    return sets;
  }

  #execute(request: Decoded): Buffer {
    if ('exception' in request) return exceptionPdu(request.fc, request.exception);
    const { fc, start, quantity, values } = request;
    switch (fc) {
      case FC_READ_HOLDING:
      case FC_READ_INPUT: {
        const read = this.#read(start, quantity);
        if (read === undefined) return exceptionPdu(fc, EXCEPTION.illegalDataAddress);
        const out = Buffer.alloc(2 + 2 * quantity);
        out.writeUInt8(fc, 0);
        out.writeUInt8(2 * quantity, 1);
        read.forEach((value, i) => out.writeUInt16BE(value, 2 + 2 * i));
        return out;
      }
      case FC_WRITE_SINGLE:
      case FC_WRITE_MULTIPLE: {
        if (!this.#write(start, values)) return exceptionPdu(fc, EXCEPTION.illegalDataAddress);
        const out = Buffer.alloc(5);
        out.writeUInt8(fc, 0);
        out.writeUInt16BE(start, 1);
        out.writeUInt16BE(fc === FC_WRITE_SINGLE ? (values[0] ?? 0) : quantity, 3);
        return out;
      }
      default:
        return exceptionPdu(fc, EXCEPTION.illegalFunction);
    }
  }

  /** Every register must be mapped, or the whole read fails with exception 02. */
  #read(start: number, quantity: number): number[] | undefined {
    // One clock reading per request, so the four clock registers belong to the same instant.
    let clock: number[] | undefined;
    const out: number[] = [];
    for (let address = start; address < start + quantity; address += 1) {
      if (address >= MODBUS_CLOCK_ADDRESS && address < MODBUS_CLOCK_ADDRESS + MODBUS_CLOCK_LENGTH) {
        clock ??= timeToRegisters(this.#plc.controllerTime());
        out.push(clock[address - MODBUS_CLOCK_ADDRESS] ?? 0);
        continue;
      }
      const value = this.#readDeviceRegister(address);
      if (value === undefined) return undefined;
      out.push(value);
    }
    return out;
  }

  #readDeviceRegister(address: number): number | undefined {
    for (const block of this.#registers) {
      const offset = address - block.base;
      if (offset >= MODBUS_STATUS_OFFSET && offset < MODBUS_STATUS_OFFSET + MODBUS_STATUS_LENGTH) {
        return statusRegisters(block.device)[offset - MODBUS_STATUS_OFFSET];
      }
      if (
        offset >= MODBUS_COMMAND_OFFSET &&
        offset < MODBUS_COMMAND_OFFSET + MODBUS_COMMAND_LENGTH
      ) {
        return block.command[offset - MODBUS_COMMAND_OFFSET];
      }
    }
    return undefined;
  }

  /**
   * Applies a write if every register is a command register; otherwise nothing is written.
   * Each device whose sequence register was written receives the command block as it stands
   * after the whole request, so one FC16 of [code, setpoint, seq] is one command.
   */
  #write(start: number, values: readonly number[]): boolean {
    const targets: { block: DeviceRegisters; index: number; value: number }[] = [];
    for (const [i, value] of values.entries()) {
      const address = start + i;
      const block = this.#registers.find(
        (b) =>
          address >= b.base + MODBUS_COMMAND_OFFSET &&
          address < b.base + MODBUS_COMMAND_OFFSET + MODBUS_COMMAND_LENGTH,
      );
      if (block === undefined) return false;
      targets.push({ block, index: address - block.base - MODBUS_COMMAND_OFFSET, value });
    }
    const seqWritten = new Set<DeviceRegisters>();
    for (const { block, index, value } of targets) {
      block.command[index] = value;
      if (index === MODBUS_COMMAND.seq) seqWritten.add(block);
    }
    for (const block of seqWritten) {
      const [code, setpoint, seq] = block.command;
      block.device.receiveWrite({ code, setpoint: setpoint / MODBUS_POSITION_SCALE, seq });
    }
    return true;
  }
}

/** The status block as published by the last scan: what a client reads. */
function statusRegisters(device: SimDevice): number[] {
  const image = device.published;
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

function exceptionPdu(fc: number, code: number): Buffer {
  return Buffer.from([(fc | 0x80) & 0xff, code & 0xff]);
}

function decode(pdu: Buffer): Decoded {
  const fc = pdu.readUInt8(0);
  const direction: Direction =
    fc === FC_WRITE_SINGLE || fc === FC_WRITE_MULTIPLE ? 'write' : 'read';
  switch (fc) {
    case FC_READ_HOLDING:
    case FC_READ_INPUT: {
      if (pdu.length !== 5) return { fc, direction, exception: EXCEPTION.illegalDataValue };
      const start = pdu.readUInt16BE(1);
      const quantity = pdu.readUInt16BE(3);
      if (quantity < 1 || quantity > MAX_READ_QUANTITY) {
        return { fc, direction, exception: EXCEPTION.illegalDataValue, start, quantity: 1 };
      }
      return { fc, direction, start, quantity, values: [] };
    }
    case FC_WRITE_SINGLE: {
      if (pdu.length !== 5) return { fc, direction, exception: EXCEPTION.illegalDataValue };
      const start = pdu.readUInt16BE(1);
      return { fc, direction, start, quantity: 1, values: [pdu.readUInt16BE(3)] };
    }
    case FC_WRITE_MULTIPLE: {
      if (pdu.length < 6) return { fc, direction, exception: EXCEPTION.illegalDataValue };
      const start = pdu.readUInt16BE(1);
      const quantity = pdu.readUInt16BE(3);
      const byteCount = pdu.readUInt8(5);
      if (
        quantity < 1 ||
        quantity > MAX_WRITE_QUANTITY ||
        byteCount !== 2 * quantity ||
        pdu.length !== 6 + byteCount
      ) {
        return { fc, direction, exception: EXCEPTION.illegalDataValue, start, quantity: 1 };
      }
      const values = Array.from({ length: quantity }, (_, i) => pdu.readUInt16BE(6 + 2 * i));
      return { fc, direction, start, quantity, values };
    }
    default:
      return { fc, direction, exception: EXCEPTION.illegalFunction };
  }
}
