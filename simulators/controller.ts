/**
 * The controller program of one simulated device: scan cycle, travel, the SPEC §3 state
 * machine (written here independently of src/, see codes.ts), the LOCAL/REMOTE switch, the
 * command handshake and the write counters that are the ground truth for invariant I1.
 *
 * The program is protocol-free: the Modbus and OPC UA front ends hand it command writes and
 * read the status image it publishes at the end of every scan. Register layouts stay in the
 * front end; what reaches the program is the command's meaning, and two settings a layout or
 * the plant file chooses: the handshake (with or without a sequence number) and what refusing
 * an illegal command does.
 */
import { WriteLog, settle } from './write-log.js';
import type { WriteLogEntry } from './write-log.js';
import {
  ACTUATOR_STATE_CODES,
  COMMAND_CODES,
  FAULT_ILLEGAL_TRANSITION,
  FAULT_NONE,
  FAULT_POSITION_SENSOR,
  FAULT_TRAVEL_TIMEOUT,
  VALVE_STATE_CODES,
} from './codes.js';
import type {
  ActuatorState,
  CommandName,
  DeviceProfile,
  DeviceState,
  Refusal,
  ValveState,
} from './codes.js';

/**
 * What a front end hands over when a write touched the sequence-number register/variable (or,
 * on a device without one, the command register).
 */
export interface CommandWrite {
  /** The command code as written, in the code table of the register layout that received it. */
  code: number;
  /** Percent; NaN when the protocol value could not be a percentage. */
  setpoint: number;
  /** 0 on a device whose handshake has no sequence number. */
  seq: number;
  /**
   * What `code` means when the layout has its own code table (a vendor register map decodes
   * its codes itself); null for a code that table does not define, which is illegal (0x88).
   * Absent: `code` is one of COMMAND_CODES.
   */
  command?: CommandName | null;
}

/**
 * How the controller tells a new command from a repeated write. `seq`: by the sequence number,
 * a write with the seq of the last command taken is ignored. `every-write`: the device has no
 * sequence number (a bare command register), so every write is a new command.
 */
export type Handshake = 'seq' | 'every-write';

export type CommandOutcome =
  'accepted' | 'noop' | 'rejected-0x88' | 'ignored-same-seq' | 'ignored-local';

export interface CommandLogEntry {
  /** Controller time (epoch ms) of the scan that took or ignored the write. */
  controllerTime: number;
  seq: number;
  code: number;
  setpoint: number;
  outcome: CommandOutcome;
  /** State before and after the scan handled this write. */
  from: DeviceState;
  to: DeviceState;
}

export interface DeviceCounters {
  /**
   * Every command write, whatever became of it: each write that touched the sequence number,
   * or on a device without one each command written to its command register.
   */
  writesReceived: number;
  /** Writes whose sequence number differed from the last one taken (all, without a seq). */
  commandsTaken: number;
  /** Taken and not refused: state changes and no-ops. */
  accepted: number;
  /** The accepted commands that changed nothing. */
  noops: number;
  /** Refused with fault 0x88. */
  rejected: number;
  /** Taken while the LOCAL switch was set. */
  ignoredLocal: number;
  /** Same sequence number as the last command taken: counted, not taken. */
  ignoredSameSeq: number;
  /** Writes discarded because more than MAX_PENDING_WRITES arrived between two scans. */
  overruns: number;
}

/** The status image as the controller last published it (what clients read). */
export interface PublishedStatus {
  state: DeviceState;
  stateCode: number;
  /** Percent, rounded to the 0.1 % the Modbus register can carry so both protocols agree. */
  position: number;
  /** Percent, not rounded: for a float register and for limit switches. */
  rawPosition: number;
  faultCode: number;
  seqEcho: number;
  /** Controller time of the scan that wrote this image. */
  scanTime: number;
  /** Controller time of the scan that last changed each field (OPC UA SourceTimestamp). */
  changedAt: { state: number; position: number; faultCode: number; seqEcho: number };
}

