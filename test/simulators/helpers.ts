/**
 * Independent clients for the simulator tests: mbpoll (libmodbus) for Modbus, fetch for the
 * control API; node-opcua's OPCUAClient for OPC UA is in opcua-client.ts (loading node-opcua
 * costs a Modbus-only test file seconds). None of them shares code with the simulators or
 * with src/.
 */
import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import type { Socket } from 'node:net';
import type { PlcEndpoint } from '../../simulators/plant.js';

export type ModbusEndpoint = Extract<PlcEndpoint, { protocol: 'modbus' }>;

export function modbusEndpoint(endpoint: PlcEndpoint): ModbusEndpoint {
  if (endpoint.protocol !== 'modbus') throw new Error('not a Modbus PLC');
  return endpoint;
}

export interface MbpollResult {
  code: number;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs mbpoll once against a Modbus endpoint with PDU (0-based) addressing. */
export function mbpoll(
  endpoint: ModbusEndpoint,
  args: readonly string[],
  timeoutS = 1,
): Promise<MbpollResult> {
  const base = ['-m', 'tcp', '-a', String(endpoint.unitId), '-p', String(endpoint.port)];
  const full = [...base, '-0', '-1', '-o', String(timeoutS), '-t', '4', ...args];
  const started = performance.now();
  return new Promise((resolve) => {
    execFile('mbpoll', full, { timeout: (timeoutS + 5) * 1000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : 1;
      resolve({ code, stdout, stderr, ms: performance.now() - started });
    });
  });
}

/**
 * How long mbRead and mbWrite let mbpoll wait for an answer. They expect one, so a longer wait
 * costs nothing when it comes; at mbpoll's 1 s a state-table write timed out with the simulator
 * starved of CPU by the files running beside it.
 */
const ANSWER_EXPECTED_S = 5;

/** Reads holding registers with mbpoll; throws with mbpoll's message when the read fails. */
export async function mbRead(
  endpoint: ModbusEndpoint,
  address: number,
  count: number,
): Promise<number[]> {
  const result = await mbpoll(
    endpoint,
    ['-r', String(address), '-c', String(count), endpoint.host],
    ANSWER_EXPECTED_S,
  );
  if (result.code !== 0)
    throw new Error(`mbpoll read failed: ${result.stderr.trim() || result.stdout}`);
  const values = new Map<number, number>();
  for (const match of result.stdout.matchAll(/^\[(\d+)\]:\s+(-?\d+)/gm)) {
    values.set(Number(match[1]), Number(match[2]) & 0xffff);
  }
  return Array.from({ length: count }, (_, i) => {
    const value = values.get(address + i);
    if (value === undefined)
      throw new Error(`mbpoll printed no register ${address + i}: ${result.stdout}`);
    return value;
  });
}

/** Writes holding registers with mbpoll: one value is FC6, several are one FC16 request. */
export async function mbWrite(
  endpoint: ModbusEndpoint,
  address: number,
  values: readonly number[],
): Promise<void> {
  const result = await mbpoll(
    endpoint,
    ['-r', String(address), endpoint.host, ...values.map(String)],
    ANSWER_EXPECTED_S,
  );
  if (result.code !== 0)
    throw new Error(`mbpoll write failed: ${result.stderr.trim() || result.stdout}`);
}

/** The four clock registers, most significant word first, as epoch ms. */
/**
 * A hand-framed Modbus TCP connection for what mbpoll cannot do: keep a connection open
 * across steps, send several requests without waiting for replies (they are served in order),
 * destroy the connection with a request still outstanding.
 */
export interface RawModbus {
  socket: Socket;
  /** FC16; resolves with the register values echoed (start, quantity) or an exception code. */
  write(address: number, values: readonly number[]): Promise<RawReply>;
  /** FC3; resolves with the registers or an exception code. */
  read(address: number, count: number): Promise<RawReply>;
  /** Any PDU (function code first); the reply carries its PDU as received. */
  request(pdu: Buffer): Promise<RawReply>;
  /** Resolves when the connection has closed, with whether it closed with an error. */
  closed: Promise<{ hadError: boolean }>;
}

export interface RawReply {
  exception?: number;
  /** FC3 / FC4: the registers read; FC6 / FC16: the two words echoed. */
  registers: number[];
  /** The reply PDU, function code first. */
  pdu: Buffer;
  /** performance.now() when the reply arrived. */
  at: number;
}

export async function rawModbus(endpoint: ModbusEndpoint): Promise<RawModbus> {
  const socket = connect({ host: endpoint.host, port: endpoint.port });
  socket.setNoDelay(true);
  await new Promise<void>((resolve, reject) => {
    socket.once('connect', resolve);
    socket.once('error', reject);
  });
  socket.on('error', () => undefined);
  const waiting = new Map<number, { resolve: (r: RawReply) => void; reject: (e: Error) => void }>();
  let buffer = Buffer.alloc(0);
  let nextId = 1;
  socket.on('data', (chunk: Buffer) => {
    buffer = Buffer.concat([buffer, chunk]);
    while (buffer.length >= 7 && buffer.length >= 6 + buffer.readUInt16BE(4)) {
      const frame = buffer.subarray(0, 6 + buffer.readUInt16BE(4));
      buffer = buffer.subarray(frame.length);
      const id = frame.readUInt16BE(0);
      const fc = frame.readUInt8(7);
      const reply: RawReply = { registers: [], pdu: frame.subarray(7), at: performance.now() };
      if ((fc & 0x80) !== 0) reply.exception = frame.readUInt8(8);
      else if (fc === 0x03 || fc === 0x04) {
        for (let i = 9; i + 1 < frame.length; i += 2) reply.registers.push(frame.readUInt16BE(i));
      } else if (fc === 0x06 || fc === 0x10) {
        reply.registers.push(frame.readUInt16BE(8), frame.readUInt16BE(10));
      }
      waiting.get(id)?.resolve(reply);
      waiting.delete(id);
    }
  });
  const closed = new Promise<{ hadError: boolean }>((resolve) => {
    socket.once('close', (hadError) => {
      for (const { reject } of waiting.values()) reject(new Error('connection closed'));
      waiting.clear();
      resolve({ hadError });
    });
  });
  const send = (pdu: Buffer): Promise<RawReply> => {
    const id = nextId++;
    const header = Buffer.alloc(7);
    header.writeUInt16BE(id, 0);
    header.writeUInt16BE(0, 2);
    header.writeUInt16BE(pdu.length + 1, 4);
    header.writeUInt8(endpoint.unitId, 6);
    const reply = new Promise<RawReply>((resolve, reject) => {
      waiting.set(id, { resolve, reject });
    });
    socket.write(Buffer.concat([header, pdu]));
    return reply;
  };
  return {
    socket,
    closed,
    write: (address, values) => {
      const pdu = Buffer.alloc(6 + 2 * values.length);
      pdu.writeUInt8(0x10, 0);
      pdu.writeUInt16BE(address, 1);
      pdu.writeUInt16BE(values.length, 3);
      pdu.writeUInt8(2 * values.length, 5);
      values.forEach((value, i) => pdu.writeUInt16BE(value, 6 + 2 * i));
      return send(pdu);
    },
    read: (address, count) => {
      const pdu = Buffer.alloc(5);
      pdu.writeUInt8(0x03, 0);
      pdu.writeUInt16BE(address, 1);
      pdu.writeUInt16BE(count, 3);
      return send(pdu);
    },
    request: send,
  };
}

export function registersToTime(words: readonly number[]): number {
  return Number(words.reduce((acc, word) => (acc << 16n) | BigInt(word), 0n));
}

export interface StatusReading {
  stateCode: number;
  /** Percent. */
  position: number;
  faultCode: number;
  seqEcho: number;
}

/** A way to command and read a device over a real protocol, for the shared state-table suite. */
export interface Wire {
  command(device: string, code: number, setpoint: number, seq: number): Promise<void>;
  status(device: string): Promise<StatusReading>;
}

export function modbusWire(endpoint: ModbusEndpoint, bases: ReadonlyMap<string, number>): Wire {
  const baseOf = (device: string): number => {
    const base = bases.get(device);
    if (base === undefined) throw new Error(`no base for ${device}`);
    return base;
  };
  return {
    command: (device, code, setpoint, seq) =>
      mbWrite(endpoint, baseOf(device) + 10, [code, Math.round(setpoint * 10), seq]),
    status: async (device) => {
      const [stateCode, position, faultCode, seqEcho] = await mbRead(endpoint, baseOf(device), 8);
      return {
        stateCode: stateCode ?? -1,
        position: (position ?? -1) / 10,
        faultCode: faultCode ?? -1,
        seqEcho: seqEcho ?? -1,
      };
    },
  };
}

/** JSON over HTTP to the control API. */
export async function api(
  baseUrl: string,
  method: string,
  path: string,
  body?: unknown,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(`${baseUrl}${path}`, {
    method,
    headers: body === undefined ? {} : { 'Content-Type': 'application/json' },
    ...(body === undefined ? {} : { body: typeof body === 'string' ? body : JSON.stringify(body) }),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

/** Polls `probe` until it returns true, at most `attempts` times `everyMs` apart. */
export async function until(
  probe: () => boolean | Promise<boolean>,
  { attempts = 200, everyMs = 10 } = {},
): Promise<void> {
  for (let i = 0; i < attempts; i += 1) {
    if (await probe()) return;
    await new Promise((resolve) => setTimeout(resolve, everyMs));
  }
  throw new Error(`condition not met after ${attempts} attempts`);
}

/** Promise.all over `items` with at most `limit` in flight (mbpoll runs as processes). */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const results: R[] = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    for (let i = next++; i < items.length; i = next++) {
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}
