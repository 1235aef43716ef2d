import { Socket } from 'node:net';
import ModbusSerial from 'modbus-serial';
import type { ModbusRTU } from 'modbus-serial/ModbusRTU.js';
import { Backoff } from '../backoff.js';
import { firstOf, type Clock } from '../core/clock.js';
import {
  DeviceRefusedError,
  DeviceUnreachableError,
  WriteNotSentError,
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
import { unitIdProblem } from './modbus-unit.js';
import {
  COMBINE_READS_DEFAULTS,
  aloneBlock,
  sliceFor,
  takeReadBlock,
  type CombineReads,
  type ModbusJob,
  type ReadBlock,
  type WriteJob,
} from './modbus-queue.js';
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
  /** Concurrent reads served by one block read (default: enabled, maxGap 16). */
  readonly combineReads?: CombineReads;
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

/**
 * Exceptions that say a write was not performed (Modbus Application Protocol v1.1b3 §7): 0x01
 * illegal function, 0x02 illegal data address, 0x03 illegal data value (the request refused as
 * it stands), 0x06 server device busy (not processed: "retransmit the message later", which
 * the core does: ModbusExceptionError `busy`) and 0x0A gateway path unavailable (the gateway
 * could not forward it). 0x05 acknowledge (taken, still being processed) acknowledges the
 * write (ACKNOWLEDGE). Any other exception answers a write without saying either, and its
 * outcome is unknown, as after a lost answer: the readback settles it. So 0x04 (server device
 * failure: an unrecoverable error "while the server was attempting to perform the requested
 * action", which may have been partly or wholly performed), 0x0B (a gateway's target did not
 * answer in time: it may have taken the write and its answer been lost or late), 0x08 (memory
 * parity error, defined for file records: a PLC that says it of a write failed while
 * performing it) — and a code the protocol does not define (a vendor's), of which nothing is
 * known: taken for a refusal, a write it applied would end DEVICE_FAULT "refused", with the
 * device acting on it.
 */
const WRITE_REFUSALS: ReadonlySet<number> = new Set([0x01, 0x02, 0x03, 0x06, 0x0a]);

/**
 * Exception 0x05 acknowledge: the PLC "has accepted the request and is processing it, but a
 * long duration of time will be required" (§7): for a write, an acknowledgement (serveWrite).
 */
const ACKNOWLEDGE = 0x05;

/** Exception 0x06: the PLC is busy (with a long program command); sent again later, not a fault. */
const SERVER_DEVICE_BUSY = 0x06;

/** Exceptions a PLC gives for a read of addresses it does not map. */
const SPAN_REFUSALS: ReadonlySet<number> = new Set([2, 3]);

/**
 * How long reads go each on its own after a PLC refused a block read's span, before a block
 * read is tried again: a minute at first, doubled at each refusal after a try, up to an hour.
 * A PLC in program (STOP) mode or taking a download may refuse reads of what it maps only once
 * its program runs; one that maps nothing in the gap refuses again, one request an hour. An
 * hour of block reads without a refusal starts the doubling over.
 */
export const UNCOMBINED_FIRST_MS = 60_000;
export const UNCOMBINED_MAX_MS = 3_600_000;

function hex(n: number): string {
  return `0x${n.toString(16).padStart(2, '0')}`;
}

/**
 * The PLC answered a request with a Modbus exception: nothing was applied (for a write, only
 * WRITE_REFUSALS say so: serveWrite). 0x06 is `busy`: the request was not processed and is
 * to be sent again later — the core sends a write so refused again, the same write, while its
 * command's deadline allows (src/core/busy-write.ts), and reads a read again.
 */
class ModbusExceptionError extends DeviceRefusedError {
  readonly exception: number;

  constructor(message: string, exception: number, options?: ErrorOptions) {
    super(message, { ...options, busy: exception === SERVER_DEVICE_BUSY });
    this.exception = exception;
  }
}

function asError(error: unknown): Error {
  return error instanceof Error ? error : new DeviceUnreachableError(describeError(error));
}

function describeWrite(job: WriteJob): string {
  return `write ${job.address}+${job.values.length}`;
}

function describeRead(block: ReadBlock): string {
  const label = block.table === 'holding' ? '' : `${block.table} `;
  const combined = block.jobs.length > 1 ? ` (${block.jobs.length} reads combined)` : '';
  return `read ${label}${block.start}+${block.length}${combined}`;
}

async function readTable(client: ModbusRTU, block: ReadBlock): Promise<number[]> {
  const { start, length } = block;
  switch (block.table) {
    case 'holding':
      return (await client.readHoldingRegisters(start, length)).data;
    case 'input':
      return (await client.readInputRegisters(start, length)).data;
    case 'coil':
      // Bits come padded to whole bytes.
      return (await client.readCoils(start, length)).data.slice(0, length).map(Number);
    case 'discrete':
      return (await client.readDiscreteInputs(start, length)).data.slice(0, length).map(Number);
  }
}

/** Hands a request's answer (or its failure) to the jobs it served. */
type Delivery = () => void;
const NOTHING: Delivery = () => undefined;

/**
 * One Modbus TCP connection to one PLC, shared by its devices.
 *
 * - One request in flight: modbus-serial mismatches responses under concurrent requests on one
 *   connection (modbus-serial #264, #540), so reads and writes wait in a FIFO queue served by
 *   one pump.
 * - Block reads: when the pump takes a read, the queued reads near it on the same table join
 *   it, and one request serves them all (modbus-queue.ts): those before the first queued write,
 *   and those of a device past writes queued by other devices (never past its own). A PLC that
 *   refuses such a read is read request by request from then on.
 * - A request that times out, or a socket error, destroys the client: a late answer must never
 *   be taken for the next request's. The next request reconnects, no sooner than a jittered
 *   exponential backoff allows (modbus-serial does not reconnect by itself: #92, #182). A
 *   connection counts as good only once the PLC has answered a request on it: one that is lost
 *   before any answer (a PLC past its number of connections takes the connect and closes) is a
 *   failed attempt, so that such a PLC is not reconnected to once per request.
 * - Exception responses become DeviceRefusedError (the PLC answered: nothing was applied;
 *   `busy` for 0x06, which the core sends again while the command's deadline allows),
 *   except those that do not say a write was not performed (all but WRITE_REFUSALS: 0x04,
 *   0x08, 0x0B, undefined codes), which leave its outcome unknown, and 0x05 acknowledge, which
 *   acknowledges it; a write for which no connection could be had (the connect failed, or the
 *   backoff refused it) becomes WriteNotSentError `no-connection`, one that the endpoint's
 *   close took out of the queue `closed` (never handed to a socket: nothing was applied; the
 *   core waits for a connection and goes round again after `no-connection` only);
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
  /** The PLC has answered a request on the current connection (the backoff starts over). */
  private answered = false;
  private connecting: Promise<ModbusRTU> | null = null;
  private readonly jobs: ModbusJob[] = [];
  /** The pump while it runs: it serves the queue until it is empty. */
  private pumping: Promise<void> | null = null;
  /** The configured gap; null when combining is configured off. */
  private readonly combineGap: number | null;
  /**
   * While a refusal of a block read's span holds combining off: until when (monotonic), and for
   * how long it was held off (UNCOMBINED_FIRST_MS).
   */
  private uncombined: { readonly untilMono: number; readonly holdMs: number } | null = null;
  /** The last hold, and since when (monotonic) reads have been combined again after it. */
  private lastHold: { readonly holdMs: number; readonly combiningSinceMono: number } | null = null;
  private closed = false;
  private sent = 0;
  private served = 0;
  /** Rejects the request in flight when the socket closes under it, with the reason. */
  private onSocketClosed: ((reason: string) => void) | null = null;
  readonly health = new HealthCounter();

  constructor(options: ModbusEndpointOptions) {
    // Refused where the endpoint is built, whatever built it (modbus-unit.ts).
    const problem = unitIdProblem(options.unitId);
    if (problem !== null) throw new Error(`Modbus PLC ${options.name}, unitId: ${problem}`);
    this.options = options;
    this.name = options.name;
    this.requestTimeoutMs = options.requestTimeoutMs ?? 1000;
    this.connectTimeoutMs = options.connectTimeoutMs ?? 2000;
    this.backoff = new Backoff({
      minMs: options.backoffInitialMs ?? 200,
      maxMs: options.backoffMaxMs ?? 10_000,
    });
    const combine = options.combineReads ?? COMBINE_READS_DEFAULTS;
    this.combineGap = combine.enabled ? combine.maxGap : null;
    this.log = options.logger.child({ plc: options.name });
  }

  /** Modbus requests sent on the connection: reads (combined or not) and writes. */
  get requestsSent(): number {
    return this.sent;
  }

  /** Read calls answered with their values, however many requests served them. */
  get readsServed(): number {
    return this.served;
  }

  /** Whether concurrent reads are combined now (not while a PLC's refusal holds it off). */
  get combinesReads(): boolean {
    return this.maxGap() !== null;
  }

  /**
   * The gap within which reads join a block now: the configured one, or null while combining
   * is off (configured so, or held off after the PLC refused a block read's span). The hold
   * ends here, logged once.
   */
  private maxGap(): number | null {
    const off = this.uncombined;
    if (off === null) return this.combineGap;
    const now = this.options.clock.elapsed();
    if (now < off.untilMono) return null;
    this.uncombined = null;
    this.lastHold = { holdMs: off.holdMs, combiningSinceMono: now };
    this.log.info(
      { uncombinedMs: off.holdMs },
      'combining reads again: a block read is tried after the PLC refused one',
    );
    return this.combineGap;
  }

  readRegisters(address: number, length: number, signal?: AbortSignal): Promise<number[]> {
    return this.read('holding', address, length, signal);
  }

  /**
   * Reads from any table; coils and discrete inputs come back as 0 / 1. `sent`, when given, is
   * told how long the read waited in the queue before the request serving it was sent (ms).
   */
  read(
    table: RegisterTable,
    address: number,
    length: number,
    signal?: AbortSignal,
    sent?: (waitedMs: number) => void,
    owner?: string,
  ): Promise<number[]> {
    const queuedMono = sent === undefined ? undefined : this.options.clock.elapsed();
    return new Promise<number[]>((resolve, reject) => {
      this.enqueue({
        kind: 'read',
        table,
        address,
        length,
        signal,
        resolve,
        reject,
        sent,
        queuedMono,
        owner,
      });
    });
  }

  /**
   * `owner`, when given, names the device the registers belong to: reads of other devices may
   * then be served before this write, never reads of the same owner (modbus-queue.ts). `bounds`
   * are the command's CommandWrite.notAfter, .timeLeftMs and .withdrawn: a write not yet sent
   * when its deadline passes (on the wall clock or, counted from this call, on the monotonic
   * clock) or it is withdrawn is never sent (WriteNotSentError). Withdrawn while it waits in
   * the queue, it leaves the queue at once.
   */
  writeRegisters(
    address: number,
    values: number[],
    signal?: AbortSignal,
    owner?: string,
    bounds: Pick<CommandWrite, 'notAfter' | 'timeLeftMs' | 'withdrawn'> = {},
  ): Promise<void> {
    const what = `write ${address}+${values.length}`;
    const { withdrawn } = bounds;
    const notAfterMono =
      bounds.timeLeftMs === undefined
        ? undefined
        : this.options.clock.elapsed() + bounds.timeLeftMs;
    return new Promise<void>((resolve, reject) => {
      if (withdrawn?.aborted === true) {
        reject(this.withdrawnError(what));
        return;
      }
      const onWithdrawn = (): void => {
        const at = this.jobs.indexOf(job);
        if (at < 0) return; // taken by the pump: request() looks at the signal before sending
        this.jobs.splice(at, 1);
        job.reject(this.withdrawnError(what));
      };
      const done = (): void => {
        withdrawn?.removeEventListener('abort', onWithdrawn);
      };
      const job: WriteJob = {
        kind: 'write',
        address,
        values: [...values],
        signal,
        resolve: () => {
          done();
          resolve();
        },
        reject: (error) => {
          done();
          reject(error);
        },
        owner,
        notAfter: bounds.notAfter,
        notAfterMono,
        withdrawn,
      };
      withdrawn?.addEventListener('abort', onWithdrawn, { once: true });
      this.enqueue(job);
    });
  }

  private withdrawnError(what: string): WriteNotSentError {
    return new WriteNotSentError(
      `${this.name}: ${what}: not sent: withdrawn while it waited for the PLC; nothing was written`,
      'withdrawn',
    );
  }

  async close(): Promise<void> {
    this.closed = true;
    // The request in flight finishes; every job still queued is refused as the pump reaches it.
    await this.pumping;
    this.drop('endpoint closed');
  }

  private enqueue(job: ModbusJob): void {
    this.jobs.push(job);
    this.pumping ??= this.pump();
  }

  /**
   * Serves the queue in order, one request at a time, until it is empty; then it is done and
   * the next job queued starts a new pump. Never rejects: every job settles through the
   * delivery its serve returns.
   *
   * The answer of one request is handed to its jobs only once the next request is on its way:
   * what the jobs do with it (journal writes, the next step of their commands) then runs while
   * the PLC works on the next request, instead of before it is sent. Still one request in
   * flight: the next is sent after the answer to the one before has arrived.
   */
  private async pump(): Promise<void> {
    // A microtask later, so that the reads queued in the same tick (several devices read at
    // once) are in the queue when the first block is taken.
    await Promise.resolve();
    let deliver: Delivery | null = null;
    try {
      for (let head = this.jobs[0]; head !== undefined; head = this.jobs[0]) {
        if (this.closed || head.signal?.aborted === true) {
          this.jobs.shift();
          head.reject(this.notServed(head));
          continue;
        }
        let served: Promise<Delivery>;
        if (head.kind === 'write') {
          this.jobs.shift();
          served = this.serveWrite(head);
        } else {
          served = this.serveRead(takeReadBlock(this.jobs, this.maxGap()));
        }
        deliver?.();
        deliver = null;
        deliver = await served;
      }
    } finally {
      deliver?.();
      // Synchronously after the queue was seen empty: a job queued from now on starts a pump.
      this.pumping = null;
    }
  }

  /**
   * Why a job is dropped without a request: the endpoint closed, or its signal aborted. A
   * write so dropped never reached a socket: its outcome is known (WriteNotSentError), not
   * that of a request lost on the wire — its deadline or withdrawal first, as in request().
   */
  private notServed(job: ModbusJob): Error {
    if (job.kind === 'write') {
      const what = describeWrite(job);
      return (
        this.unsendable(job, what) ??
        (this.closed ? this.closedUnsent(what) : this.withdrawnError(what))
      );
    }
    return new DeviceUnreachableError(
      `${this.name}: ${this.closed ? 'endpoint closed' : 'aborted'}`,
    );
  }

  /** A write the endpoint's close kept from being sent (the daemon stops its drivers). */
  private closedUnsent(what: string): WriteNotSentError {
    return new WriteNotSentError(
      `${this.name}: ${what}: not sent: the connection to the PLC was closed (endpoint closed) before it was sent; nothing was written`,
      'closed',
    );
  }

  private async serveWrite(job: WriteJob): Promise<Delivery> {
    const { address, values } = job;
    try {
      await this.request(
        describeWrite(job),
        (client) => client.writeRegisters(address, [...values]),
        [job],
      );
      return () => {
        job.resolve();
      };
    } catch (error) {
      if (error instanceof ModbusExceptionError && error.exception === ACKNOWLEDGE) {
        // Taken, still being processed: the write reached the PLC, as a normal answer says.
        // Not an unknown outcome: the PLC may take longer than the redispatch guard to act on
        // it, and a readback without its echo would then "prove" it not applied and send it a
        // second time (I1). The readback confirms it, or the confirm window runs out.
        this.log.info(
          { address, length: values.length, exception: hex(ACKNOWLEDGE) },
          'write answered 0x05 (acknowledge): taken, still being processed; the readback settles it',
        );
        return () => {
          job.resolve();
        };
      }
      const failure =
        error instanceof ModbusExceptionError && !WRITE_REFUSALS.has(error.exception)
          ? new DeviceUnreachableError(
              `${error.message}: whether the write was applied is unknown`,
              { cause: error },
            )
          : asError(error);
      return () => {
        job.reject(failure);
      };
    }
  }

  /**
   * One request for the block; each job gets its own slice, exactly what it would have read
   * alone. Freshness (SPEC §6) holds for every job: a readback's `requestedAt` is taken before
   * its read is queued, and every job of a block was queued before the block's request is sent,
   * so the answer is at least as new as each job's `requestedAt` says: still conservative.
   */
  private async serveRead(block: ReadBlock): Promise<Delivery> {
    const combined = block.jobs.length > 1;
    let values: number[];
    try {
      values = await this.request(
        describeRead(block),
        (client) => readTable(client, block),
        block.jobs,
      );
    } catch (error) {
      if (combined && error instanceof ModbusExceptionError) {
        await this.uncombine(block, error.exception);
        return NOTHING;
      }
      // A lone read's refusal is its own; no answer (timeout, socket error) leaves every job
      // of the block with the same unknown, and the same error.
      return () => {
        for (const job of block.jobs) job.reject(asError(error));
      };
    }
    return () => {
      for (const job of block.jobs) {
        const slice = sliceFor(block, job, values);
        if (slice.length < job.length) {
          job.reject(
            new DeviceUnreachableError(
              `${this.name}: short answer to ${describeRead(block)} (${values.length})`,
            ),
          );
          continue;
        }
        this.served++;
        job.resolve(slice);
      }
    };
  }

  /**
   * The PLC refused a block read: some PLCs refuse a read across addresses they do not map,
   * although each read alone is fine. None of the jobs failed, so none fails: each job is read
   * on its own, in queue order, with its own outcome. An address refusal (0x02 illegal data
   * address, 0x03 illegal data value: the span) holds combining off for a while
   * (UNCOMBINED_FIRST_MS, doubled at each refusal after a try): a PLC in program mode refuses
   * what it serves once running, and combining stayed off until the daemon restarted, every
   * command paying a request per read. Trying again is as safe as the first block read was: a
   * refused block is read request by request, and nothing of it fails. Any other exception (a
   * busy or failing PLC) says nothing about the span, and the next block reads are combined
   * again.
   */
  private async uncombine(block: ReadBlock, exception: number): Promise<void> {
    if (this.combineGap !== null && this.uncombined === null && SPAN_REFUSALS.has(exception)) {
      const now = this.options.clock.elapsed();
      const last = this.lastHold;
      const holdMs =
        last === null || now - last.combiningSinceMono >= UNCOMBINED_MAX_MS
          ? UNCOMBINED_FIRST_MS
          : Math.min(last.holdMs * 2, UNCOMBINED_MAX_MS);
      this.uncombined = { untilMono: now + holdMs, holdMs };
      // The parent logger: this.log already binds `plc`, and the line names it once.
      this.options.logger.warn(
        {
          plc: this.name,
          table: block.table,
          start: block.start,
          length: block.length,
          exception: hex(exception),
          retryInMs: holdMs,
        },
        'PLC refused a combined read; reading each request on its own until a block read is tried again',
      );
    }
    for (const job of block.jobs) {
      if (this.closed || job.signal?.aborted === true) {
        job.reject(this.notServed(job));
        continue;
      }
      (await this.serveRead(aloneBlock(job)))();
    }
  }

  /**
   * Sends one request on the connection (connecting first if need be) and waits for its
   * answer. Every request passes here, combined or not: bench/probes.ts wraps this method to
   * time the wait in the queue and the round trip of each request, and `jobs` says which
   * queued jobs it serves.
   */
  private async request<T>(
    what: string,
    body: (client: ModbusRTU) => Promise<T>,
    jobs: readonly ModbusJob[],
  ): Promise<T> {
    // A write is a request of its own (reads are the ones served in blocks).
    const write = jobs.length === 1 && jobs[0]?.kind === 'write' ? jobs[0] : null;
    this.throwIfClosed(write, what);
    let client: ModbusRTU;
    if (this.client?.isOpen === true) {
      // Connected: the request goes out in this microtask, not after an await of its own.
      client = this.client;
    } else {
      try {
        client = await this.connected();
      } catch (error) {
        if (write === null) throw error;
        // No connection to send it on (the connect failed, or its backoff refused an attempt):
        // the write was never handed to a socket, so nothing of it left this process — its
        // outcome is known, unlike that of a request a socket took and then lost.
        throw (
          this.unsendable(write, what) ??
          (this.closed ? this.closedUnsent(what) : null) ??
          new WriteNotSentError(
            // The endpoint's own reason is for operators as it stands (no error class names).
            `${this.name}: ${what}: not sent: no connection to the PLC (${error instanceof DeviceUnreachableError ? error.message : describeError(error)}); nothing was written`,
            'no-connection',
          )
        );
      }
      // Closed while it connected: the request was not sent, and is not sent on a connection
      // the close is about to drop.
      this.throwIfClosed(write, what);
    }
    // A write whose time has passed while it waited (behind other requests, for a connection),
    // or withdrawn meanwhile, is not sent at all (I3): checked here, in the microtask that
    // would send it.
    const unsendable = write === null ? null : this.unsendable(write, what);
    if (unsendable !== null) throw unsendable;
    const socketClosed = new Promise<never>((_, reject) => {
      this.onSocketClosed = (reason) => {
        reject(new DeviceUnreachableError(`${this.name}: ${what}: ${reason}`));
      };
    });
    try {
      this.sent++;
      const sentMono = this.options.clock.elapsed();
      for (const job of jobs) {
        if (job.sent !== undefined && job.queuedMono !== undefined) {
          job.sent(Math.max(0, sentMono - job.queuedMono));
        }
      }
      const result = await withTimeout(
        Promise.race([body(client), socketClosed]),
        this.requestTimeoutMs,
        `${this.name}: ${what} timed out after ${this.requestTimeoutMs} ms`,
        transactionTimedOut,
      );
      this.health.ok(this.options.clock.now());
      this.proven();
      return result;
    } catch (error) {
      // A refused combined read is no job's failure (each is read again on its own): it is
      // not counted against the PLC's health.
      throw this.translate(error, what, jobs.length > 1);
    } finally {
      this.onSocketClosed = null;
      socketClosed.catch(() => undefined);
    }
  }

  /** Refuses a request once the endpoint is closed; a write is then known never sent. */
  private throwIfClosed(write: WriteJob | null, what: string): void {
    if (!this.closed) return;
    if (write === null) throw new DeviceUnreachableError(`${this.name}: endpoint closed`);
    throw this.unsendable(write, what) ?? this.closedUnsent(what);
  }

  /** Why `write` must not be sent now (past its deadline, withdrawn), or null. */
  private unsendable(write: WriteJob, what: string): WriteNotSentError | null {
    // The later of the two measures: a step of the wall clock back must not give a queued
    // write its time again, nor one forward a receipt-timed command's (it has no notAfter).
    const late = Math.max(
      write.notAfter === undefined ? -Infinity : this.options.clock.now() - write.notAfter,
      write.notAfterMono === undefined
        ? -Infinity
        : this.options.clock.elapsed() - write.notAfterMono,
    );
    if (late >= 0) {
      return new WriteNotSentError(
        `${this.name}: ${what}: not sent: its deadline passed ${Math.round(late)} ms ago while it waited for the PLC; nothing was written`,
        'deadline',
      );
    }
    return write.withdrawn?.aborted === true ? this.withdrawnError(what) : null;
  }

  private translate(error: unknown, what: string, combined: boolean): Error {
    const modbusCode = (error as { modbusCode?: unknown }).modbusCode;
    if (typeof modbusCode === 'number') {
      // An exception is an answer: the connection carries requests and responses.
      this.proven();
      const message = `${this.name}: ${what}: Modbus exception ${hex(modbusCode)} (${MODBUS_EXCEPTIONS[modbusCode] ?? 'unknown'})`;
      if (!combined) this.health.error(message);
      return new ModbusExceptionError(message, modbusCode, { cause: error });
    }
    // The endpoint's own errors (a timeout, a lost connection) already name the PLC and the
    // request; the library's are given them here.
    const message =
      error instanceof DeviceUnreachableError
        ? error.message
        : `${this.name}: ${what}: ${describeError(error)}`;
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
    // Monotonic (SPEC §6: durations): a gateway clock stepped back an hour after a failed
    // attempt would otherwise refuse every connect for that hour.
    const wait = this.backoff.remaining(this.options.clock.elapsed());
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
      this.backoff.failed(this.options.clock.elapsed());
      destroyQuietly(client);
      const message = `${this.name}: connect to ${this.options.host}:${this.options.port} failed: ${describeError(error)}`;
      this.health.error(message);
      this.health.disconnected();
      throw new DeviceUnreachableError(message, { cause: error });
    }
    const closed = (reason: string): void => {
      if (this.client === client) {
        this.client = null;
        this.lost();
        this.health.disconnected();
        this.onSocketClosed?.(reason);
      }
    };
    client.on('close', () => {
      closed('connection closed');
    });
    // modbus-serial relays an orderly close only: after a socket error (ECONNRESET: the PLC
    // restarted, its TCP stack reset the connection) its port swallows the close, and the
    // request in flight would wait for its timeout. The socket itself says it at once.
    let socketError: string | null = null;
    socketOf(client)
      ?.on('error', (error: unknown) => {
        socketError = describeError(error);
      })
      .on('close', () => {
        closed(socketError === null ? 'connection closed' : `connection lost: ${socketError}`);
      });
    // The backoff starts over once the PLC answers on this connection (proven), not here.
    // Connected for health once the PLC answers on it (proven): a TCP connect proves nothing,
    // a frozen PLC process's kernel completes it.
    this.answered = false;
    this.health.opened();
    this.client = client;
    this.log.info({ host: this.options.host, port: this.options.port }, 'modbus connected');
    return client;
  }

  /**
   * Resolves once a connection newer than `sinceEpoch` (HealthCounter's epoch: one per
   * connection opened) is open, or when `signal` aborts. Nothing connects here unless a request
   * asks, so while someone waits a connect is tried as soon as the backoff allows one — the
   * attempt the next request would make, at the moment it may — and again after each failure,
   * at the backoff's pace. A connection opened by a request meanwhile wakes it as well. For a
   * command whose write found no connection (the core's readUntil): it reads as the PLC
   * accepts again, not at its own next pause.
   */
  async whenConnected(sinceEpoch: number, signal: AbortSignal): Promise<void> {
    while (!signal.aborted && !this.closed) {
      if (this.health.snapshot().connectionEpoch > sinceEpoch) return;
      const wait =
        this.client?.isOpen === true ? null : this.backoff.remaining(this.options.clock.elapsed());
      if (wait === null || wait > 0) {
        // The connection of `sinceEpoch` still open (its PLC answered the request that failed,
        // or its request is still on its way): only another connection, opened by a request
        // after its loss, is news.
        const { clock } = this.options;
        await firstOf(signal, [
          (over) => this.health.changed(over),
          ...(wait === null ? [] : [(over: AbortSignal) => clock.sleep(wait, over)]),
        ]);
        continue;
      }
      try {
        await this.connected();
      } catch {
        // Refused or timed out: the connect counted its failure in the backoff (connect()).
      }
    }
    // A closed endpoint connects no more: no news until the waiter gives up. Returning at once
    // would end every pause of a caller that reads again after it (readUntil) at once: a loop
    // of failed reads on promises alone, the event loop never let through until its deadline.
    await firstOf(signal, []);
  }

  /** The PLC answered on the current connection: it works, the backoff starts over. */
  private proven(): void {
    if (this.answered) return;
    this.answered = true;
    this.health.answering();
    this.backoff.reset();
  }

  /** The current connection is gone; gone before any answer, it was a failed attempt. */
  private lost(): void {
    if (!this.answered) this.backoff.failed(this.options.clock.elapsed());
  }

  private drop(reason: string): void {
    const client = this.client;
    this.client = null;
    this.health.disconnected();
    if (client !== null) {
      this.lost();
      this.log.warn({ reason }, 'modbus connection dropped');
      destroyQuietly(client);
    }
  }
}

