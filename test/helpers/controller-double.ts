import {
  DeviceRefusedError,
  DeviceUnreachableError,
  type ClockSample,
  type CommandWrite,
  type DeviceDriver,
  type DeviceHealth,
  type Readback,
} from '../../src/core/driver.js';

/**
 * An in-memory controller that follows the controller rules of SPEC §3 and §8, written here
 * independently of the bridge's state machine (a shared bug would hide itself). It implements
 * the driver port directly, counts every command write it receives (the ground truth for I1),
 * and logs every read it serves (the ground truth for I2). Time is real: tests use travel times
 * of tens of milliseconds.
 */

type Kind = 'valve' | 'actuator';

const CODES = { open: 1, close: 2, stop: 3, reset: 4, move: 5 } as const;

export interface ReceivedWrite {
  readonly at: number;
  readonly seq: number;
  readonly action: string;
  readonly position: number | null;
  /** What the controller did with it. */
  outcome: 'pending' | 'accepted' | 'noop' | 'rejected-0x88' | 'ignored-same-seq' | 'ignored-local';
}

export interface ServedRead {
  readonly at: number;
  readonly state: string;
  readonly seq: number;
}

export interface DoubleFaults {
  /** The next N writes are applied but their reply is lost (outcome unknown to the bridge). */
  dropReplies: number;
  /** The next N writes never reach the controller (connection reset before sending). */
  loseWrites: number;
  /** The next N writes are refused by the controller (exception / Bad status). */
  refuseWrites: number;
  /** The next N reads fail. */
  failReads: number;
  /** Every request fails: the controller is off the network. */
  unreachable: boolean;
  /** Travel does not progress; after the travel limit the device faults with 0x81. */
  stuck: boolean;
  /** Reads return the last status from before the freeze, with its old timestamp. */
  frozen: boolean;
  /** The controller does not take commands (e.g. a long scan); they stay pending. */
  holdCommands: boolean;
}

export class ControllerDouble implements DeviceDriver {
  readonly kind: Kind;
  readonly travelMs: number;
  state: string;
  position: number;
  fault = 0;
  seqEcho = 0;
  local = false;
  clockOffsetMs = 0;
  readonly writes: ReceivedWrite[] = [];
  readonly reads: ServedRead[] = [];
  readonly faults: DoubleFaults = {
    dropReplies: 0,
    loseWrites: 0,
    refuseWrites: 0,
    failReads: 0,
    unreachable: false,
    stuck: false,
    frozen: false,
    holdCommands: false,
  };
  /** Called when a write arrives, before it is recorded (tests change the plant here). */
  onWrite: ((write: CommandWrite) => void) | null = null;
  private lastTaken = 0;
  private pending: ReceivedWrite | null = null;
  private target: number | null = null;
  private travelStartedAt = 0;
  private lastStep = Date.now();
  private stateSince = Date.now();
  private echoSince = Date.now();
  private lastEchoSeen = 0;
  private lastFaultSeen = 0;
  private frozenSnapshot: Readback | null = null;
  private concurrent = 0;
  maxConcurrent = 0;

  constructor(kind: Kind, options: { travelMs?: number; state?: string; position?: number } = {}) {
    this.kind = kind;
    this.travelMs = options.travelMs ?? 40;
    this.state = options.state ?? (kind === 'valve' ? 'CLOSED' : 'IDLE');
    this.position = options.position ?? (this.state === 'OPEN' ? 100 : 0);
  }

  /** Writes received carrying this sequence number. */
  writesWithSeq(seq: number): number {
    return this.writes.filter((w) => w.seq === seq).length;
  }

  setLocal(local: boolean): void {
    this.step();
    this.local = local;
    if (local) this.setState('LOCAL');
    else this.setState(this.restingState());
  }

  /** Someone at the plant moves the device; its status changes with a fresh timestamp. */
  operateByHand(state: string, position: number): void {
    this.step();
    this.target = null;
    this.position = position;
    this.setState(state);
  }

  async read(): Promise<Readback> {
    return this.request(() => {
      if (this.faults.failReads > 0) {
        this.faults.failReads--;
        throw new DeviceUnreachableError('read timed out');
      }
      const requestedAt = Date.now();
      this.step();
      if (this.faults.frozen && this.frozenSnapshot !== null) {
        return { ...this.frozenSnapshot, requestedAt, receivedAt: Date.now() };
      }
      const readback: Readback = {
        state: this.state,
        position: this.position,
        seq: this.seqEcho,
        faultCode: this.fault === 0 ? null : this.fault,
        sourceTime: this.statusSince() + this.clockOffsetMs,
        requestedAt,
        receivedAt: Date.now(),
      };
      this.frozenSnapshot = readback;
      this.reads.push({ at: requestedAt, state: this.state, seq: this.seqEcho });
      return readback;
    });
  }

  async write(command: CommandWrite): Promise<void> {
    return this.request(() => {
      if (this.faults.loseWrites > 0) {
        this.faults.loseWrites--;
        throw new DeviceUnreachableError('connection reset before the write was sent');
      }
      if (this.faults.refuseWrites > 0) {
        this.faults.refuseWrites--;
        throw new DeviceRefusedError('Modbus exception 0x04 (server device failure)');
      }
      this.onWrite?.(command);
      this.step();
      const write: ReceivedWrite = {
        at: Date.now(),
        seq: command.seq,
        action: command.action,
        position: command.position,
        outcome: 'pending',
      };
      this.writes.push(write);
      this.pending = write;
      if (this.faults.dropReplies > 0) {
        this.faults.dropReplies--;
        throw new DeviceUnreachableError('request timed out (reply lost)');
      }
    });
  }

