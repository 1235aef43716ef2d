/**
 * A simulated PLC: its controller clock, its scan cycle over the devices it runs, and the
 * faults injected on it. The protocol front end (Modbus or OPC UA) is attached by the plant.
 */
import type { Logger } from 'pino';
import { ControllerClock } from './clock.js';
import type { ClockSettings, TimeSource } from './clock.js';
import { formatFaultCode } from './codes.js';
import type { DeviceProfile, DeviceState } from './codes.js';
import { DeviceController } from './controller.js';
import type {
  CommandLogEntry,
  CommandWrite,
  DeviceCounters,
  PublishedStatus,
} from './controller.js';
import { FaultNotApplicableError, InvalidRequestError } from './errors.js';
import { FaultSet, parseFault } from './faults.js';
import type { ActiveFault, Fault, FaultInput, FaultKind } from './faults.js';
import type { DeviceConfig, PlcConfig } from './plant-file.js';

export type PlcProtocol = 'modbus' | 'opcua';

export type PlcEndpoint =
  | { protocol: 'modbus'; host: string; port: number; unitId: number }
  | { protocol: 'opcua'; endpointUrl: string; namespaceUri: string };

export type DeviceFaultInput = Exclude<FaultInput, { kind: 'clock' }>;

/** What the control API and tests see of a device. */
export interface DeviceSnapshot {
  id: string;
  profile: DeviceProfile;
  plc: string;
  /** Live controller state (the published image may be frozen). */
  state: DeviceState;
  position: number;
  faultCode: number;
  fault: string | null;
  seqEcho: number;
  local: boolean;
  counters: DeviceCounters;
  /** The image clients read: differs from the live values while `frozen` is active. */
  published: PublishedStatus;
  /** Live controller clock of the device's PLC. */
  controllerTime: number;
  faults: ActiveFault[];
  plcFaults: ActiveFault[];
}

export class SimDevice {
  readonly id: string;
  readonly profile: DeviceProfile;
  readonly plc: SimPlc;
  readonly config: DeviceConfig;
  /** @internal the controller program; front ends feed it writes and read its image. */
  readonly controller: DeviceController;
  /** @internal */
  readonly faultSet = new FaultSet();

  constructor(id: string, config: DeviceConfig, plc: SimPlc) {
    this.id = id;
    this.profile = config.profile;
    this.plc = plc;
    this.config = config;
    this.controller = new DeviceController(
      {
        id,
        profile: config.profile,
        travelMs: config.travelMs,
        travelTimeoutMs: config.travelTimeoutMs ?? 2 * config.travelMs,
        initialPosition: config.initialPosition,
      },
      plc.clock.now(),
    );
  }

  /** Modbus base address of the device's registers; undefined on an OPC UA PLC. */
  get base(): number | undefined {
    return this.config.base;
  }

  get state(): DeviceState {
    return this.controller.state;
  }

  get position(): number {
    return this.controller.position;
  }

  get faultCode(): number {
    return this.controller.faultCode;
  }

  get seqEcho(): number {
    return this.controller.seqEcho;
  }

  get counters(): DeviceCounters {
    return this.controller.counters;
  }

  /** The last 100 command writes the controller handled, oldest first. */
  get log(): CommandLogEntry[] {
    return this.controller.log;
  }

  get published(): PublishedStatus {
    return this.controller.published;
  }

  snapshot(): DeviceSnapshot {
    const c = this.controller;
    return {
      id: this.id,
      profile: this.profile,
      plc: this.plc.name,
      state: c.state,
      position: Math.round(c.position * 10) / 10,
      faultCode: c.faultCode,
      fault: c.faultCode === 0 ? null : formatFaultCode(c.faultCode),
      seqEcho: c.seqEcho,
      local: c.localSwitch,
      counters: c.counters,
      published: c.published,
      controllerTime: this.plc.clock.now(),
      faults: this.faultSet.list(),
      plcFaults: this.plc.faults(),
    };
  }

  resetCounters(): void {
    this.controller.resetCounters();
  }

  /** Flips the LOCAL/REMOTE switch (read at the next scan); `position` moves it by hand. */
  setLocal(local: boolean, position?: number): void {
    if (position !== undefined && (!local || !(position >= 0 && position <= 100))) {
      throw new InvalidRequestError('position (0–100) can only be given when switching to LOCAL');
    }
    this.controller.setLocalSwitch(local, position);
  }

  setFault(fault: DeviceFaultInput): Fault {
    return this.applyFault(fault.kind, fault);
  }

  /** Untyped entry for the control API: validates `params` for `kind`. */
  applyFault(kind: string, params: unknown): Fault {
    const fault = parseFault(kind, params, `device ${this.id}`);
    if (fault.kind === 'clock') {
      throw new FaultNotApplicableError(kind, `device ${this.id}`, 'the clock belongs to the PLC');
    }
    this.plc.checkApplicable(fault, `device ${this.id}`);
    this.faultSet.set(fault);
    this.plc.log.info({ device: this.id, fault }, 'device fault set');
    return fault;
  }

