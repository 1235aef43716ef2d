import {
  ServiceFault,
  StatusCodes,
  WriteRequest,
  WriteResponse,
  type ClientSession,
  type StatusCode,
  type WriteValueOptions,
} from 'node-opcua';
import { MAX_TIMER_MS } from '../core/clock.js';

/** A StatusCode's severity: its two top bits (Part 4, 7.39): 0 Good, 1 Uncertain, 2 and 3 Bad. */
function severity(status: StatusCode): 'good' | 'uncertain' | 'bad' {
  const bits = status.value >>> 30;
  return bits === 0 ? 'good' : bits === 1 ? 'uncertain' : 'bad';
}

/**
 * Bad statuses that do not say the write was not carried out: a server answers the first ones
 * when it could not learn what became of a write it passed on to its field device (a gateway in
 * front of a fieldbus, a device that did not answer in time), and the resource ones ("an
 * operating system resource is not available", "not enough memory to complete the operation")
 * do not say at which point the resource ran out. The device may have taken it. Other Bad
 * statuses say the value was not written.
 */
const UNKNOWN_OUTCOME = new Set<number>([
  StatusCodes.BadTimeout.value,
  StatusCodes.BadCommunicationError.value,
  StatusCodes.BadWaitingForResponse.value,
  StatusCodes.BadRequestTimeout.value,
  StatusCodes.BadResourceUnavailable.value,
  StatusCodes.BadOutOfMemory.value,
]);

/**
 * Statuses that say the server is busy and did not process the request: "the Server does not
 * have the resources to process the request at this time" (BadServerTooBusy, and the transport's
 * BadTcpServerTooBusy, "cannot process the request because it is too busy"). A write so answered
 * was not applied; it is sent again, the same write, while its command's deadline allows
 * (DeviceRefusedError `busy`: src/core/busy-write.ts), as a Modbus write answered 0x06 is.
 */
export const BUSY = new Set<number>([
  StatusCodes.BadServerTooBusy.value,
  StatusCodes.BadTcpServerTooBusy.value,
]);

/**
 * The Write Service's own service results (OPC 10000-4 Table 54): the request was not processed
 * (too many operations for the server's limits, or none), so nothing was written; sending the
 * same request again would be refused the same way. Any other ServiceFault to a write leaves
 * its outcome unknown, except BUSY.
 */
export const WRITE_NOT_PROCESSED = new Set<number>([
  StatusCodes.BadTooManyOperations.value,
  StatusCodes.BadNothingToDo.value,
]);

export interface WriteFault {
  /**
   * `refused`: not applied; `busy`: not applied, the server busy (sent again); `unknown`: the
   * controller may have taken it.
   */
  readonly kind: 'refused' | 'busy' | 'unknown';
  readonly message: string;
}

/**
 * The service result of a request the server answered with a ServiceFault (OPC 10000-4 §5.3:
 * "the Service itself failed"), which node-opcua hands over as an error carrying the fault.
 */
export class ServiceResultError extends Error {
  constructor(
    readonly status: StatusCode,
    cause: Error,
  ) {
    super(`the server answered the Write with a ServiceFault: ${status.name}`, { cause });
  }
}

/**
 * What the statuses of the trigger's Write say of the command (null: taken). A Good status with
 * a subcode (GoodCompletesAsynchronously, GoodClamped) is a write the server took; an Uncertain
 * one, or a Bad one of UNKNOWN_OUTCOME, does not say whether it took it, which only a readback
 * can tell; a BUSY one is a write not processed, to be sent again; any other Bad status is a
 * refusal. The server answers each node of the request on its own: a request is refused, or
 * busy, only when none of its nodes may have been written. One answered Good, Uncertain or with
 * an unknown outcome beside a refused or busy one leaves the command's outcome unknown: the
 * controller may have taken what was written, and sent again it would take it twice (I1).
 */
export function triggerOutcome(results: readonly StatusCode[]): WriteFault | null {
  // Refused or busy: a Bad status that says the value was not written.
  const notWritten = (s: StatusCode): boolean =>
    severity(s) === 'bad' && !UNKNOWN_OUTCOME.has(s.value);
  const refusedOrBusy = results.find(notWritten);
  if (refusedOrBusy === undefined) {
    const unknown = results.find((s) => severity(s) !== 'good');
    return unknown === undefined
      ? null
      : {
          kind: 'unknown',
          message: `${unknown.name}: the controller may have taken it (outcome unknown)`,
        };
  }
  // Written, or perhaps written: Good, Uncertain, or a Bad one of UNKNOWN_OUTCOME.
  const written = results.find((s) => !notWritten(s));
  if (written !== undefined) {
    return {
      kind: 'unknown',
      message: `${refusedOrBusy.name} to a node of the request, ${written.name} to another: the controller may have taken what was written (outcome unknown)`,
    };
  }
  const refused = results.find((s) => !BUSY.has(s.value));
  return refused !== undefined
    ? { kind: 'refused', message: refused.name }
    : {
        kind: 'busy',
        message: `${refusedOrBusy.name}: the server did not process it; nothing was applied`,
      };
}