  async readClock(): Promise<ClockSample> {
    return this.request(() => {
      const requestedAt = Date.now();
      return {
        controllerTime: Date.now() + this.clockOffsetMs,
        requestedAt,
        receivedAt: Date.now(),
      };
    });
  }

  health(): DeviceHealth {
    return {
      connected: !this.faults.unreachable,
      lastGoodReadAt: null,
      errorCount: 0,
      lastError: null,
      connectionEpoch: 1,
    };
  }

  private async request<T>(body: () => T): Promise<T> {
    this.concurrent++;
    this.maxConcurrent = Math.max(this.maxConcurrent, this.concurrent);
    try {
      // A real request takes a little while; concurrency would show here.
      await new Promise((resolve) => setImmediate(resolve));
      if (this.faults.unreachable) throw new DeviceUnreachableError('connection refused');
      return body();
    } finally {
      this.concurrent--;
    }
  }

  /** Like an OPC UA source timestamp: when the newest of the status values last changed. */
  private statusSince(): number {
    if (this.seqEcho !== this.lastEchoSeen || this.fault !== this.lastFaultSeen) {
      this.lastEchoSeen = this.seqEcho;
      this.lastFaultSeen = this.fault;
      this.echoSince = Date.now();
    }
    return Math.max(this.stateSince, this.echoSince);
  }

  private setState(state: string): void {
    if (state !== this.state) {
      this.state = state;
      this.stateSince = Date.now();
    }
  }

  private restingState(): string {
    if (this.kind === 'actuator') return 'IDLE';
    if (this.position <= 0) return 'CLOSED';
    if (this.position >= 100) return 'OPEN';
    return 'STOPPED';
  }

  /** One controller scan: take a pending command, then advance travel. */
  private step(): void {
    const now = Date.now();
    if (this.pending !== null && !this.faults.holdCommands) {
      const write = this.pending;
      this.pending = null;
      this.take(write);
    }
    const elapsed = now - this.lastStep;
    this.lastStep = now;
    if (this.target === null) return;
    if (this.faults.stuck) {
      if (now - this.travelStartedAt > 2 * this.travelMs) {
        this.fault = 0x81;
        this.target = null;
        this.setState('FAULT');
      }
      return;
    }
    const stepPct = (elapsed / this.travelMs) * 100;
    const remaining = this.target - this.position;
    if (Math.abs(remaining) <= stepPct) {
      this.position = this.target;
      this.target = null;
      this.setState(this.kind === 'actuator' ? 'IDLE' : this.position >= 100 ? 'OPEN' : 'CLOSED');
    } else {
      this.position += Math.sign(remaining) * stepPct;
    }
  }

  private take(write: ReceivedWrite): void {
    if (write.seq === this.lastTaken) {
      write.outcome = 'ignored-same-seq';
      return;
    }
    this.lastTaken = write.seq;
    this.seqEcho = write.seq;
    if (this.local) {
      write.outcome = 'ignored-local';
      return;
    }
    const s = this.state;
    const illegal = (): void => {
      this.fault = 0x88;
      write.outcome = 'rejected-0x88';
    };
    const accept = (outcome: 'accepted' | 'noop'): void => {
      if (this.fault === 0x88) this.fault = 0;
      write.outcome = outcome;
    };
    const travel = (to: number, state: string): void => {
      this.target = to;
      this.travelStartedAt = Date.now();
      this.setState(state);
      accept('accepted');
    };
    const code = CODES[write.action as keyof typeof CODES];
    if (this.kind === 'valve') {
      if (code === CODES.open) {
        if (s === 'CLOSED' || s === 'STOPPED') travel(100, 'OPENING');
        else if (s === 'OPENING' || s === 'OPEN') accept('noop');
        else illegal();
      } else if (code === CODES.close) {
        if (s === 'OPEN' || s === 'STOPPED') travel(0, 'CLOSING');
        else if (s === 'CLOSED' || s === 'CLOSING') accept('noop');
        else illegal();
      } else if (code === CODES.stop) {
        if (s === 'OPENING' || s === 'CLOSING') {
          this.target = null;
          this.setState('STOPPED');
          accept('accepted');
        } else accept('noop');
      } else if (code === CODES.reset) {
        if (s === 'FAULT') {
          this.fault = 0;
          this.setState(this.position <= 0 ? 'CLOSED' : 'STOPPED');
          accept('accepted');
        } else accept('noop');
      } else illegal();
      return;
    }
    if (code === CODES.move) {
      if (s === 'IDLE') travel(write.position ?? this.position, 'MOVING');
      else illegal();
    } else if (code === CODES.stop) {
      if (s === 'MOVING') {
        this.target = null;
        this.setState('IDLE');
        accept('accepted');
      } else accept('noop');
    } else if (code === CODES.reset) {
      if (s === 'FAULT') {
        this.fault = 0;
        this.setState('IDLE');
        accept('accepted');
      } else accept('noop');
    } else illegal();
  }
}
