/**
 * A simulated PLC: its controller clock, its scan cycle over the devices it runs, the faults
 * injected on it and its power supply. The protocol front end (Modbus or OPC UA) is attached
 * by the plant.
 */
import type { Logger } from 'pino';
import { z } from 'zod';
import { ControllerClock } from './clock.js';
import type { ClockSettings, TimeSource } from './clock.js';
import { formatFaultCode } from './codes.js';
import type { DeviceProfile, DeviceState, ModbusLayout, Refusal } from './codes.js';
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
import type { WriteLogEntry } from './write-log.js';
import { zodIssues } from './zod-issues.js';

export type PlcProtocol = 'modbus' | 'opcua';

export type PlcEndpoint =
  | { protocol: 'modbus'; host: string; port: number; unitId: number }
  | { protocol: 'opcua'; endpointUrl: string; namespaceUri: string };

export type DeviceFaultInput = Exclude<FaultInput, { kind: 'clock' }>;

/** Options of a power cycle (typed API and the body of POST /plcs/{id}/power-cycle). */
export const powerCycleSchema = z.strictObject({
  /** How long the power stays off: no scans, connections refused. */
  offMs: z.int().min(0).max(3_600_000).default(0),
  /** The controller clock comes back at this offset from the time source (RTC came back wrong). */
  clockOffsetMs: z.number().optional(),
});
export type PowerCycleOptions = z.input<typeof powerCycleSchema>;

export interface PowerCycleResult {
  /** Power cycles of this PLC since the plant started, this one included. */
  powerCycles: number;
  offMs: number;
  /** Time-source reading at which the PLC is back (scans, accepts connections). */
  powerUpAt: number;
  /** Controller time at power-up. */
  powerUpControllerTime: number;
}

/** Options of a session loss (typed API): an OPC UA server that forgot its sessions. */
export interface SessionLossOptions {
  /**
   * For this long after it (time source) the server refuses new sessions with
   * BadTooManySessions, as one whose session table is still full; default 0.
   */
  refuseMs?: number;
}

/**
 * Options of a refusal of connections (typed API and the body of
 * POST /plcs/{id}/refuse-connections).
 */
export const refuseConnectionsSchema = z.strictObject({
  /** How long connects are refused (real time: the listener is opened again by a timer). */
  ms: z.int().min(1).max(3_600_000),
  /**
   * Armed, not at once: the refusal starts as the PLC has answered its next read of this
   * device's registers (the answer sent first). A later arming replaces an earlier one.
   */
  afterReadOf: z.string().min(1).optional(),
});
export type RefuseConnectionsOptions = z.input<typeof refuseConnectionsSchema>;
export type RefuseConnections = z.output<typeof refuseConnectionsSchema>;

/** What the control API and tests see of a device. */
export interface DeviceSnapshot {
  id: string;
  profile: DeviceProfile;
  plc: string;
  /** Modbus register layout; null on an OPC UA PLC. */
  layout: ModbusLayout | null;
  /** What an illegal command does besides 0x88: `keep` the state or go to `fault`. */
  refusal: Refusal;
  /** Live controller state (the published image may be frozen). */
  state: DeviceState;
  position: number;
  faultCode: number;
  fault: string | null;
  seqEcho: number;
  local: boolean;
  counters: DeviceCounters;
  /** Command writes received and not yet taken by a scan (e.g. while `hold` is active). */
  pendingWrites: number;
  /** The image clients read: differs from the live values while `frozen` is active. */
  published: PublishedStatus;
  /** Live controller clock of the device's PLC. */
  controllerTime: number;
  faults: ActiveFault[];
  plcFaults: ActiveFault[];
}

/** Read requests a device's read log keeps (see SimDevice.readLog). */
export const READ_LOG_CAPACITY = 10_000;

export class SimDevice {
  readonly id: string;
  readonly profile: DeviceProfile;
  readonly plc: SimPlc;
  readonly config: DeviceConfig;
  /** @internal the controller program; front ends feed it writes and read its image. */
  readonly controller: DeviceController;
  /** @internal */
  readonly faultSet: FaultSet;
  #readLog: number[] = [];
  readonly #writers = new Set<string>();