/**
 * A request of a command's write sent before its trigger (what the trigger needs in place),
 * as its outcome's messages name it and the trigger: "the code and setpoint" before "the
 * sequence number", "the setpoint" before "the code".
 */
export interface Preparation {
  /** What the request writes. */
  readonly writes: string;
  /** Whether that is more than one value ("were", not "was"). */
  readonly plural: boolean;
  /** What the trigger writes. */
  readonly trigger: string;
}

/**
 * The values of a preparation (what the trigger needs) must be in place, as written, before the
 * trigger goes out: anything but plain Good (a clamped setpoint, a write still completing, an
 * unknown outcome) and the trigger is not sent, so the controller takes nothing.
 */
export function preparationOutcome(
  results: readonly StatusCode[],
  preparation: Preparation,
): WriteFault | null {
  const statuses = results.filter((s) => s.value !== StatusCodes.Good.value);
  const status = statuses.find((s) => !BUSY.has(s.value)) ?? statuses[0];
  return status === undefined
    ? null
    : {
        // Only busy answers: the whole write is sent again, the preparation first.
        kind: BUSY.has(status.value) ? 'busy' : 'refused',
        message: `${status.name} to ${preparation.writes}; the trigger (${preparation.trigger}) was not sent, the controller takes nothing`,
      };
}

/**
 * The session's one-shot transaction (ClientSessionImpl, node-opcua 2.182.2, pinned): sends the
 * request at once on the session's secure channel, or fails at once when the channel is not
 * open; never holds it, never sends it again. An internal member, not documented API.
 */
export interface OneShotSession {
  isChannelValid(): boolean;
  _performMessageTransaction(
    request: WriteRequest,
    callback: (err: Error | null, response?: unknown) => void,
  ): void;
}

/**
 * Sends a Write request once. ClientSession.write sends a request again by itself: one the
 * server answered BadSessionIdInvalid (it lost the session: timed out on its side, restarted
 * its session layer), once it has made a new session, and one handed to it while it repairs
 * the session or reconnects, once that is done (ClientSessionImpl #reprocessRequest,
 * #_recreate_session_and_reperform_transaction, flushPendingTransactions). The repair retries
 * every 2 s for as long as the server refuses a new session, so that write would reach the
 * controller seconds or minutes after the driver gave up on it (its request timeout), past
 * its deadline (I3), and after the core may have proven it not applied and sent it again
 * (I1). A command's request must reach the controller when the driver sends it, or never.
 * `timeoutHintMs`: the request header's timeoutHint (transactionTimeoutMs).
 */
export function writeOnce(
  session: ClientSession,
  values: WriteValueOptions[],
  timeoutHintMs: number,
): Promise<StatusCode[]> {
  const oneShot = session as unknown as OneShotSession;
  // timeoutHint: how long node-opcua waits for the answer (never less than its
  // minTransactionTimeout, 5 s), and what the server is told it may drop the request after.
  const request = new WriteRequest({
    requestHeader: { timeoutHint: timeoutHintMs },
    nodesToWrite: values,
  });
  return new Promise((resolve, reject) => {
    oneShot._performMessageTransaction(request, (err, r) => {
      if (err !== null) {
        // A ServiceFault: node-opcua puts it on the error (`response`), or passes a response
        // whose service result is Bad.
        const fault = (err as { response?: unknown }).response ?? r;
        const status =
          fault instanceof ServiceFault || fault instanceof WriteResponse
            ? fault.responseHeader.serviceResult
            : undefined;
        reject(
          status !== undefined && status.isNot(StatusCodes.Good)
            ? new ServiceResultError(status, err)
            : err,
        );
      } else if (!(r instanceof WriteResponse) || (r.results ?? []).length !== values.length) {
        reject(new Error('the server answered the Write with something else than its results'));
      } else {
        resolve(r.results ?? []);
      }
    });
  });
}

/**
 * How long node-opcua waits for an answer: longer than the PLC's request timeout, so that the
 * driver's own timeout (requestTimeoutMs) is the one that ends a request. The library ends every
 * request at its own transaction timeout (15 s unless told, never under 5 s): a requestTimeoutMs
 * above it had a write's outcome become unknown at the library's time, and the redispatch guard,
 * which the configuration check bounds against requestTimeoutMs, counted from there; an answer
 * due within requestTimeoutMs was given up. The margin lets the driver's timer, set just after
 * the library's, fire first. Never shorter than the library's default (`floorMs`), which also
 * bounds the session's own requests (CreateSession, ActivateSession, its keep-alive reads).
 */
export function transactionTimeoutMs(requestTimeoutMs: number, floorMs = 0): number {
  return Math.min(MAX_TIMER_MS, Math.max(floorMs, requestTimeoutMs + TRANSACTION_MARGIN_MS));
}

/** How much longer than the request timeout node-opcua waits (transactionTimeoutMs). */
export const TRANSACTION_MARGIN_MS = 250;
