/**
 * Modbus TCP front end of a simulated PLC, hand-written on node:net rather than modbus-serial's
 * ServerTCP: fault injection needs control that a vector callback API does not give (destroy
 * the socket before or after a request is applied, apply a write and never answer, answer with
 * an exception, hold a reply back).
 *
 * Supported: FC1 (read coils: there are none, so exception 02 for a well-formed request), FC2
 * (read discrete inputs), FC3 / FC4 (read holding / input registers), FC6 (write single
 * register), FC16 (write multiple registers). Modbus Application Protocol v1.1b3 §6; MBAP
 * framing per Modbus Messaging on TCP/IP v1.0b §3.1. What each address of a device holds is
 * its layout's business (modbus-layouts.ts); the PLC-wide clock at 900..903 is served here.
 * A read touching an address nothing maps answers exception 02, or 0 with `unmappedReads: zero`
 * (a PLC whose registers are one flat memory area: block reads across devices go through).
 *
 * Requests on one connection are served one at a time, in order, as a PLC's communication
 * task does; a request is applied when it is served and its reply leaves after any injected
 * latency. Latency `when: before` (or a stall, until it is cleared) holds a request on the link
 * before it is applied (and the requests behind it on that connection with it); it is applied
 * when the hold ends even if the client has gone meanwhile: its bytes were already on the wire.
 *
 * A power cycle resets every connection and clears the command registers (volatile memory);
 * while the power is off, new connections are reset at once. A refusal of connections
 * (SimPlc.refuseConnections) resets every connection and closes the listener, so that a connect
 * is refused, then listens on the same port again: the controller and its registers go on.
 */
import { createServer } from 'node:net';
import type { AddressInfo, Server, Socket } from 'node:net';
import { MODBUS_CLOCK_ADDRESS, MODBUS_CLOCK_LENGTH } from './codes.js';
import { planRequest } from './faults.js';
import type { Direction, FaultSet } from './faults.js';
import { registerBlock, timeToRegisters } from './modbus-layouts.js';
import type { BlockWrite, ClockReading, RegisterBlock } from './modbus-layouts.js';
import type { ModbusPlcConfig } from './plant-file.js';
import type { PlcEndpoint, SimPlc } from './plc.js';
import { Timers } from './timers.js';

export const EXCEPTION = {
  illegalFunction: 0x01,
  illegalDataAddress: 0x02,
  illegalDataValue: 0x03,
  serverDeviceFailure: 0x04,
  gatewayTargetFailed: 0x0b,
} as const;

const FC_READ_COILS = 0x01;
const FC_READ_DISCRETE_INPUTS = 0x02;
const FC_READ_HOLDING = 0x03;
const FC_READ_INPUT = 0x04;
const FC_WRITE_SINGLE = 0x06;
const FC_WRITE_MULTIPLE = 0x10;
const MAX_READ_QUANTITY = 125;
/** FC1 / FC2: 1..2000 bits per request (Application Protocol §6.1, §6.2). */
const MAX_BIT_QUANTITY = 2000;
const MAX_WRITE_QUANTITY = 123;
const MBAP_LENGTH = 7;

type Decoded =
  | { fc: number; direction: Direction; start: number; quantity: number; values: number[] }
  | { fc: number; direction: Direction; exception: number; start?: number; quantity?: number };

export class ModbusPlcServer {
  readonly #plc: SimPlc;
  readonly #config: ModbusPlcConfig;
  readonly #blocks: RegisterBlock[];
  readonly #sockets = new Set<Socket>();
  readonly #timers = new Timers();
  #server: Server | undefined;
  /** The port listened on, to listen on again after a refusal of connections. */
  #port = 0;
  /** While connections are refused: until when (performance.now()); null while listening. */
  #refusingUntil: number | null = null;
  /** A refusal that starts once the next read of `device` is answered (afterReadOf). */
  #armed: { readonly device: string; readonly ms: number } | null = null;