  constructor(id: string, config: DeviceConfig, plc: SimPlc) {
    this.id = id;
    this.profile = config.profile;
    this.plc = plc;
    this.config = config;
    this.faultSet = new FaultSet(plc.time);
    this.controller = new DeviceController(
      {
        id,
        profile: config.profile,
        travelMs: config.travelMs,
        travelTimeoutMs: config.travelTimeoutMs ?? 2 * config.travelMs,
        initialPosition: config.initialPosition,
        // A limit-switch valve has a bare command register and no sequence number.
        handshake: config.layout === 'limit-switch' ? 'every-write' : 'seq',
        refusal: config.refusal,
      },
      plc.clock.now(),
    );
  }

  /** Modbus base address of the device's registers; undefined on an OPC UA PLC. */
  get base(): number | undefined {
    return this.config.base;
  }

  /** Modbus register layout; undefined on an OPC UA PLC. */
  get layout(): ModbusLayout | undefined {
    return this.config.layout;
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

  /**
   * Every received write that touched the seq, in arrival order, with its outcome once a scan
   * took it (up to 100 000; see writeLogDropped). A copy.
   */
  get writeLog(): WriteLogEntry[] {
    return this.controller.writeLog.entries();
  }

  /** The write-log entries with this seq (those the log still holds; see writesWithSeq). */
  writesOfSeq(seq: number): WriteLogEntry[] {
    return this.controller.writeLog.entries(seq);
  }

  /** How many received writes carried `seq`: the I1 ground truth, exact beyond the log. */
  writesWithSeq(seq: number): number {
    return this.controller.writeLog.countSeq(seq);
  }

  /** Write-log entries dropped (oldest first) since the last counter reset. */
  get writeLogDropped(): number {
    return this.controller.writeLog.dropped;
  }

  /** Command writes waiting for a scan. */
  get pendingWrites(): number {
    return this.controller.pendingWrites;
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
      layout: this.config.layout ?? null,
      refusal: this.config.refusal,
      state: c.state,
      position: Math.round(c.position * 10) / 10,
      faultCode: c.faultCode,
      fault: c.faultCode === 0 ? null : formatFaultCode(c.faultCode),
      seqEcho: c.seqEcho,
      local: c.localSwitch,
      counters: c.counters,
      pendingWrites: c.pendingWrites,
      published: c.published,
      controllerTime: this.plc.clock.now(),
      faults: this.faultSet.list(),
      plcFaults: this.plc.faults(),
    };
  }

  /** Zeroes the counters, the command log, the write log and the read log. */
  resetCounters(): void {
    this.controller.resetCounters();
    this.#readLog = [];
    this.#writers.clear();
  }