/** The TCP socket under a connected client (modbus-serial 8: its TcpPort's `_client`). */
function socketOf(client: ModbusRTU): Socket | null {
  const socket = (client as unknown as { _port?: { _client?: unknown } })._port?._client;
  return socket instanceof Socket ? socket : null;
}

/**
 * modbus-serial's own timeout of a request (client.setTimeout: the request timeout, armed as it
 * sends), which it rejects with as a plain object: `{ name: 'TransactionTimedOutError', message:
 * 'Timed out', errno: 'ETIMEDOUT' }`. Held by withTimeout until the request's whole time has
 * passed: its Node timer fires early now and then, as withTimeout's own did.
 */
function transactionTimedOut(error: unknown): boolean {
  return (
    typeof error === 'object' &&
    error !== null &&
    (error as { name?: unknown }).name === 'TransactionTimedOutError'
  );
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
        let queuedMs = 0;
        const image = await this.fetch([clockRequest], signal, (waitedMs) => {
          queuedMs = waitedMs;
        });
        const receivedAt = this.o.clock.now();
        return {
          controllerTime: this.decode(clockField, image),
          requestedAt,
          receivedAt,
          queuedMs,
        };
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
      sourceIsScan: status.time !== undefined,
      requestedAt,
      receivedAt,
    };
  }

  async write(command: CommandWrite, signal?: AbortSignal): Promise<void> {
    // One FC16 request: code, setpoint and sequence number reach the PLC together.
    const { start, values } = encodeCommand(this.o.profile, this.o.base, command);
    await this.o.endpoint.writeRegisters(start, values, signal, this.o.id, command);
  }

  health(): DeviceHealth {
    return this.o.endpoint.health.snapshot();
  }

  whenConnected(sinceEpoch: number, signal: AbortSignal): Promise<void> {
    return this.o.endpoint.whenConnected(sinceEpoch, signal);
  }

  private async fetch(
    requests: readonly ReadRequest[],
    signal?: AbortSignal,
    sent?: (waitedMs: number) => void,
  ): Promise<Image> {
    const image = new Image();
    for (const r of requests) {
      const values = await this.o.endpoint.read(
        r.table,
        r.start,
        r.length,
        signal,
        sent,
        this.o.id,
      );
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