  constructor(plc: SimPlc, config: ModbusPlcConfig) {
    this.#plc = plc;
    this.#config = config;
    this.#blocks = plc.devices.map((device) => {
      const deviceConfig = config.devices[device.id];
      if (deviceConfig === undefined) throw new Error(`device ${device.id} has no base address`);
      return registerBlock(deviceConfig.layout, device, deviceConfig.base);
    });
    plc.onPowerCycle(() => {
      this.#powerCycled();
    });
    plc.onRefuseConnections(({ ms, afterReadOf }) => {
      if (afterReadOf === undefined) this.#refuse(ms);
      else this.#armed = { device: afterReadOf, ms };
    });
    plc.onScan(() => {
      for (const block of this.#blocks) block.scanned();
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
    this.#port = address.port;
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
    this.#refusingUntil = null;
    this.#armed = null;
    if (server === undefined) return;
    // Not listening (a refusal of connections): closed already, with nothing to wait for.
    if (!server.listening) return;
    await new Promise<void>((resolve) => {
      server.close(() => {
        resolve();
      });
    });
  }

  /**
   * Connections refused for `ms` (SimPlc.refuseConnections): every connection is reset and the
   * listener closed, so that a connect meets ECONNREFUSED; it listens again once `ms` have
   * passed since the latest refusal's start.
   */
  #refuse(ms: number): void {
    const server = this.#server;
    if (server === undefined) return;
    for (const socket of this.#sockets) socket.resetAndDestroy();
    this.#sockets.clear();
    const until = performance.now() + ms;
    if (this.#refusingUntil !== null) {
      this.#refusingUntil = Math.max(this.#refusingUntil, until);
      return;
    }
    this.#refusingUntil = until;
    this.#plc.refusingConnections = true;
    server.close();
    this.#timers.after(ms, () => {
      this.#listenAgain();
    });
  }

  #listenAgain(): void {
    const server = this.#server;
    const until = this.#refusingUntil;
    if (server === undefined || until === null) return;
    const left = until - performance.now();
    if (left > 0) {
      // Extended meanwhile, or the timer fired early.
      this.#timers.after(Math.ceil(left), () => {
        this.#listenAgain();
      });
      return;
    }
    const failed = (err: Error): void => {
      // The port taken meanwhile by another socket: tried again until it is free.
      this.#plc.log.error({ err, port: this.#port }, 'Modbus listener not opened again; retrying');
      this.#timers.after(50, () => {
        this.#listenAgain();
      });
    };
    server.once('error', failed);
    server.listen({ host: this.#config.host, port: this.#port }, () => {
      server.off('error', failed);
      this.#refusingUntil = null;
      this.#plc.refusingConnections = false;
      this.#plc.log.info({ port: this.#port }, 'PLC accepts connections again');
    });
  }

  /** Power lost: connections die with the PLC's TCP stack, the command registers are volatile. */
  #powerCycled(): void {
    for (const socket of this.#sockets) socket.resetAndDestroy();
    this.#sockets.clear();
    for (const block of this.#blocks) block.powerCycled();
  }

  #accept(socket: Socket): void {
    this.#plc.connectionAccepted();
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
    // Each frame with the moment it reached the PLC (time source) and whether it came in behind
    // another request still on the link, for the write log's heldOnLinkMs.
    const queue: { frame: Buffer; arrivedAt: number; behind: boolean }[] = [];
    let serving = false;

    const serveQueue = async (): Promise<void> => {
      if (serving) return;
      serving = true;
      try {
        for (let next = queue.shift(); next !== undefined; next = queue.shift()) {
          if (socket.destroyed) return;
          await this.#serve(next.frame, socket, next.arrivedAt, next.behind);
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
        queue.push({
          frame: buffer.subarray(0, total),
          arrivedAt: this.#plc.time.now(),
          behind: serving || queue.length > 0,
        });
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

  /** `behind`: it came in while another request of its connection was still on the link. */
  async #serve(frame: Buffer, socket: Socket, arrivedAt: number, behind: boolean): Promise<void> {
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
    // A request for another unit id reaches none of this PLC's registers, whatever the faults.
    const ours = unitId === this.#config.unitId;
    if (request.direction === 'write' && ours) this.#noteWriter(request, socket);
    const sets = this.#faultSets(request);
    const plan = planRequest(sets, request.direction, this.#plc.random, 'exception');
    if (plan.resetBefore) {
      socket.destroy();
      return;
    }
    const held = plan.latencyBeforeMs > 0 || plan.stalledUntil !== undefined;
    if (held && !(await this.#heldOnLink(plan.latencyBeforeMs, plan.stalledUntil))) return;
    // From its arrival: the time it waited behind the requests before it on the connection
    // counts too, and a request not held itself that waited behind them was held all the same.
    const heldOnLinkMs = held || behind ? this.#plc.time.now() - arrivedAt : undefined;

    let reply: Buffer;
    if (plan.refuse?.exception !== undefined) {
      if (plan.refuse.applied === true && ours) this.#execute(request, heldOnLinkMs);
      reply = exceptionPdu(request.fc, plan.refuse.exception);
    } else if (!ours) {
      reply = exceptionPdu(request.fc, EXCEPTION.gatewayTargetFailed);
    } else {
      reply = this.#execute(request, heldOnLinkMs);
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
    const armed = this.#armed;
    if (armed === null || request.direction !== 'read' || !this.#touches(request, armed.device)) {
      socket.write(Buffer.concat([header, reply]));
      return;
    }
    this.#armed = null;
    // The answer is handed to the kernel first (the socket is writable: Node writes at once),
    // the reset right after it: the client gets the answer, then the reset, with no time to
    // send anything in between.
    socket.write(Buffer.concat([header, reply]));
    this.#refuse(armed.ms);
  }

  /** Whether the request addresses registers of `device`. */
  #touches(request: Decoded, device: string): boolean {
    const { start, quantity } = request;
    if (start === undefined || quantity === undefined) return false;
    return this.#blocks.some(
      (b) => b.device.id === device && start < b.base + b.span && b.base < start + quantity,
    );
  }

  /**
   * Holds a request on the link `ms`, then until `stalled` settles. True when it then reaches
   * the PLC, even if its connection is gone by now; false when the PLC was power cycled
   * meanwhile (the link and whatever was on it died with it) or the plant stopped.
   */
  async #heldOnLink(ms: number, stalled: Promise<void> | undefined): Promise<boolean> {
    const powerCycles = this.#plc.powerCycles;
    if (ms > 0) await this.#timers.delay(ms);
    if (stalled !== undefined) await this.#timers.until(stalled);
    return this.#server !== undefined && this.#plc.powerCycles === powerCycles;
  }

  /** The fault sets a request touches: each device whose registers it addresses, then the PLC. */
  #faultSets(request: Decoded): FaultSet[] {
    const sets: FaultSet[] = [];
    if (request.start !== undefined && request.quantity !== undefined) {
      const end = request.start + request.quantity;
      for (const { device, base, span } of this.#blocks) {
        if (request.start < base + span && base < end) sets.push(device.faultSet);
      }
    }
    sets.push(this.#plc.faultSet);
    return sets;
  }

  /** Every device whose registers a write request addresses notes the connection (writers). */
  #noteWriter(request: Decoded, socket: Socket): void {
    if (request.start === undefined || request.quantity === undefined) return;
    const end = request.start + request.quantity;
    const peer = `${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`;
    for (const { device, base, span } of this.#blocks) {
      if (request.start < base + span && base < end) device.noteWriter(peer);
    }
  }

  /** Every device whose registers a read answered logs it (SimDevice.readLog). */
  #noteRead(start: number, quantity: number): void {
    const end = start + quantity;
    let at: number | undefined;
    for (const { device, base, span } of this.#blocks) {
      if (start < base + span && base < end) device.noteRead((at ??= this.#plc.controllerTime()));
    }
  }

  /** `heldOnLinkMs`: how long a link fault held the request (the write log's). */
  #execute(request: Decoded, heldOnLinkMs: number | undefined): Buffer {
    if ('exception' in request) return exceptionPdu(request.fc, request.exception);
    const { fc, start, quantity, values } = request;
    switch (fc) {
      case FC_READ_COILS:
      case FC_READ_DISCRETE_INPUTS: {
        const bits = this.#readBits(fc, start, quantity);
        if (bits === undefined) return exceptionPdu(fc, EXCEPTION.illegalDataAddress);
        // A limit-switch valve is read by its inputs as well as by its status word.
        this.#noteRead(start, quantity);
        const out = Buffer.alloc(2 + Math.ceil(quantity / 8));
        out.writeUInt8(fc, 0);
        out.writeUInt8(out.length - 2, 1);
        // Input `start` is bit 0 of the first data byte; the last byte is padded with zeros.
        bits.forEach((on, i) => {
          if (on) out[2 + (i >> 3)] = (out[2 + (i >> 3)] ?? 0) | (1 << (i & 7));
        });
        return out;
      }
      case FC_READ_HOLDING:
      case FC_READ_INPUT: {
        const read = this.#read(fc, start, quantity);
        if (read === undefined) return exceptionPdu(fc, EXCEPTION.illegalDataAddress);
        this.#noteRead(start, quantity);
        const out = Buffer.alloc(2 + 2 * quantity);
        out.writeUInt8(fc, 0);
        out.writeUInt8(2 * quantity, 1);
        read.forEach((value, i) => out.writeUInt16BE(value, 2 + 2 * i));
        return out;
      }
      case FC_WRITE_SINGLE:
      case FC_WRITE_MULTIPLE: {
        if (!this.#write(start, values, heldOnLinkMs)) {
          return exceptionPdu(fc, EXCEPTION.illegalDataAddress);
        }
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

  /** The device block an address falls in (gaps included), with the address's offset in it. */
  #blockAt(address: number): { block: RegisterBlock; offset: number } | undefined {
    const block = this.#blocks.find((b) => address >= b.base && address < b.base + b.span);
    return block === undefined ? undefined : { block, offset: address - block.base };
  }

  /**
   * FC3 (holding) or FC4 (input registers). Every register must be mapped in that table, or
   * the whole read fails with exception 02 (unless unmapped registers read as 0).
   */
  #read(fc: number, start: number, quantity: number): number[] | undefined {
    // One clock reading per request, so the clock registers belong to the same instant.
    let clock: readonly number[] | undefined;
    const readClock: ClockReading = () => (clock ??= timeToRegisters(this.#plc.controllerTime()));
    const out: number[] = [];
    for (let address = start; address < start + quantity; address += 1) {
      if (address >= MODBUS_CLOCK_ADDRESS && address < MODBUS_CLOCK_ADDRESS + MODBUS_CLOCK_LENGTH) {
        out.push(readClock()[address - MODBUS_CLOCK_ADDRESS] ?? 0);
        continue;
      }
      const at = this.#blockAt(address);
      const value =
        at === undefined
          ? undefined
          : fc === FC_READ_INPUT
            ? at.block.input(at.offset, readClock)
            : at.block.holding(at.offset, readClock);
      if (value === undefined && !this.#unmappedAsZero) return undefined;
      out.push(value ?? 0);
    }
    return out;
  }

  /**
   * FC1 (coils: no layout maps one) or FC2 (discrete inputs): every bit must be mapped, or the
   * whole read fails with exception 02.
   */
  #readBits(fc: number, start: number, quantity: number): boolean[] | undefined {
    const out: boolean[] = [];
    for (let address = start; address < start + quantity; address += 1) {
      const at = fc === FC_READ_COILS ? undefined : this.#blockAt(address);
      const value = at?.block.discreteInput(at.offset);
      if (value === undefined && !this.#unmappedAsZero) return undefined;
      out.push(value ?? false);
    }
    return out;
  }

  /** `unmappedReads: zero`: an unmapped address reads as 0 instead of failing the read. */
  get #unmappedAsZero(): boolean {
    return this.#config.unmappedReads === 'zero';
  }

  /**
   * Applies a write if every register is writable in its device's layout; otherwise nothing
   * is written. Each block then gets its share of the request at once, so that a command
   * block written by one FC16 is one command.
   */
  #write(start: number, values: readonly number[], heldOnLinkMs: number | undefined): boolean {
    const perBlock = new Map<RegisterBlock, BlockWrite[]>();
    for (const [i, value] of values.entries()) {
      const at = this.#blockAt(start + i);
      if (at === undefined || !at.block.writable(at.offset)) return false;
      const writes = perBlock.get(at.block) ?? [];
      writes.push({ offset: at.offset, value });
      perBlock.set(at.block, writes);
    }
    for (const [block, writes] of perBlock) block.write(writes, heldOnLinkMs);
    return true;
  }
}

function exceptionPdu(fc: number, code: number): Buffer {
  return Buffer.from([(fc | 0x80) & 0xff, code & 0xff]);
}

function decode(pdu: Buffer): Decoded {
  const fc = pdu.readUInt8(0);
  const direction: Direction =
    fc === FC_WRITE_SINGLE || fc === FC_WRITE_MULTIPLE ? 'write' : 'read';
  switch (fc) {
    case FC_READ_COILS:
    case FC_READ_DISCRETE_INPUTS: {
      if (pdu.length !== 5) return { fc, direction, exception: EXCEPTION.illegalDataValue };
      const start = pdu.readUInt16BE(1);
      const quantity = pdu.readUInt16BE(3);
      if (quantity < 1 || quantity > MAX_BIT_QUANTITY) {
        return { fc, direction, exception: EXCEPTION.illegalDataValue, start, quantity: 1 };
      }
      return { fc, direction, start, quantity, values: [] };
    }
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
