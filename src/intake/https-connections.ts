import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';
import type { Logger } from '../core/logger.js';

/**
 * Connections the HTTPS intake holds before any request. Node keeps a TLS connection that sends
 * no request for ever (its header and request timeouts start with a request's first byte, the
 * keep-alive timeout after an answer), and each costs the daemon tens of kilobytes: a scanner, or
 * a client that opens connections and never uses them, could hold enough to exhaust a gateway's
 * memory. So:
 *
 * - at most `https.maxConnections` at a time: past it, a new connection is closed as soon as it is
 *   accepted (one warning a minute says how many were, and a counter counts them);
 * - a TLS handshake must complete within HANDSHAKE_TIMEOUT_MS (Node's own default is 120 s);
 * - a connection must bring its first request within FIRST_REQUEST_TIMEOUT_MS of its handshake.
 *   After an answer, the keep-alive timeout closes an idle connection, as before.
 */

/** A TLS handshake must complete within this. */
export const HANDSHAKE_TIMEOUT_MS = 10_000;
/** A connection that brings no request within this after its handshake is closed. */
export const FIRST_REQUEST_TIMEOUT_MS = 10_000;
/** At most one warning about refused connections in this long. */
const REFUSED_LOG_INTERVAL_MS = 60_000;

export interface ConnectionLimits {
  readonly maxConnections: number;
  readonly logger: Logger;
  /** `sluice_https_connections_refused_total` */
  readonly refused: { inc(): void };
  /** FIRST_REQUEST_TIMEOUT_MS unless given (tests). */
  readonly firstRequestTimeoutMs?: number;
}

export function limitConnections(server: HttpsServer, limits: ConnectionLimits): void {
  server.maxConnections = limits.maxConnections;
  let refusedSinceWarning = 0;
  let warnedAt = -Infinity;
  server.on('drop', () => {
    limits.refused.inc();
    refusedSinceWarning++;
    const now = Date.now();
    if (now - warnedAt < REFUSED_LOG_INTERVAL_MS) return;
    limits.logger.warn(
      { maxConnections: limits.maxConnections, refused: refusedSinceWarning },
      'HTTPS connections refused: https.maxConnections are open',
    );
    refusedSinceWarning = 0;
    warnedAt = now;
  });
  const timeoutMs = limits.firstRequestTimeoutMs ?? FIRST_REQUEST_TIMEOUT_MS;
  const awaitingRequest = new WeakMap<Socket, NodeJS.Timeout>();
  server.on('secureConnection', (socket: Socket) => {
    const timer = setTimeout(() => socket.destroy(), timeoutMs);
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