/** Conditions the plant imposes on a scan: injected process faults and the frozen image. */
export interface ScanConditions {
  stuckTravel: boolean;
  positionSensorFault: boolean;
  frozen: boolean;
  /** The command handshake is busy: pending writes wait for a later scan. */
  hold: boolean;
}

export interface DeviceSettings {
  id: string;
  profile: DeviceProfile;
  /** Full-stroke travel time, 0 → 100 %. */
  travelMs: number;
  /** Travel longer than this ends in FAULT 0x81. */
  travelTimeoutMs: number;
  initialPosition: number;
  handshake: Handshake;
  /** What an illegal command does besides latching 0x88: keep the state, or go to FAULT. */
  refusal: Refusal;
}

export const LOG_CAPACITY = 100;
export const MAX_PENDING_WRITES = 1024;

type Reaction =
  | { effect: 'go'; to: 'OPENING' | 'CLOSING' | 'STOPPED' | 'MOVING' | 'IDLE' }
  | { effect: 'noop' }
  | { effect: 'reject' }
  | { effect: 'recover' };

const GO_OPENING: Reaction = { effect: 'go', to: 'OPENING' };
const GO_CLOSING: Reaction = { effect: 'go', to: 'CLOSING' };
const GO_STOPPED: Reaction = { effect: 'go', to: 'STOPPED' };
const GO_MOVING: Reaction = { effect: 'go', to: 'MOVING' };
const GO_IDLE: Reaction = { effect: 'go', to: 'IDLE' };
const NOOP: Reaction = { effect: 'noop' };
const REJECT: Reaction = { effect: 'reject' };
const RECOVER: Reaction = { effect: 'recover' };

/** SPEC §3 valve table; LOCAL is handled before the table (the switch outranks commands). */
const VALVE_TABLE: Readonly<
  Record<
    'open' | 'close' | 'stop' | 'reset',
    Readonly<Record<Exclude<ValveState, 'LOCAL'>, Reaction>>
  >
> = {
  open: {
    CLOSED: GO_OPENING,
    OPENING: NOOP,
    OPEN: NOOP,
    CLOSING: REJECT,
    STOPPED: GO_OPENING,
    FAULT: REJECT,
  },
  close: {
    CLOSED: NOOP,
    OPENING: REJECT,
    OPEN: GO_CLOSING,
    CLOSING: NOOP,
    STOPPED: GO_CLOSING,
    FAULT: REJECT,
  },
  stop: {
    CLOSED: NOOP,
    OPENING: GO_STOPPED,
    OPEN: NOOP,
    CLOSING: GO_STOPPED,
    STOPPED: NOOP,
    FAULT: NOOP,
  },
  reset: {
    CLOSED: NOOP,
    OPENING: NOOP,
    OPEN: NOOP,
    CLOSING: NOOP,
    STOPPED: NOOP,
    FAULT: RECOVER,
  },
};

const ACTUATOR_TABLE: Readonly<
  Record<'move' | 'stop' | 'reset', Readonly<Record<Exclude<ActuatorState, 'LOCAL'>, Reaction>>>
> = {
  move: { IDLE: GO_MOVING, MOVING: REJECT, FAULT: REJECT },
  stop: { IDLE: NOOP, MOVING: GO_IDLE, FAULT: NOOP },
  reset: { IDLE: NOOP, MOVING: NOOP, FAULT: RECOVER },
};

const COMMAND_BY_CODE = new Map<number, CommandName>(
  Object.entries(COMMAND_CODES).map(([name, code]) => [code, name as CommandName]),
);

/** The command a write means; undefined for a code its layout does not define. */
export function commandOf(write: CommandWrite): CommandName | undefined {
  if (write.command !== undefined) return write.command ?? undefined;
  return COMMAND_BY_CODE.get(write.code);
}

