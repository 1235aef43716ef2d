import type { ServerResponse } from 'node:http';
import { Socket, type Server as NetServer } from 'node:net';
import { connectionOf, readTcpPeers } from './https-peer.js';

/**
 * Answers a client does not take: a connection of the HTTPS intake whose client sent requests
 * and does not read their answers is reset once it has taken nothing for the request timeout,
 * whether the answers wait in Node (boundAnswers) or in the kernel (boundUnreadInKernel).
 * Connection limits and the first request's bound are https-connections.ts's.
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
 * How soon it is asked once a connection that ended both ways waits for its client to take its
 * last bytes (keepUntilTaken), and then at twice the wait each time, up to RELEASE_CHECK_MAX_MS.
 */
export const RELEASE_CHECK_MS = 25;
const RELEASE_CHECK_MAX_MS = 1_000;

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
  const open = new Map<Socket, Watch>();
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
      resetConnection(socket);
      closed?.();
    }
  };
  server.on('secureConnection', (socket: Socket) => {
    const watch: Watch = { key: connectionOf(socket), stalledSince: null, release: null };
    open.set(socket, watch);
    keepUntilTaken(server, socket, watch, releases);
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

/** What boundUnreadInKernel knows of one connection. */
interface Watch {
  /** Its key in the kernel's table (https-peer.ts); null when it was not connected. */
  readonly key: string | null;
  /** Since when (performance.now()) the kernel has seen its client take nothing. */
  stalledSince: number | null;
  /** Set while its close waits for the kernel to have its bytes taken: closes it. */
  release: (() => void) | null;
}

/**
 * Closes each connection kept for its last bytes (keepUntilTaken) once its client has taken
 * them. A client that half-closed once its requests were sent (`nc -N`, socat, some embedded
 * clients) and reads its answers is done with the connection when it has them, as one that
 * closes is: the plant's next request on a new connection must not find its place (the
 * per-address bound, https.maxConnections) still taken. Left to boundUnreadInKernel's look
 * (every 5 s), such a connection was kept up to 5 s after its client's last byte: any answer
 * still on the wire when Node ended the connection (any client not on the gateway itself) made
 * it wait for that look.
 *
 * Each look reads the kernel's whole table (every connection of the namespace: https-peer.ts),
 * so how often it is read is bounded, whatever the clients do. The kernel is asked
 * RELEASE_CHECK_MS after a connection starts waiting (a client that reads has its bytes within a
 * few round trips), then at twice the wait each time, up to RELEASE_CHECK_MAX_MS; the wait starts
 * again at RELEASE_CHECK_MS only when another connection starts waiting, never because a client
 * took bytes: a client trickling its answer (a byte here and there, or a slow link) once kept
 * the table read every RELEASE_CHECK_MS, 40 times a second for as long as it trickled. A client
 * that takes its bytes at a pace that ends them before the wait would is looked at when they
 * should be gone: only when it took more since the last look than it has left, so each such
 * look needs what it has left to have halved, a few dozen at most for a whole send buffer. A
 * reader over a slow link is so let go within a round trip or two of its last byte, and any
 * other within the wait (at most RELEASE_CHECK_MAX_MS). Not at all while none waits; one read
 * of the table serves all the connections waiting. One whose client never takes its bytes is
 * reset by boundUnreadInKernel's bound, as before.
 */
function watchReleases(open: ReadonlyMap<Socket, Watch>): () => void {
  let timer: NodeJS.Timeout | null = null;
  let looking = false;
  let wait = RELEASE_CHECK_MS;
  /** A connection started waiting during a look: the wait starts again after it. */
  let restart = false;
  /** The bytes each waiting connection's client had not taken at the last look, and when. */
  const left = new WeakMap<Watch, { readonly bytes: number; readonly at: number }>();
  const waiting = (): boolean => [...open.values()].some((w) => w.release !== null);
  /**
   * Releases the waiting connections whose clients have taken everything; returns how soon
   * (ms) one of the others should have, at its pace, when that is sooner than the time since its
   * last look (it took more than it has left), or null.
   */
  const look = async (): Promise<number | null> => {
    const peers = await readTcpPeers();
    const now = performance.now();
    let soonest: number | null = null;
    for (const watch of open.values()) {
      if (watch.release === null) continue;
      // No table (not Linux): nothing to go by, nothing kept for it.
      const peer = peers === null || watch.key === null ? undefined : peers.get(watch.key);
      const bytes = peer?.unacknowledgedBytes ?? 0;
      if (bytes === 0) {
        watch.release();
        continue;
      }
      const before = left.get(watch);
      left.set(watch, { bytes, at: now });
      if (before === undefined || bytes >= before.bytes) continue;
      const since = now - before.at;
      const due = (bytes * since) / (before.bytes - bytes);
      if (due < since) soonest = Math.min(soonest ?? due, due);
    }
    return soonest;
  };
  const schedule = (delay: number): void => {
    if (timer !== null) clearTimeout(timer);
    timer = null;
    if (!waiting()) return;
    timer = setTimeout(() => {
      timer = null;
      looking = true;
      look()
        .catch(() => null)
        .then((soonest) => {
          looking = false;
          wait = restart ? RELEASE_CHECK_MS : Math.min(2 * wait, RELEASE_CHECK_MAX_MS);
          restart = false;
          schedule(soonest === null ? wait : Math.max(RELEASE_CHECK_MS, Math.min(wait, soonest)));
        })
        .catch(() => undefined);
    }, delay);
    timer.unref();
  };
  // A connection starts waiting: looked at soon, whatever the wait had grown to.
  return () => {
    wait = RELEASE_CHECK_MS;
    if (looking) restart = true;
    else schedule(wait);
  };
}

/**
 * Keeps the socket of a connection that ended both ways (its client half-closed, and every
 * answer it was owed handed to the kernel: https-owed.ts) open while the kernel still holds
 * bytes of it the client has not acknowledged. Node closes such a socket at once, and once
 * closed, the connection was no longer the daemon's to bound: the kernel kept it in LAST-ACK,
 * its unread answers queued, for as long as its orphan probes allow (minutes with a peer that
 * answers them), outside https.maxConnections and the per-address bound, and a client could
 * leave one behind each connection it opened, as fast as it opened them. Kept, it is counted
 * as open, and closed as before once the client has taken its bytes, or reset with them once it
 * has taken nothing for the bound (boundUnreadInKernel's check). A destroy with an error, a
 * reset, one before the connection ended both ways, and every destroy once the server no longer
 * listens (the intake stopping: its drain bound is the bound then) go through at once.
 */
function keepUntilTaken(
  server: NetServer,
  socket: Socket,
  watch: Watch,
  /** Has watchReleases look at the connections waiting for their clients. */
  waiting: () => void,
): void {
  const key = watch.key;
  if (key === null) return;
  const destroy = socket.destroy.bind(socket);
  const release = (): void => {
    watch.release = null;
    Reflect.deleteProperty(socket, 'destroy');
    destroy();
  };
  socket.destroy = (error?: Error): Socket => {
    if (error !== undefined || !server.listening || tcpOf(socket).destroyed) {
      watch.release = null;
      return destroy(error);
    }
    if (watch.release !== null) return socket;
    if (!socket.readableEnded || !socket.writableFinished || streamConnections.has(socket)) {
      return destroy();
    }
    watch.release = release;
    void readTcpPeers()
      .catch(() => null)
      .then((peers) => {
        if (watch.release === null) return;
        if ((peers?.get(key)?.unacknowledgedBytes ?? 0) === 0) release();
        else waiting();
      });
    return socket;
  };
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
  const tcp = tcpOf(socket);
  if (!tcp.destroyed) {
    try {
      tcp.resetAndDestroy();
    } catch {
      // Not a TCP handle (ERR_INVALID_HANDLE_TYPE): a close is all there is.
    }
  }
  socket.destroy();
}

/** The TCP socket under a TLS server's socket (its `_parent`: resetConnection), or itself. */
function tcpOf(socket: Socket): Socket {
  const under = (socket as Socket & { _parent?: unknown })._parent;
  return under instanceof Socket ? under : socket;
}
