import ModbusSerial from 'modbus-serial';
import type { ModbusRTU } from 'modbus-serial/ModbusRTU.js';
import { Backoff } from '../backoff.js';
import type { Clock } from '../core/clock.js';
import {
  DeviceRefusedError,
  DeviceUnreachableError,
  type ClockSample,
  type CommandWrite,
  type DeviceDriver,
  type DeviceHealth,
  type Readback,
} from '../core/driver.js';
import type { Logger } from '../core/logger.js';
import type { DeviceProfile } from '../core/profile.js';
import { HealthCounter, commandCode, describeError, stateName, withTimeout } from './common.js';

export interface ModbusEndpointOptions {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly unitId: number;
  /** Holding register of the PLC clock (4 registers, epoch ms, most significant word first). */
  readonly clockRegister: number;
  /** Per request; a request that takes longer counts as lost and the connection is replaced. */
  readonly requestTimeoutMs?: number;
  readonly connectTimeoutMs?: number;
  readonly backoffInitialMs?: number;
  readonly backoffMaxMs?: number;
  readonly clock: Clock;
  readonly logger: Logger;
}

// The package is CommonJS (`module.exports = ModbusRTU`); its typings declare an ES default.
const ModbusClient = ModbusSerial as unknown as new () => ModbusRTU;

const MODBUS_EXCEPTIONS: Record<number, string> = {
  1: 'illegal function',
  2: 'illegal data address',
  3: 'illegal data value',
  4: 'server device failure',
  5: 'acknowledge',
  6: 'server device busy',
  8: 'memory parity error',
  10: 'gateway path unavailable',
  11: 'gateway target device failed to respond',
};

function hex(n: number): string {
  return `0x${n.toString(16).padStart(2, '0')}`;
}

/**
 * One Modbus TCP connection to one PLC, shared by its devices.
 *
 * - One request in flight: modbus-serial mismatches responses under concurrent requests on one
 *   connection (modbus-serial #264, #540), so requests queue here.
 * - A request that times out, or a socket error, destroys the client: a late answer must never
 *   be taken for the next request's. The next request reconnects, no sooner than a jittered
 *   exponential backoff allows (modbus-serial does not reconnect by itself: #92, #182).
 * - Exception responses become DeviceRefusedError (the PLC answered: nothing was applied);
 *   everything else becomes DeviceUnreachableError (no answer: outcome unknown).
 */
export class ModbusEndpoint {
  readonly name: string;
  private readonly options: ModbusEndpointOptions;
  private readonly requestTimeoutMs: number;
  private readonly connectTimeoutMs: number;
  private readonly backoff: Backoff;
  private readonly log: Logger;
  private client: ModbusRTU | null = null;
  private connecting: Promise<ModbusRTU> | null = null;
  private queue: Promise<unknown> = Promise.resolve();
  private closed = false;
  /** Rejects the request in flight when the socket closes under it, with the reason. */
  private onSocketClosed: ((reason: string) => void) | null = null;
  readonly health = new HealthCounter();

  constructor(options: ModbusEndpointOptions) {
    this.options = options;
    this.name = options.name;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 1000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 2000;
    this.backoff = new Backoff({
      minMs: options.backoffInitialMs ?? 200,
      maxMs: options.backoffMaxMs ?? 10_000,
    });
    this.log = options.logger.child({ plc: options.name });
  }

  readRegisters(address: number, length: number, signal?: AbortSignal): Promise<number[]> {
    return this.request(
      `read ${address}+${length}`,
      async (client) => (await client.readHoldingRegisters(address, length)).data,
      signal,
    );
  }