/** The pure transition function: which reaction a command gets in a (non-LOCAL) state. */
export function reactionFor(
  profile: DeviceProfile,
  state: DeviceState,
  command: CommandName | undefined,
  setpoint: number,
): Reaction {
  if (command === undefined || state === 'LOCAL') return REJECT;
  if (profile === 'valve') {
    if (command === 'move') return REJECT;
    const row = VALVE_TABLE[command];
    return row[state as Exclude<ValveState, 'LOCAL'>];
  }
  if (command === 'open' || command === 'close') return REJECT;
  // A setpoint outside the stroke is as illegal as a move while moving: refuse, keep state.
  if (command === 'move' && !(setpoint >= 0 && setpoint <= 100)) return REJECT;
  return ACTUATOR_TABLE[command][state as Exclude<ActuatorState, 'LOCAL'>];
}

interface Travel {
  target: number;
  startedAt: number;
  lastMovedAt: number;
}

export class DeviceController {
  readonly settings: Readonly<DeviceSettings>;
  #state: DeviceState;
  #position: number;
  /** The cause of FAULT (0x81 / 0x82), 0 outside FAULT. */
  #deviceFault = FAULT_NONE;
  /** What the fault register shows: the latest of a 0x88 latch and the device fault. */
  #faultRegister = FAULT_NONE;
  /** The sequence number of the last command taken; echoed in the status image. */
  #seqEcho = 0;
  #travel: Travel | undefined;
  #localSwitch = false;
  #localPosition: number | undefined;
  /** Writes waiting for a scan, each with its write-log entry to settle. */
  #pending: { write: CommandWrite; entry: WriteLogEntry }[] = [];
  #counters: DeviceCounters = emptyCounters();
  #log: CommandLogEntry[] = [];
  readonly #writeLog = new WriteLog();
  #published: PublishedStatus;

  constructor(settings: DeviceSettings, controllerTime: number) {
    this.settings = { ...settings };
    this.#position = clampPercent(settings.initialPosition);
    this.#state = this.#restingState();
    this.#published = {
      state: this.#state,
      stateCode: this.#stateCode(),
      position: publishedPosition(this.#position),
      rawPosition: this.#position,
      faultCode: this.#faultRegister,
      seqEcho: this.#seqEcho,
      scanTime: controllerTime,
      changedAt: {
        state: controllerTime,
        position: controllerTime,
        faultCode: controllerTime,
        seqEcho: controllerTime,
      },
    };
  }

  get id(): string {
    return this.settings.id;
  }

  get state(): DeviceState {
    return this.#state;
  }

  /** Live position in percent (not rounded; the published image is). */
  get position(): number {
    return this.#position;
  }

  get faultCode(): number {
    return this.#faultRegister;
  }

  get seqEcho(): number {
    return this.#seqEcho;
  }

  get localSwitch(): boolean {
    return this.#localSwitch;
  }

