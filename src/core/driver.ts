import type { Action } from './command.js';
import { SluiceError } from './errors.js';

/**
 * The driver port: how the core reaches one device on a controller. Modbus TCP and OPC UA
 * adapters implement it outside the core; tests may use an in-memory controller double.
 */

/** One read of a device's status, as the controller reported it. */
export interface Readback {
  /** State name from the device profile (drivers translate controller codes). */
  readonly state: string;
  /** Position in percent, when the device reports one. */
  readonly position: number | null;
  /** The sequence number of the last command the controller took (accepted or rejected). */
  readonly seq: number | null;
  /** Controller fault register; null when clear. */
  readonly faultCode: number | null;
  /**
   * Controller time (epoch ms, controller clock) at which these values were produced: the
   * newest source timestamp (OPC UA) or the scan time stored with the status block (Modbus).
   */
  readonly sourceTime: number | null;
  /**
   * True when `sourceTime` is the time of the scan that published the image, which advances
   * at every scan also when no value changed (a Modbus status block's scan time, an OPC UA
   * controller's `ScanTime`); absent or false when it is only the last change (OPC UA
   * SourceTimestamps), which cannot tell an idle device's image from a frozen one.
   */
  readonly sourceIsScan?: boolean;
  /** Gateway time when the read request was sent. */
  readonly requestedAt: number;
  /** Gateway time when the answer arrived. */
  readonly receivedAt: number;
}

export interface CommandWrite {
  readonly action: Action;
  /** Setpoint in percent for `move`, otherwise null. */
  readonly position: number | null;
  /** 16-bit command sequence number, 1..65535; the controller echoes it. */
  readonly seq: number;
  /**
   * Wall-clock ms (the command's deadline), for a command timed by its issuer's issuedAt: a
   * write not yet sent by then — still queued behind other requests to its controller, or
   * waiting for a connection — is not sent at all and rejects with WriteNotSentError (I3). A
   * step of the gateway's clock forward ages such a command, so it is judged on the wall clock
   * too. Absent: no wall-clock bound (a command timed by its receipt: a step must not age it).
   */
  readonly notAfter?: number;
  /**
   * Monotonic ms left before the command's deadline, counted from the moment `write` is called:
   * a write not yet sent once that much has passed on the monotonic clock is not sent at all,
   * as for `notAfter` (I3). A step of the gateway's clock back while the write waits does not
   * give it that time again. Absent: no such bound.
   */
  readonly timeLeftMs?: number;
  /**
   * Aborted when the write is no longer wanted: a stop preempted its command, an operator
   * resolved it, the daemon is stopping. A write not yet sent by then — still queued behind
   * other requests to its controller, or waiting for a connection — is not sent at all and
   * rejects with WriteNotSentError; one already on its way completes, so that its fate is
   * known. Absent: the write is never withdrawn.
   */
  readonly withdrawn?: AbortSignal;
}

/** A reading of the controller's clock, bracketed by gateway times (SPEC §6). */
export interface ClockSample {
  readonly controllerTime: number;
  readonly requestedAt: number;
  readonly receivedAt: number;
  /**
   * How long the request waited inside the driver (a queue shared with the controller's other
   * devices) before it was sent, in monotonic ms; absent when the driver sends at once. The
   * controller cannot have read its clock during that wait, so the skew's bracket starts after
   * it: an estimate measured while the connection is busy stays as tight as one measured idle.
   */
  readonly queuedMs?: number;
}

export interface DeviceHealth {
  readonly connected: boolean;
  readonly lastGoodReadAt: number | null;
  readonly errorCount: number;
  readonly lastError: string | null;
  /**
   * Counts the connections (sessions) made to the controller. A change means a reconnect: the
   * controller may have restarted and stepped its clock, so a skew estimate taken on an
   * earlier connection is void (SPEC §6).
   */
  readonly connectionEpoch: number;
}

export interface DeviceDriver {
  read(signal?: AbortSignal): Promise<Readback>;
  /**
   * Sends one command write. Resolves when the controller acknowledged the write (which is
   * never success: I2). Rejects with DeviceRefusedError when the controller answered that it
   * did not apply it, WriteNotSentError when nothing of it left the process, or
   * DeviceUnreachableError when the outcome is unknown.
   */
  write(command: CommandWrite, signal?: AbortSignal): Promise<void>;
  /**
   * Reads the controller's live clock; absent when the device exposes none (then no skew is
   * measured, a readback carries no source time, and freshness rests on read order alone).
   */
  readonly readClock?: (signal?: AbortSignal) => Promise<ClockSample>;
  health(): DeviceHealth;
  /**
   * Resolves once the driver has a connection (session) to the controller newer than
   * `sinceEpoch` (DeviceHealth.connectionEpoch), or when `signal` aborts; never rejects. A driver
   * that connects only when a request asks (Modbus) tries to connect meanwhile as often as its
   * own backoff allows. For a command waiting for its controller (a write refused for want of a
   * connection): woken as the connection comes back, not at its next read's pause. A closed
   * driver has none to come: it resolves only when `signal` aborts. Absent: the core reads at
   * its own pace.
   */
  readonly whenConnected?: (sinceEpoch: number, signal: AbortSignal) => Promise<void>;
}

/** Transport failure: no answer. For a write, whether it reached the controller is unknown. */
export class DeviceUnreachableError extends SluiceError {
  constructor(message: string, options?: ErrorOptions) {
    super('DEVICE_UNREACHABLE', message, options);
  }
}

/**
 * The write was never sent: nothing of it reached the controller (its `notAfter` passed, or it
 * was withdrawn, before it could go out; or there was no connection to send it on). Unlike
 * DeviceUnreachableError, its outcome is known: not applied.
 */
export class WriteNotSentError extends SluiceError {
  /**
   * `deadline`: CommandWrite.notAfter passed; `withdrawn`: CommandWrite.withdrawn aborted;
   * `no-connection`: no connection (session) to the controller could be had for it — the
   * connect failed or its backoff refused it — so it was never handed to a socket; the core
   * waits for the connection and goes round again (a fresh read, then the write) while the
   * command's deadline allows. `closed`: the driver was closed (the daemon stops it) before it
   * was sent, and sends nothing more. A request written to a socket that then failed is
   * neither: the controller may have received it (DeviceUnreachableError).
   */
  readonly reason: WriteNotSentReason;

  constructor(message: string, reason: WriteNotSentReason) {
    super('WRITE_NOT_SENT', message);
    this.reason = reason;
  }
}

export type WriteNotSentReason = 'deadline' | 'withdrawn' | 'no-connection' | 'closed';

/** The controller answered and refused the request (Modbus exception, OPC UA Bad status). */
export class DeviceRefusedError extends SluiceError {
  /**
   * The controller said it is busy and did not process the request, to be sent again later
   * (Modbus exception 0x06 server device busy): a write so refused is sent again, the same
   * write, while its command's deadline allows (busy-write.ts); a read is read again.
   */
  readonly busy: boolean;

  constructor(message: string, options?: ErrorOptions & { readonly busy?: boolean }) {
    super('DEVICE_REFUSED', message, options);
    this.busy = options?.busy ?? false;
  }
}
