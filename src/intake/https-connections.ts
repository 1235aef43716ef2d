import type { ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import { Socket, type Server as NetServer } from 'node:net';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { connectionOf, readTcpPeers } from './https-peer.js';

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
 *   the connection (boundAnswers), or its connection is reset; and the kernel may not hold what
 *   it does not take for longer either (boundUnreadInKernel).
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

/**
 * Closes a connection whose client does not take an answer: once the whole answer is handed to
 * the connection ('prefinish'), it must be written out ('finish': taken by the kernel) within
 * `ms`. Node bounds the request coming in (its headers and request timeouts) and an idle
 * connection (keep-alive), not an answer going out: a client that sent requests and never read
 * — shrinking its TCP window to zero, half-closed or not — held its connection and the answers
 * in the socket buffers (megabytes each, up to https.maxConnections of them) for as long as it
 * kept it, since its keep-alive timeout starts only once an answer is written out.
 * Streams that never end (the status page's events, ui-events.ts, which hold back what a
 * client does not read) are not bounded here. `closed` is told of each connection closed so.
 *
 * The bound is on progress, not time: an answer still going out at `ms` whose client the kernel
 * sees taking bytes — acknowledging them, its receive window open (https-peer.ts) — is given
 * another `ms`. A large answer over a slow radio link (a devices list of a big plant at a few
 * kilobytes a second) took longer than the bound while every byte of it moved, and was cut,
 * its client left to retry into the same cut. Where the kernel says nothing (not Linux), the
 * bound is on time, as before.
 *
 * The connection is reset (resetConnection), not closed: closed, the answers the client did not
 * read stayed in the kernel's send buffer behind the FIN, the connection in FIN-WAIT-1 (LAST-ACK
 * when the client had half-closed) for as long as the kernel probes a window that never opens —
 * minutes, the memory the bound is there to free still held.
 */
export function boundAnswers(server: NetServer, ms: number, closed?: () => void): void {
  server.on('request', (request: { socket: Socket }, response: ServerResponse) => {
    response.once('prefinish', () => {
      if (response.writableFinished) return;
      const socket = request.socket;
      const done = (): boolean => response.writableFinished || socket.destroyed;
      let timer: NodeJS.Timeout | undefined;
      const expire = (): void => {
        if (done()) return;
        void takingBytes(socket).then((taking) => {
          if (done()) return;
          if (taking) {
            arm();
            return;
          }
          resetConnection(socket);
          closed?.();
        });
      };
      const arm = (): void => {
        timer = setTimeout(expire, ms);
        timer.unref();
      };
      arm();
      // 'close' follows the finish, or the connection's end before it.
      response.once('close', () => {
        clearTimeout(timer);
      });
    });
  });
}

/**
 * Whether the kernel sees the connection's client taking bytes now: nothing waits for it, or it
 * acknowledges what is sent with its receive window open. False where the kernel says nothing.
 */
async function takingBytes(socket: Socket): Promise<boolean> {
  const key = connectionOf(socket);
  if (key === null) return false;
  const peer = (await readTcpPeers())?.get(key);
  return peer !== undefined && !peer.windowClosed && !peer.silent;
}

/** How often the kernel is asked about the connections' peers (boundUnreadInKernel). */
const KERNEL_CHECK_MS = 5_000;

/**
 * Connections that carry a stream without end (the status page's events, ui-events.ts), which
 * bounds what a client that does not read costs it on its own: boundUnreadInKernel leaves them.
 */
const streamConnections = new WeakSet<Socket>();

/** Leaves `socket` to the stream it carries (ui-events.ts): see streamConnections. */
export function carriesStream(socket: Socket): void {
  streamConnections.add(socket);
}

/**
 * Resets a connection whose client has read nothing for `ms` while the kernel holds answers for
 * it: bytes wait for an acknowledgement and its receive window stays closed (or it answers
 * nothing at all), at every look (https-peer.ts). boundAnswers sees only what Node holds: an
 * answer the kernel took is written out for Node, however long it then waits in the kernel's
 * send buffer (hundreds of kilobytes on a connection whose client never read, more with a
 * window that had grown). A client that sent requests and never read, its answers fitting in
 * the kernel's buffers, kept its connection for as long as it sent a request now and then (each
 * restarts the keep-alive timeout), and once that timeout closed it, the kernel kept it and its
 * answers behind the FIN for minutes, probing a window that never opens. A client that reads,
 * however slowly, opens its window: it is left alone. Linux only (/proc/net/tcp); elsewhere
 * boundAnswers and the keep-alive timeout are all there is. `closed` is told of each connection
 * reset so.
 */
export function boundUnreadInKernel(server: NetServer, ms: number, closed?: () => void): void {
  const open = new Map<Socket, { key: string | null; stalledSince: number | null }>();
  let timer: NodeJS.Timeout | null = null;
  let checking = false;
  const check = async (): Promise<void> => {
    const peers = await readTcpPeers();
    if (peers === null) return;
    const now = performance.now();
    for (const [socket, watch] of open) {
      if (streamConnections.has(socket) || socket.destroyed) continue;
      const peer = watch.key === null ? undefined : peers.get(watch.key);
      if (peer === undefined || !(peer.windowClosed || peer.silent)) {
        watch.stalledSince = null;
        continue;
      }
      watch.stalledSince ??= now;
      if (now - watch.stalledSince < ms) continue;
      open.delete(socket);
      resetConnection(socket);
      closed?.();
    }
  };
  server.on('secureConnection', (socket: Socket) => {
    open.set(socket, { key: connectionOf(socket), stalledSince: null });
    socket.once('close', () => {
      open.delete(socket);
      if (open.size > 0 || timer === null) return;
      clearInterval(timer);
      timer = null;
    });
    if (timer !== null) return;
    timer = setInterval(
      () => {
        if (checking) return;
        checking = true;
        check()
          .catch(() => undefined)
          .finally(() => {
            checking = false;
          });
      },
      Math.min(KERNEL_CHECK_MS, ms / 2),
    );
    timer.unref();
  });
}

/**
 * Ends a connection with a TCP reset (RST): the kernel drops what is still queued to send and
 * forgets the connection at once, where a close (FIN) keeps it, and the unsent bytes, until the
 * peer has taken them. Node resets a TCP socket (`resetAndDestroy`, SO_LINGER 0) but refuses a
 * TLS socket, whose handle is the TLS layer (ERR_INVALID_HANDLE_TYPE; nodejs/node#49484). A TLS
 * server's socket wraps the TCP socket it accepted, which Node keeps as its `_parent`
 * (lib/_tls_wrap.js, undeclared in its types): that one is reset, and the TLS socket then
 * destroyed, which Node completes at once for a TLS socket whose TCP socket is already closed
 * (TLSWrap.close). A socket with no TCP socket under it (a pipe) is only destroyed.
 */
export function resetConnection(socket: Socket): void {
  const under = (socket as Socket & { _parent?: unknown })._parent;
  const tcp = under instanceof Socket ? under : socket;
  if (!tcp.destroyed) {
    try {
      tcp.resetAndDestroy();
    } catch {
      // Not a TCP handle (ERR_INVALID_HANDLE_TYPE): a close is all there is.
    }
  }
  socket.destroy();
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