  /**
   * Controller times (epoch ms) at which the PLC served a read request that touched this
   * device's registers, oldest first: the last READ_LOG_CAPACITY of them. A copy. Served is
   * not received: a link fault may then have held the answer back, dropped it or cut it off
   * (tests wait on this log for a read that has reached the PLC and whose reply is delayed).
   */
  get readLog(): number[] {
    return [...this.#readLog];
  }

  /**
   * The client connections (Modbus: `address:port` of the peer) that wrote to this device's
   * registers since the start or the last resetCounters: which of a master's connections
   * carries the device.
   */
  get writers(): string[] {
    return [...this.#writers];
  }

  /** @internal a front end took a write to this device's registers from `peer`. */
  noteWriter(peer: string): void {
    this.#writers.add(peer);
  }

  /** @internal a front end answered a read of this device's registers. */
  noteRead(controllerTime: number): void {
    this.#readLog.push(controllerTime);
    // Dropped in halves, so that a long run costs amortised O(1) per read.
    if (this.#readLog.length > READ_LOG_CAPACITY) this.#readLog.splice(0, READ_LOG_CAPACITY / 2);
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
    if (fault.kind === 'drive-trip' && this.config.layout !== 'limit-switch') {
      throw new FaultNotApplicableError(
        kind,
        `device ${this.id}`,
        "only a limit-switch valve reports its drive's fault output",
      );
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

  /** @internal a front end received a command write (see DeviceController.receiveWrite). */
  receiveWrite(write: CommandWrite, heldOnLinkMs?: number): void {
    this.controller.receiveWrite(write, this.plc.clock.now(), heldOnLinkMs);
  }

  /** @internal */
  scan(now: number, controllerTime: number): void {
    this.controller.scan(now, controllerTime, {
      stuckTravel: this.#has('stuck-travel'),
      positionSensorFault: this.#has('position-sensor'),
      frozen: this.#has('frozen'),
      hold: this.#has('hold'),
    });
  }

  /** @internal the PLC's power was cut and restored. */
  powerCycle(lostAt: number, powerUpTime: number, now: number): void {
    this.controller.powerCycle(
      lostAt,
      powerUpTime,
      this.#has('frozen'),
      now,
      this.#has('stuck-travel'),
    );
  }

  /**
   * @internal the drive's own fault output is on (`drive-trip`): a limit-switch valve's status
   * word shows its FAULT bit whatever the controller program's state, LOCAL included.
   */
  get driveTripped(): boolean {
    return this.#has('drive-trip');
  }

  #has(kind: FaultKind): boolean {
    return this.faultSet.has(kind) || this.plc.faultSet.has(kind);
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
  /** @internal the plant's time source (travel, fault lifetimes, power). */
  readonly time: TimeSource;
  /** @internal */
  readonly faultSet: FaultSet;
  /** @internal */
  readonly random: () => number;
  /** @internal */
  readonly log: Logger;
  /** @internal protocol-specific parameter checks (e.g. that a Bad status name exists). */
  frontEndFaultCheck: ((fault: Fault, target: string) => void) | undefined;
  readonly #powerListeners: ((result: PowerCycleResult) => void)[] = [];
  readonly #sessionLossListeners: ((refuseUntil: number) => void)[] = [];
  readonly #refusalListeners: ((refusal: RefuseConnections) => void)[] = [];
  readonly #scanListeners: (() => void)[] = [];
  #endpoint: PlcEndpoint | undefined;
  #timer: NodeJS.Timeout | undefined;
  /** Time-source reading until which the power is off. */
  #offUntil = Number.NEGATIVE_INFINITY;
  #powerCycles = 0;
  #connectionsAccepted = 0;
  #refusing = false;

  constructor(name: string, config: PlcConfig, options: SimPlcOptions) {
    this.name = name;
    this.protocol = config.protocol;
    this.config = config;
    this.time = options.time;
    this.faultSet = new FaultSet(options.time);
    this.random = options.random;
    this.log = options.logger.child({ plc: name });
    this.clock = new ControllerClock(options.time, config.clock);
    const devices: Readonly<Record<string, DeviceConfig>> = config.devices;
    this.devices = Object.entries(devices).map(([id, device]) => new SimDevice(id, device, this));
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

  /**
   * Modbus TCP connections the PLC has accepted since the plant started (also those reset at
   * once while its power is off): ground truth for "this client never reached the PLC".
   */
  get connectionsAccepted(): number {
    return this.#connectionsAccepted;
  }

  /** @internal the Modbus front end accepted a connection. */
  connectionAccepted(): void {
    this.#connectionsAccepted += 1;
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

  /**
   * Clearing a `clock` that was set returns the clock to the plant file's offset and drift.
   * A clock nobody set is left alone: setting it again would restart its drift from zero, a
   * step back by all the drift gathered since the start that nothing in the plant caused.
   */
  clearFault(kind: FaultKind): boolean {
    const cleared = this.faultSet.clear(kind);
    if (cleared && kind === 'clock') this.clock.set(this.config.clock);
    if (cleared) this.log.info({ kind }, 'PLC fault cleared');
    return cleared;
  }

  clearFaults(): void {
    const clockSet = this.faultSet.has('clock');
    this.faultSet.clearAll();
    if (clockSet) this.clock.set(this.config.clock);
  }

  faults(): ActiveFault[] {
    return this.faultSet.list();
  }

  /** @internal */
  checkApplicable(fault: Fault, target: string): void {
    if (fault.kind === 'exception' && this.protocol !== 'modbus') {
      throw new FaultNotApplicableError(fault.kind, target, 'Modbus exceptions need a Modbus PLC');
    }
    if (fault.kind === 'drive-trip' && this.protocol !== 'modbus') {
      throw new FaultNotApplicableError(
        fault.kind,
        target,
        "only a limit-switch valve (a Modbus layout) reports its drive's fault output",
      );
    }
    if (fault.kind === 'bad-status' && this.protocol !== 'opcua') {
      throw new FaultNotApplicableError(fault.kind, target, 'Bad status codes need an OPC UA PLC');
    }
    this.frontEndFaultCheck?.(fault, target);
  }

  /** One scan of every device, all at the same instant and controller time; none while off. */
  scan(): void {
    const now = this.time.now();
    if (now < this.#offUntil) return;
    const controllerTime = this.clock.at(now);
    for (const device of this.devices) device.scan(now, controllerTime);
    for (const listener of this.#scanListeners) listener();
  }

  /** False while a power cycle's `offMs` runs (against the time source). */
  get powered(): boolean {
    return this.time.now() >= this.#offUntil;
  }

  /** Power cycles since the plant started. */
  get powerCycles(): number {
    return this.#powerCycles;
  }

  /**
   * Cuts the power and restores it after `offMs`: every client connection is destroyed, the
   * controllers lose their volatile memory (see DeviceController.powerCycle), and while off
   * the PLC neither scans nor accepts connections. Faults, counters and logs stay: they are
   * the test's, not the PLC's. `clockOffsetMs` brings the clock back at that offset from the
   * time source (shown as the PLC's `clock` fault; clearing it restores the plant file's).
   */
  powerCycle(options: PowerCycleOptions = {}): PowerCycleResult {
    return this.applyPowerCycle(options);
  }

  /** Untyped entry for the control API: validates the options. */
  applyPowerCycle(params: unknown): PowerCycleResult {
    const parsed = powerCycleSchema.safeParse(params ?? {});
    if (!parsed.success) {
      const issues = zodIssues(parsed.error);
      throw new InvalidRequestError(
        issues.map((i) => `${i.path || '(body)'}: ${i.message}`).join('; '),
      );
    }
    const { offMs, clockOffsetMs } = parsed.data;
    const now = this.time.now();
    const lostAt = this.clock.at(now);
    this.#offUntil = now + offMs;
    this.#powerCycles += 1;
    if (clockOffsetMs !== undefined) {
      const settings = { offsetMs: clockOffsetMs, driftPpm: this.clock.settings.driftPpm };
      this.faultSet.set({ kind: 'clock', ...settings });
      this.clock.set(settings, this.#offUntil);
    }
    const powerUpControllerTime = this.clock.at(this.#offUntil);
    for (const device of this.devices) device.powerCycle(lostAt, powerUpControllerTime, now);
    const result: PowerCycleResult = {
      powerCycles: this.#powerCycles,
      offMs,
      powerUpAt: this.#offUntil,
      powerUpControllerTime,
    };
    for (const listener of this.#powerListeners) listener(result);
    this.log.info({ offMs, clockOffsetMs }, 'PLC power cycled');
    return result;
  }

  /** @internal a front end drops its connections and volatile registers on a power cycle. */
  onPowerCycle(listener: (result: PowerCycleResult) => void): void {
    this.#powerListeners.push(listener);
  }

  /**
   * An OPC UA server forgets every session, its connections (secure channels) staying up: the
   * sessions timed out on its side, or it restarted its session layer. A client learns it from
   * its next request, answered BadSessionIdInvalid, and must make a new session; `refuseMs`
   * makes the server refuse that for a while (BadTooManySessions). The controller itself is
   * untouched. Modbus has no sessions.
   */
  loseSessions(options: SessionLossOptions = {}): void {
    const refuseMs = options.refuseMs ?? 0;
    if (!Number.isFinite(refuseMs) || refuseMs < 0) {
      throw new InvalidRequestError(`refuseMs: must be a duration in ms, not ${refuseMs}`);
    }
    if (this.#sessionLossListeners.length === 0) {
      throw new FaultNotApplicableError(
        'session loss',
        `PLC ${this.name}`,
        'only an OPC UA server has sessions',
      );
    }
    const refuseUntil = this.time.now() + refuseMs;
    for (const listener of this.#sessionLossListeners) listener(refuseUntil);
    this.log.info({ refuseMs }, 'PLC lost its OPC UA sessions');
  }

  /** @internal an OPC UA front end closes its sessions (see loseSessions). */
  onSessionLoss(listener: (refuseUntil: number) => void): void {
    this.#sessionLossListeners.push(listener);
  }

  /**
   * The PLC's communication module drops off the network for `ms` while the controller runs
   * on: every client connection is reset and a connect is refused (ECONNREFUSED: nothing
   * listens) until `ms` have passed, then it listens on the same port again. Unlike a power
   * cycle nothing of the controller is lost (scans, travel, the seq echo, the command
   * registers, writes waiting for a scan), so a client that finds no connection knows that
   * nothing it did not send was applied. On Modbus, requests a link fault holds (`latency`
   * `when: before`, a `stall`) were already on the wire and are applied when the hold ends;
   * requests queued behind one on a reset connection die with it. On OPC UA every session is
   * closed as well (a client needs a new one), and requests held on the link die with their
   * session (opcua-refusal.ts). Measured in real time, not on the time source. Called again
   * while refusing, the refusal lasts until the later end. With `afterReadOf` it starts only
   * once the PLC has answered its next read of that device (Modbus: a read of its registers;
   * OPC UA: a Read request of its variables): a master that read the device just before it
   * would write finds no connection for the write.
   */
  refuseConnections(options: RefuseConnectionsOptions): void {
    this.applyRefuseConnections(options);
  }

  /** Untyped entry for the control API: validates the options. */
  applyRefuseConnections(params: unknown): RefuseConnections {
    const parsed = refuseConnectionsSchema.safeParse(params ?? {});
    if (!parsed.success) {
      const issues = zodIssues(parsed.error);
      throw new InvalidRequestError(
        issues.map((i) => `${i.path || '(body)'}: ${i.message}`).join('; '),
      );
    }
    if (this.#refusalListeners.length === 0) {
      throw new FaultNotApplicableError(
        'refuse-connections',
        `PLC ${this.name}`,
        'its front end cannot close its listener',
      );
    }
    const refusal = parsed.data;
    if (refusal.afterReadOf !== undefined && this.device(refusal.afterReadOf) === undefined) {
      throw new InvalidRequestError(
        `afterReadOf: PLC ${this.name} runs no device "${refusal.afterReadOf}"`,
      );
    }
    for (const listener of this.#refusalListeners) listener(refusal);
    this.log.info(
      refusal,
      refusal.afterReadOf === undefined
        ? 'PLC refuses connections'
        : 'PLC refuses connections after its next read of a device',
    );
    return refusal;
  }

  /** @internal a front end resets its connections and closes its listener. */
  onRefuseConnections(listener: (refusal: RefuseConnections) => void): void {
    this.#refusalListeners.push(listener);
  }

  /** True while a refusal of connections keeps the front end from listening. */
  get refusingConnections(): boolean {
    return this.#refusing;
  }

  /** @internal the front end stopped or started listening for a refusal. */
  set refusingConnections(refusing: boolean) {
    this.#refusing = refusing;
  }

  /** @internal a front end whose registers follow the scan (e.g. a command register it clears). */
  onScan(listener: () => void): void {
    this.#scanListeners.push(listener);
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