  get published(): PublishedStatus {
    return { ...this.#published, changedAt: { ...this.#published.changedAt } };
  }

  get counters(): DeviceCounters {
    return { ...this.#counters };
  }

  get log(): CommandLogEntry[] {
    return this.#log.map((entry) => ({ ...entry }));
  }

  /** The full write log (every received write, up to 100 000), for ground-truth checks. */
  get writeLog(): WriteLog {
    return this.#writeLog;
  }

  /** How many writes wait for a scan (e.g. while the handshake is held). */
  get pendingWrites(): number {
    return this.#pending.length;
  }

  resetCounters(): void {
    this.#counters = emptyCounters();
    this.#log = [];
    this.#writeLog.clear();
  }

  /**
   * A command write arrived (one that touched the sequence number; without a seq handshake,
   * any command). It is counted now (the ground truth must not depend on the scan) and taken
   * at the next scan, in arrival order. `heldOnLinkMs`: how long a link fault held its request
   * (the write log's).
   */
  receiveWrite(write: CommandWrite, controllerTime: number, heldOnLinkMs?: number): void {
    this.#counters.writesReceived += 1;
    const entry = this.#writeLog.record(
      controllerTime,
      write.seq,
      write.code,
      write.setpoint,
      heldOnLinkMs,
    );
    if (this.#pending.length >= MAX_PENDING_WRITES) {
      const discarded = this.#pending.shift();
      if (discarded !== undefined) settle(discarded.entry, 'overrun', controllerTime);
      this.#counters.overruns += 1;
    }
    this.#pending.push({ write: { ...write }, entry });
  }

  /**
   * Power lost and back: volatile memory is gone (writes waiting for a scan, the seq echo,
   * travel, the 0x88 latch and the device fault), the position is physical and stays, the
   * state follows from it as at start-up; the LOCAL key switch is physical too and is read
   * again. Counters and logs are the test's ground truth, not PLC memory: they stay.
   *
   * `powerUpTime` is the controller time at power-up: the image is published as of then, so
   * that nobody reads the image from before the power loss (unless it is frozen). Sensor
   * supervision runs at the first scan, as on any scan.
   */
  powerCycle(
    lostAt: number,
    powerUpTime: number,
    frozen: boolean,
    now: number,
    stuckTravel: boolean,
  ): void {
    // The drive ran until the power went, also since the last scan: it stops where it was then.
    this.#runTravel(now, stuckTravel);
    for (const { entry } of this.#pending) settle(entry, 'power-cycle', lostAt);
    this.#pending = [];
    this.#seqEcho = 0;
    this.#travel = undefined;
    this.#deviceFault = FAULT_NONE;
    this.#faultRegister = FAULT_NONE;
    this.#state = this.#restingState();
    this.#readLocalSwitch();
    // Rebuilt, not updated: every field is stamped with the power-up time, also one whose
    // value came back the same. Its last change was taken by the clock before the restart,
    // which may have come back stepped (clockOffsetMs): kept, it could lie in the future of
    // the controller clock, or make an image of before the restart look newer than it is.
    if (!frozen) this.#publish(powerUpTime, true);
  }

  /**
   * The LOCAL/REMOTE key switch. Like any input it is read at the next scan. `position`
   * simulates the valve being moved by hand while in LOCAL.
   */
  setLocalSwitch(local: boolean, position?: number): void {
    this.#localSwitch = local;
    if (local && position !== undefined) this.#localPosition = clampPercent(position);
    if (!local) this.#localPosition = undefined;
  }

  /** One scan: travel so far, inputs, fault detection, commands, new travel, the status image. */
  scan(now: number, controllerTime: number, conditions: ScanConditions): void {
    // The valve travels between scans, not at them: bring it to where it is now before the
    // inputs are read, so that a stop, the LOCAL switch or a fault taken at this scan holds
    // it there (not where the previous scan saw it), and a valve that has arrived meanwhile
    // is seen OPEN / CLOSED / IDLE by the commands of this scan, as its limit switch says.
    this.#runTravel(now, conditions.stuckTravel);
    this.#readLocalSwitch();
    // Sensor supervision runs before commands so that a reset shows its result for one scan
    // and the device falls back into FAULT on the next one while the fault persists.
    if (conditions.positionSensorFault && this.#state !== 'LOCAL' && this.#state !== 'FAULT') {
      this.#enterFault(FAULT_POSITION_SENSOR);
    }
    // A held handshake leaves the writes waiting, in order; the image is still published.
    if (!conditions.hold) {
      const pending = this.#pending;
      this.#pending = [];
      for (const { write, entry } of pending) {
        settle(entry, this.#take(write, now, controllerTime), controllerTime);
      }
    }
    // Again for a travel a command of this scan started (travelMs 0 arrives at once).
    this.#runTravel(now, conditions.stuckTravel);
    if (!conditions.frozen) this.#publish(controllerTime);
  }

  #readLocalSwitch(): void {
    if (this.#localSwitch) {
      if (this.#state !== 'LOCAL') {
        this.#state = 'LOCAL';
        this.#travel = undefined;
        this.#deviceFault = FAULT_NONE;
        // A 0x88 latch survives (it clears on the next accepted command); a device fault is
        // the local operator's to deal with.
        if (this.#faultRegister !== FAULT_ILLEGAL_TRANSITION) this.#faultRegister = FAULT_NONE;
      }
      if (this.#localPosition !== undefined) {
        this.#position = this.#localPosition;
        this.#localPosition = undefined;
      }
    } else if (this.#state === 'LOCAL') {
      this.#state = this.#restingState();
    }
  }

  /** Takes (or ignores) one write and returns what became of it. */
  #take(write: CommandWrite, now: number, controllerTime: number): CommandOutcome {
    const from = this.#state;
    const logEntry = (outcome: CommandOutcome): CommandOutcome => {
      this.#log.push({
        controllerTime,
        seq: write.seq,
        code: write.code,
        setpoint: write.setpoint,
        outcome,
        from,
        to: this.#state,
      });
      if (this.#log.length > LOG_CAPACITY) this.#log.splice(0, this.#log.length - LOG_CAPACITY);
      return outcome;
    };

    if (this.settings.handshake === 'seq') {
      if (write.seq === this.#seqEcho) {
        this.#counters.ignoredSameSeq += 1;
        return logEntry('ignored-same-seq');
      }
      this.#seqEcho = write.seq;
    }
    this.#counters.commandsTaken += 1;

    if (this.#state === 'LOCAL') {
      this.#counters.ignoredLocal += 1;
      return logEntry('ignored-local');
    }

    const reaction = reactionFor(
      this.settings.profile,
      this.#state,
      commandOf(write),
      write.setpoint,
    );
    switch (reaction.effect) {
      case 'reject':
        this.#refuse();
        this.#counters.rejected += 1;
        return logEntry('rejected-0x88');
      case 'noop':
        this.#clearIllegalLatch();
        this.#counters.accepted += 1;
        this.#counters.noops += 1;
        return logEntry('noop');
      case 'recover':
        this.#deviceFault = FAULT_NONE;
        this.#faultRegister = FAULT_NONE;
        this.#state = this.#recoveredState();
        this.#counters.accepted += 1;
        return logEntry('accepted');
      case 'go':
        this.#clearIllegalLatch();
        this.#go(reaction.to, write.setpoint, now);
        this.#counters.accepted += 1;
        return logEntry('accepted');
    }
  }

  #go(
    to: 'OPENING' | 'CLOSING' | 'STOPPED' | 'MOVING' | 'IDLE',
    setpoint: number,
    now: number,
  ): void {
    this.#state = to;
    switch (to) {
      case 'OPENING':
        this.#travel = { target: 100, startedAt: now, lastMovedAt: now };
        return;
      case 'CLOSING':
        this.#travel = { target: 0, startedAt: now, lastMovedAt: now };
        return;
      case 'MOVING':
        this.#travel = { target: clampPercent(setpoint), startedAt: now, lastMovedAt: now };
        return;
      case 'STOPPED':
      case 'IDLE':
        this.#travel = undefined;
        return;
    }
  }