  clearFault(kind: FaultKind): boolean {
    const cleared = this.faultSet.clear(kind);
    if (cleared) this.plc.log.info({ device: this.id, kind }, 'device fault cleared');
    return cleared;
  }

  clearFaults(): void {
    this.faultSet.clearAll();
  }

  faults(): ActiveFault[] {
    return this.faultSet.list();
  }

  /** @internal a front end received a write that touched the sequence number. */
  receiveWrite(write: CommandWrite): void {
    this.controller.receiveWrite(write);
  }

  /** @internal */
  scan(now: number, controllerTime: number): void {
    const has = (kind: FaultKind): boolean =>
      this.faultSet.has(kind) || this.plc.faultSet.has(kind);
    this.controller.scan(now, controllerTime, {
      stuckTravel: has('stuck-travel'),
      positionSensorFault: has('position-sensor'),
      frozen: has('frozen'),
    });
  }
}

export interface SimPlcOptions {
  time: TimeSource;
  random: () => number;
  logger: Logger;
}

export class SimPlc {
  readonly name: string;
  readonly protocol: PlcProtocol;
  readonly config: PlcConfig;
  readonly clock: ControllerClock;
  readonly devices: readonly SimDevice[];
  /** @internal */
  readonly faultSet = new FaultSet();
  /** @internal */
  readonly random: () => number;
  /** @internal */
  readonly log: Logger;
  /** @internal protocol-specific parameter checks (e.g. that a Bad status name exists). */
  frontEndFaultCheck: ((fault: Fault, target: string) => void) | undefined;
  readonly #time: TimeSource;
  #endpoint: PlcEndpoint | undefined;
  #timer: NodeJS.Timeout | undefined;

  constructor(name: string, config: PlcConfig, options: SimPlcOptions) {
    this.name = name;
    this.protocol = config.protocol;
    this.config = config;
    this.#time = options.time;
    this.random = options.random;
    this.log = options.logger.child({ plc: name });
    this.clock = new ControllerClock(options.time, config.clock);
    this.devices = Object.entries(config.devices).map(
      ([id, device]) => new SimDevice(id, device, this),
    );
  }

  /** Where the PLC listens; known once the plant has started. */
  get endpoint(): PlcEndpoint {
    if (this.#endpoint === undefined) throw new Error(`PLC ${this.name} is not listening`);
    return this.#endpoint;
  }

  /** @internal */
  set endpoint(endpoint: PlcEndpoint) {
    this.#endpoint = endpoint;
  }

  device(id: string): SimDevice | undefined {
    return this.devices.find((device) => device.id === id);
  }

  /** Live controller time (epoch ms) with offset and drift. */
  controllerTime(): number {
    return this.clock.now();
  }

  setClock(settings: Partial<ClockSettings>): void {
    this.applyFault('clock', settings);
  }

  setFault(fault: FaultInput): Fault {
    return this.applyFault(fault.kind, fault);
  }

  applyFault(kind: string, params: unknown): Fault {
    const fault = parseFault(kind, params, `PLC ${this.name}`);
    this.checkApplicable(fault, `PLC ${this.name}`);
    if (fault.kind === 'clock') {
      this.clock.set({ offsetMs: fault.offsetMs, driftPpm: fault.driftPpm });
    }
    this.faultSet.set(fault);
    this.log.info({ fault }, 'PLC fault set');
    return fault;
  }

  /** Clearing `clock` returns the clock to the plant file's offset and drift. */
  clearFault(kind: FaultKind): boolean {
    if (kind === 'clock') this.clock.set(this.config.clock);
    const cleared = this.faultSet.clear(kind);
    if (cleared) this.log.info({ kind }, 'PLC fault cleared');
    return cleared;
  }

  clearFaults(): void {
    this.faultSet.clearAll();
    this.clock.set(this.config.clock);
  }

  faults(): ActiveFault[] {
    return this.faultSet.list();
  }

  /** @internal */
  checkApplicable(fault: Fault, target: string): void {
    if (fault.kind === 'exception' && this.protocol !== 'modbus') {
      throw new FaultNotApplicableError(fault.kind, target, 'Modbus exceptions need a Modbus PLC');
    }
    if (fault.kind === 'bad-status' && this.protocol !== 'opcua') {
      throw new FaultNotApplicableError(fault.kind, target, 'Bad status codes need an OPC UA PLC');
    }
    this.frontEndFaultCheck?.(fault, target);
  }

  /** One scan of every device, all at the same instant and controller time. */
  scan(): void {
    const now = this.#time.now();
    const controllerTime = this.clock.at(now);
    for (const device of this.devices) device.scan(now, controllerTime);
  }

  /** @internal */
  startScanning(): void {
    this.scan();
    this.#timer = setInterval(() => {
      this.scan();
    }, this.config.scanMs);
  }

  /** @internal */
  stopScanning(): void {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    this.#timer = undefined;
  }
}
