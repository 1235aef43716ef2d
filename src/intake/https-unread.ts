import type { ServerResponse } from 'node:http';
import type { Server as NetServer, Socket } from 'node:net';
import { keepUntilTaken, watchReleases, type ConnectionWatch } from './https-half-closed.js';
import { connectionOf, readTcpPeers } from './https-peer.js';
import { resetConnection } from './https-reset.js';

/**
 * Answers a client does not take: a connection of the HTTPS intake whose client sent requests
 * and does not read their answers is reset once it has taken nothing for the request timeout,
 * whether the answers wait in Node (boundAnswers) or in the kernel (boundUnreadInKernel), which
 * also keeps a half-closed connection until its client has taken its last bytes
 * (https-half-closed.ts). Connection limits and the first request's bound are
 * https-connections.ts's; the reset itself is https-reset.ts's.
 */
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
          // Gone meanwhile (its client reset it, and Node has not yet seen it): neither reset
          // nor counted (resetConnection).
          if (resetConnection(socket)) closed?.();
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

/** How often the kernel is asked about the connections' peers at most (boundUnreadInKernel). */
const KERNEL_CHECK_MS = 5_000;

/**
 * How often boundUnreadInKernel asks the kernel about the connections' peers under the bound
 * `ms`: a connection whose client takes nothing is reset within `ms` and two of these after its
 * window closed (the look that sees it stalled, then the first look `ms` after that one).
 */
export function kernelCheckMs(ms: number): number {
  return Math.min(KERNEL_CHECK_MS, ms / 2);
}

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
  const open = new Map<Socket, ConnectionWatch>();
  let timer: NodeJS.Timeout | null = null;
  let checking = false;
  const releases = watchReleases(open);
  const check = async (): Promise<void> => {
    const peers = await readTcpPeers();
    if (peers === null) return;
    const now = performance.now();
    for (const [socket, watch] of open) {
      if (streamConnections.has(socket) || socket.destroyed) continue;
      const peer = watch.key === null ? undefined : peers.get(watch.key);
      if (watch.release !== null && (peer?.unacknowledgedBytes ?? 0) === 0) {
        watch.release();
        continue;
      }
      if (peer === undefined || !(peer.windowClosed || peer.silent)) {
        watch.stalledSince = null;
        continue;
      }
      watch.stalledSince ??= now;
      if (now - watch.stalledSince < ms) continue;
      open.delete(socket);
      if (resetConnection(socket)) closed?.();
    }
  };
  server.on('secureConnection', (socket: Socket) => {
    const watch: ConnectionWatch = { key: connectionOf(socket), stalledSince: null, release: null };
    open.set(socket, watch);
    keepUntilTaken(server, socket, watch, releases, (s) => streamConnections.has(s));
    socket.once('close', () => {
      open.delete(socket);
      if (open.size > 0 || timer === null) return;
      clearInterval(timer);
      timer = null;
    });
    if (timer !== null) return;
    timer = setInterval(() => {
      if (checking) return;
      checking = true;
      check()
        .catch(() => undefined)
        .finally(() => {
          checking = false;
        });
    }, kernelCheckMs(ms));
    timer.unref();
  });
}