  #runTravel(now: number, stuck: boolean): void {
    const travel = this.#travel;
    if (travel === undefined) return;
    if (!stuck) {
      // travelMs 0: the valve is where it was sent at the scan that takes the command.
      const step =
        this.settings.travelMs === 0
          ? Infinity
          : ((now - travel.lastMovedAt) * 100) / this.settings.travelMs;
      const remaining = travel.target - this.#position;
      if (Math.abs(remaining) <= step) {
        this.#position = travel.target;
        this.#travel = undefined;
        this.#state = this.#arrivedState();
        return;
      }
      this.#position += Math.sign(remaining) * step;
    }
    travel.lastMovedAt = now;
    if (now - travel.startedAt > this.settings.travelTimeoutMs) {
      this.#enterFault(FAULT_TRAVEL_TIMEOUT);
    }
  }

  #arrivedState(): DeviceState {
    if (this.settings.profile === 'actuator') return 'IDLE';
    return this.#state === 'CLOSING' ? 'CLOSED' : 'OPEN';
  }

  #enterFault(code: number): void {
    this.#state = 'FAULT';
    this.#travel = undefined;
    this.#deviceFault = code;
    this.#faultRegister = code;
  }

  /**
   * An illegal command: 0x88 is latched either way. With `refusal: fault` the device also goes
   * to FAULT and stops where it is; the refusal is then its device fault, so that clearing the
   * latch (a no-op such as stop) still shows 0x88 until a reset. A device already in FAULT
   * keeps the fault that put it there.
   */
  #refuse(): void {
    this.#faultRegister = FAULT_ILLEGAL_TRANSITION;
    if (this.settings.refusal === 'fault' && this.#state !== 'FAULT') {
      this.#state = 'FAULT';
      this.#travel = undefined;
      this.#deviceFault = FAULT_ILLEGAL_TRANSITION;
    }
  }

  #clearIllegalLatch(): void {
    if (this.#faultRegister === FAULT_ILLEGAL_TRANSITION) this.#faultRegister = this.#deviceFault;
  }

  /**
   * Where reset leaves FAULT. SPEC §3 allows only →STOPPED/CLOSED: CLOSED at 0 %, STOPPED
   * anywhere else, fully open included (unlike the resting state, which may be OPEN).
   */
  #recoveredState(): DeviceState {
    if (this.settings.profile === 'actuator') return 'IDLE';
    return this.#position <= 0 ? 'CLOSED' : 'STOPPED';
  }

  /** The state a device at rest settles in: back in REMOTE, at start-up and power-up. */
  #restingState(): DeviceState {
    if (this.settings.profile === 'actuator') return 'IDLE';
    if (this.#position <= 0) return 'CLOSED';
    if (this.#position >= 100) return 'OPEN';
    return 'STOPPED';
  }

  #stateCode(): number {
    return this.settings.profile === 'valve'
      ? VALVE_STATE_CODES[this.#state as ValveState]
      : ACTUATOR_STATE_CODES[this.#state as ActuatorState];
  }

  /** `rebuilt`: every field counts as changed now (the image after a power-up). */
  #publish(controllerTime: number, rebuilt = false): void {
    const previous = this.#published;
    const position = publishedPosition(this.#position);
    const changed = (before: number | string, after: number | string, at: number): number =>
      before === after && !rebuilt ? at : controllerTime;
    this.#published = {
      state: this.#state,
      stateCode: this.#stateCode(),
      position,
      rawPosition: this.#position,
      faultCode: this.#faultRegister,
      seqEcho: this.#seqEcho,
      scanTime: controllerTime,
      changedAt: {
        state: changed(previous.state, this.#state, previous.changedAt.state),
        position: changed(previous.position, position, previous.changedAt.position),
        faultCode: changed(previous.faultCode, this.#faultRegister, previous.changedAt.faultCode),
        seqEcho: changed(previous.seqEcho, this.#seqEcho, previous.changedAt.seqEcho),
      },
    };
  }
}

function emptyCounters(): DeviceCounters {
  return {
    writesReceived: 0,
    commandsTaken: 0,
    accepted: 0,
    noops: 0,
    rejected: 0,
    ignoredLocal: 0,
    ignoredSameSeq: 0,
    overruns: 0,
  };
}

function clampPercent(value: number): number {
  return Math.min(100, Math.max(0, value));
}

function publishedPosition(position: number): number {
  return Math.round(position * 10) / 10;
}
