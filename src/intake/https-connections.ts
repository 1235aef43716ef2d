import type { Server as HttpsServer } from 'node:https';
import type { Server as NetServer, Socket } from 'node:net';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';

/**
 * The connections the HTTPS intake holds. Node keeps a TLS connection that sends no request for
 * ever (its header and request timeouts start with a request's first byte, the keep-alive timeout
 * after an answer), and each costs the daemon tens of kilobytes: a scanner, or a client that opens
 * connections and never uses them, could hold enough to exhaust a gateway's memory; and one
 * client that opens a connection per request and never closes them could take every place. So:
 *
 * - at most `https.maxConnections` at a time, and at most `https.maxConnectionsPerAddress` from
 *   one client address: past either, a new connection is closed as soon as it is accepted (a
 *   counter counts them by reason, and one warning a minute per reason says how many were);
 * - a TLS handshake must complete within HANDSHAKE_TIMEOUT_MS (Node's own default is 120 s);
 * - a connection must bring its first request's headers within FIRST_REQUEST_TIMEOUT_MS of its
 *   handshake: closed when it sent nothing, answered 408 when a request had begun. After an
 *   answer, the keep-alive timeout closes an idle connection, as before;
 * - a client must take each answer within the request timeout of its last byte being handed to
 *   the connection, or its connection is reset; and the kernel may not hold what it does not
 *   take for longer either (https-unread.ts).
 */

/** A TLS handshake must complete within this. */
export const HANDSHAKE_TIMEOUT_MS = 10_000;
/**
 * A connection whose first request's headers have not all arrived within this after its
 * handshake is closed (answered 408 when the request had begun).
 */
export const FIRST_REQUEST_TIMEOUT_MS = 10_000;
/** At most one warning about refused connections in this long, per reason. */
const REFUSED_LOG_INTERVAL_MS = 60_000;

export type RefusalReason = 'max_connections' | 'per_address';

export interface ConnectionLimits {
  readonly maxConnections: number;
  readonly maxConnectionsPerAddress: number;
  /** FIRST_REQUEST_TIMEOUT_MS unless given. */
  readonly firstRequestTimeoutMs?: number;
  readonly logger: Logger;
  /** The warnings' minute is measured on its monotonic clock (`elapsed()`). */
  readonly clock: Clock;
  /** `sluice_https_connections_refused_total{reason}` */
  readonly refused: { inc(labels: { reason: RefusalReason }): void };
  /** `sluice_https_connections_idle_closed_total{stage}` (`first_request`, `answer_unread`) */
  readonly idleClosed: { inc(labels: { stage: 'first_request' | 'answer_unread' }): void };
}

export function limitConnections(server: HttpsServer, limits: ConnectionLimits): void {
  const warn = refusalWarnings(limits);
  // Past it, Node closes the connection itself when accepting it, and says so.
  server.maxConnections = limits.maxConnections;
  server.on('drop', (data?: { remoteAddress?: string }) => {
    warn('max_connections', data?.remoteAddress);
  });

  const perAddress = new Map<string, number>();
  server.on('connection', (socket: Socket) => {
    const address = socket.remoteAddress ?? 'unknown';
    const open = (perAddress.get(address) ?? 0) + 1;
    if (open > limits.maxConnectionsPerAddress) {
      warn('per_address', address);
      socket.destroy();
      return;
    }
    perAddress.set(address, open);
    socket.once('close', () => {
      const left = (perAddress.get(address) ?? 1) - 1;
      if (left > 0) perAddress.set(address, left);
      else perAddress.delete(address);
    });
  });

  requireFirstRequest(
    server,
    'secureConnection',
    limits.firstRequestTimeoutMs ?? FIRST_REQUEST_TIMEOUT_MS,
    () => {
      limits.idleClosed.inc({ stage: 'first_request' });
    },
  );
}

/** Node's own answer to a request past its timeout, for a server without a clientError listener. */
const REQUEST_TIMEOUT_RESPONSE = 'HTTP/1.1 408 Request Timeout\r\nConnection: close\r\n\r\n';

/**
 * Closes a connection that brings no request within `ms` of `event` (its accept, or its TLS
 * handshake). Node keeps one that never sends a request for ever: its header timeout starts
 * with a request's first byte. Used by the HTTPS intake and the daemon's admin endpoint.
 *
 * A connection whose first request has begun (bytes read, its headers not complete) is
 * answered 408, as Node answers a request past its headers timeout: cut silently, its client
 * could not tell a slow request from a crashed gateway, nor that a retry may succeed.
 * `closedIdle` is told of each connection closed having sent nothing (no answer to count it by).
 */
export function requireFirstRequest(
  server: NetServer,
  event: 'connection' | 'secureConnection',
  ms: number,
  closedIdle?: () => void,
): void {
  const awaitingRequest = new WeakMap<Socket, NodeJS.Timeout>();
  server.on(event, (socket: Socket) => {
    const timer = setTimeout(() => {
      // bytesRead counts what the HTTP parser was given: on a TLS socket, decrypted bytes
      // (the handshake's are not counted).
      if (socket.bytesRead === 0) {
        socket.destroy();
        closedIdle?.();
      } else if (!socket.writable) socket.destroy();
      else answerRequestTimeout(server, socket);
    }, ms);
    timer.unref();
    awaitingRequest.set(socket, timer);
    socket.once('close', () => {
      clearTimeout(timer);
    });
  });
  server.on('request', (request: { socket: Socket }) => {
    const timer = awaitingRequest.get(request.socket);
    if (timer === undefined) return;
    clearTimeout(timer);
    awaitingRequest.delete(request.socket);
  });
}

/**
 * Answers 408 on a connection whose request did not arrive in time, the way Node does at its
 * own request timeout: through the server's `clientError` listeners (the HTTPS intake's answers
 * a problem document, https-problems.ts), or, without one, Node's bare 408; then closes it.
 */
function answerRequestTimeout(server: NetServer, socket: Socket): void {
  const error = Object.assign(
    new Error('the request headers did not arrive within the first-request timeout'),
    { code: 'ERR_HTTP_REQUEST_TIMEOUT' },
  );
  if (server.emit('clientError', error, socket)) return;
  socket.end(REQUEST_TIMEOUT_RESPONSE);
  socket.destroySoon();
}

/** Counts a refusal, and warns at most once a minute per reason with how many there were. */
function refusalWarnings(
  limits: ConnectionLimits,
): (reason: RefusalReason, address: string | undefined) => void {
  const since = new Map<RefusalReason, { count: number; warnedAt: number }>();
  return (reason, address) => {
    limits.refused.inc({ reason });
    const state = since.get(reason) ?? { count: 0, warnedAt: -Infinity };
    state.count++;
    since.set(reason, state);
    // A duration (SPEC §6): on the wall clock, a gateway clock stepped back an hour would keep
    // every refusal quiet for that hour, and one stepped forward would let the next one warn.
    const now = limits.clock.elapsed();
    if (now - state.warnedAt < REFUSED_LOG_INTERVAL_MS) return;
    limits.logger.warn(
      {
        reason,
        refused: state.count,
        lastAddress: address,
        maxConnections: limits.maxConnections,
        maxConnectionsPerAddress: limits.maxConnectionsPerAddress,
      },
      reason === 'max_connections'
        ? 'HTTPS connections refused: https.maxConnections are open'
        : 'HTTPS connections refused: https.maxConnectionsPerAddress are open from one address',
    );
    state.count = 0;
    state.warnedAt = now;
  };
}
