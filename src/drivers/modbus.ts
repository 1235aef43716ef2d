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
import type { ModbusMap, RegisterTable } from '../core/profile-modbus.js';
import { HealthCounter, describeError, withTimeout } from './common.js';
import {
  Image,
  decodeState,
  encodeCommand,
  planStatusReads,
  rawValue,
  scaled,
  type ReadRequest,
  type StatusPlan,
} from './modbus-map.js';

export interface ModbusEndpointOptions {
  readonly name: string;
  readonly host: string;
  readonly port: number;
  readonly unitId: number;
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
    return this.read('holding', address, length, signal);
  }

  /** Reads from any table; coils and discrete inputs come back as 0 / 1. */
  read(
    table: RegisterTable,
    address: number,
    length: number,
    signal?: AbortSignal,
  ): Promise<number[]> {
    const label = table === 'holding' ? '' : `${table} `;
    return this.request(
      `read ${label}${address}+${length}`,
      async (client) => {
        switch (table) {
          case 'holding':
            return (await client.readHoldingRegisters(address, length)).data;
          case 'input':
            return (await client.readInputRegisters(address, length)).data;
          case 'coil':
            // Bits come padded to whole bytes.
            return (await client.readCoils(address, length)).data.slice(0, length).map(Number);
          case 'discrete':
            return (await client.readDiscreteInputs(address, length)).data
              .slice(0, length)
              .map(Number);
        }
      },
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
  /** The device's base address: a field's `at` counts from it. */
  readonly base: number;
  readonly clock: Clock;
}

/** The driver port for one device on a Modbus TCP PLC (register map: docs/device-profiles.md). */
export class ModbusDeviceDriver implements DeviceDriver {
  private readonly o: ModbusDeviceOptions;
  private readonly map: ModbusMap;
  private readonly plan: StatusPlan;
  /** Present when the profile maps the controller's live clock. */
  readonly readClock?: (signal?: AbortSignal) => Promise<ClockSample>;

  constructor(options: ModbusDeviceOptions) {
    if (options.profile.modbus === undefined) {
      throw new Error(`profile ${options.profile.profile} has no Modbus register map`);
    }
    this.o = options;
    this.map = options.profile.modbus;
    this.plan = planStatusReads(this.map, options.base);
    const clockRequest = this.plan.clock;
    const clockField = this.map.status.clock;
    if (clockRequest !== null && clockField !== undefined) {
      this.readClock = async (signal) => {
        const requestedAt = this.o.clock.now();
        const image = await this.fetch([clockRequest], signal);
        const receivedAt = this.o.clock.now();
        return { controllerTime: this.decode(clockField, image), requestedAt, receivedAt };
      };
    }
  }

  async read(signal?: AbortSignal): Promise<Readback> {
    const { status } = this.map;
    const requestedAt = this.o.clock.now();
    const image = await this.fetch(this.plan.reads, signal);
    const receivedAt = this.o.clock.now();
    const fault = status.fault === undefined ? 0 : this.decode(status.fault, image);
    return {
      state: decodeState(this.o.profile, this.decode(status.state, image)),
      position:
        status.position === undefined
          ? null
          : scaled(status.position, this.decode(status.position, image)),
      seq: status.seqEcho === undefined ? null : this.decode(status.seqEcho, image),
      faultCode: fault === 0 ? null : fault,
      sourceTime: status.time === undefined ? null : this.decode(status.time, image),
      requestedAt,
      receivedAt,
    };
  }

  async write(command: CommandWrite, signal?: AbortSignal): Promise<void> {
    // One FC16 request: code, setpoint and sequence number reach the PLC together.
    const { start, values } = encodeCommand(this.o.profile, this.o.base, command);
    await this.o.endpoint.writeRegisters(start, values, signal);
  }

  health(): DeviceHealth {
    return this.o.endpoint.health.snapshot();
  }

  private async fetch(requests: readonly ReadRequest[], signal?: AbortSignal): Promise<Image> {
    const image = new Image();
    for (const r of requests) {
      const values = await this.o.endpoint.read(r.table, r.start, r.length, signal);
      if (values.length < r.length) {
        throw new DeviceUnreachableError(
          `${this.o.id}: short answer to ${r.table} ${r.start}+${r.length} (${values.length})`,
        );
      }
      image.add(r, values);
    }
    return image;
  }

  private decode(field: Parameters<typeof rawValue>[0], image: Image): number {
    try {
      return rawValue(field, this.o.base, image);
    } catch (error) {
      throw new DeviceUnreachableError(`${this.o.id}: ${describeError(error)}`, { cause: error });
    }
  }
}