  async writeRegisters(address: number, values: number[], signal?: AbortSignal): Promise<void> {
    await this.request(
      `write ${address}+${values.length}`,
      (client) => client.writeRegisters(address, values),
      signal,
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    await this.queue.catch(() => undefined);
    this.drop('endpoint closed');
  }

  private request<T>(
    what: string,
    body: (client: ModbusRTU) => Promise<T>,
    signal?: AbortSignal,
  ): Promise<T> {
    const run = async (): Promise<T> => {
      if (this.closed) throw new DeviceUnreachableError(`${this.name}: endpoint closed`);
      if (signal?.aborted === true) throw new DeviceUnreachableError(`${this.name}: aborted`);
      const client = await this.connected();
      const socketClosed = new Promise<never>((_, reject) => {
        this.onSocketClosed = (reason) => {
          reject(new DeviceUnreachableError(`${this.name}: ${what}: ${reason}`));
        };
      });
      try {
        const result = await withTimeout(
          Promise.race([body(client), socketClosed]),
          this.requestTimeoutMs,
          `${this.name}: ${what} timed out after ${this.requestTimeoutMs} ms`,
        );
        this.health.ok(this.options.clock.now());
        return result;
      } catch (error) {
        throw this.translate(error, what);
      } finally {
        this.onSocketClosed = null;
        socketClosed.catch(() => undefined);
      }
    };
    const next = this.queue.then(run, run);
    this.queue = next.catch(() => undefined);
    return next;
  }

  private translate(error: unknown, what: string): Error {
    const modbusCode = (error as { modbusCode?: unknown }).modbusCode;
    if (typeof modbusCode === 'number') {
      const message = `${this.name}: ${what}: Modbus exception ${hex(modbusCode)} (${MODBUS_EXCEPTIONS[modbusCode] ?? 'unknown'})`;
      this.health.error(message);
      return new DeviceRefusedError(message, { cause: error });
    }
    const message = `${this.name}: ${what}: ${describeError(error)}`;
    this.health.error(message);
    // No answer: the connection can no longer be trusted to pair requests and responses.
    this.drop(message);
    return error instanceof DeviceUnreachableError
      ? error
      : new DeviceUnreachableError(message, { cause: error });
  }

  private async connected(): Promise<ModbusRTU> {
    if (this.client?.isOpen === true) return this.client;
    this.connecting ??= this.connect().finally(() => {
      this.connecting = null;
    });
    return this.connecting;
  }

  private async connect(): Promise<ModbusRTU> {
    const wait = this.backoff.remaining(this.options.clock.now());
    if (wait > 0) {
      throw new DeviceUnreachableError(
        `${this.name}: not connected; next attempt in ${Math.ceil(wait)} ms (${this.health.snapshot().lastError ?? 'no connection yet'})`,
      );
    }
    const client = new ModbusClient();
    client.setID(this.options.unitId);
    client.setTimeout(this.requestTimeoutMs);
    // Errors surface through the request in flight; an unhandled 'error' event must not crash.
    client.on('error', (error: unknown) => {
      this.log.debug({ err: error }, 'modbus socket error');
    });
    try {
      await withTimeout(
        client.connectTCP(this.options.host, { port: this.options.port }),
        this.connectTimeoutMs,
        `${this.name}: connect to ${this.options.host}:${this.options.port} timed out`,
      );
    } catch (error) {
      this.backoff.failed(this.options.clock.now());
      destroyQuietly(client);
      const message = `${this.name}: connect to ${this.options.host}:${this.options.port} failed: ${describeError(error)}`;
      this.health.error(message);
      this.health.disconnected();
      throw new DeviceUnreachableError(message, { cause: error });
    }
    client.on('close', () => {
      if (this.client === client) {
        this.client = null;
        this.health.disconnected();
        this.onSocketClosed?.('connection closed');
      }
    });
    this.backoff.reset();
    this.health.connected();
    this.client = client;
    this.log.info({ host: this.options.host, port: this.options.port }, 'modbus connected');
    return client;
  }

  private drop(reason: string): void {
    const client = this.client;
    this.client = null;
    this.health.disconnected();
    if (client !== null) {
      this.log.warn({ reason }, 'modbus connection dropped');
      destroyQuietly(client);
    }
  }
}

function destroyQuietly(client: ModbusRTU): void {
  try {
    client.destroy(() => undefined);
  } catch {
    // Already closed: nothing to release.
  }
}

export interface ModbusDeviceOptions {
  readonly id: string;
  readonly profile: DeviceProfile;
  readonly endpoint: ModbusEndpoint;
  /** First holding register of the device's block. */
  readonly base: number;
  readonly clockRegister: number;
  readonly clock: Clock;
}

/** The driver port for one device on a Modbus TCP PLC (register map: docs/device-profiles.md). */
export class ModbusDeviceDriver implements DeviceDriver {
  private readonly o: ModbusDeviceOptions;
  private readonly map: NonNullable<DeviceProfile['modbus']>;

  constructor(options: ModbusDeviceOptions) {
    if (options.profile.modbus === undefined) {
      throw new Error(`profile ${options.profile.profile} has no Modbus register map`);
    }
    this.o = options;
    this.map = options.profile.modbus;
  }

  async read(signal?: AbortSignal): Promise<Readback> {
    const { status, positionScale } = this.map;
    const requestedAt = this.o.clock.now();
    const regs = await this.o.endpoint.readRegisters(
      this.o.base + status.offset,
      status.length,
      signal,
    );
    const receivedAt = this.o.clock.now();
    const at = (i: number): number => {
      const v = regs[i];
      if (v === undefined) throw new DeviceUnreachableError(`${this.o.id}: short status block`);
      return v;
    };
    const fault = at(status.fault);
    return {
      state: stateName(this.o.profile, at(status.state)),
      position: at(status.position) / positionScale,
      seq: at(status.seqEcho),
      faultCode: fault === 0 ? null : fault,
      sourceTime: u64(regs, status.time),
      requestedAt,
      receivedAt,
    };
  }

  async write(command: CommandWrite, signal?: AbortSignal): Promise<void> {
    const { command: block, positionScale } = this.map;
    const values = new Array<number>(block.length).fill(0);
    values[block.code] = commandCode(this.o.profile, command.action);
    values[block.setpoint] = Math.round((command.position ?? 0) * positionScale);
    values[block.seq] = command.seq;
    // One FC16 request: code, setpoint and sequence number reach the PLC together.
    await this.o.endpoint.writeRegisters(this.o.base + block.offset, values, signal);
  }

  async readClock(signal?: AbortSignal): Promise<ClockSample> {
    const requestedAt = this.o.clock.now();
    const regs = await this.o.endpoint.readRegisters(this.o.clockRegister, 4, signal);
    const receivedAt = this.o.clock.now();
    return { controllerTime: u64(regs, 0), requestedAt, receivedAt };
  }

  health(): DeviceHealth {
    return this.o.endpoint.health.snapshot();
  }
}

/** Four 16-bit registers, most significant word first, as one unsigned integer (ms < 2^53). */
function u64(regs: number[], offset: number): number {
  let value = 0;
  for (let i = 0; i < 4; i++) {
    const word = regs[offset + i];
    if (word === undefined) throw new DeviceUnreachableError('short clock block');
    value = value * 65536 + word;
  }
  return value;
}
