import type { Server as NetServer, Socket } from 'node:net';
import { readTcpPeers } from './https-peer.js';
import { tcpOf } from './https-reset.js';

/**
 * Half-closed connections kept for their last bytes: a connection whose client half-closed and
 * whose answers are all handed to the kernel stays open, and counted among the connections,
 * while the kernel holds bytes of it the client has not acknowledged (keepUntilTaken), and is
 * closed once the client has taken them (watchReleases). The bound on one whose client never
 * takes them is boundUnreadInKernel's (https-unread.ts), which composes the two.
 */

/**
 * How soon the kernel is asked once a connection that ended both ways waits for its client to take its
 * last bytes (keepUntilTaken), and then at twice the wait each time, up to RELEASE_CHECK_MAX_MS.
 */
export const RELEASE_CHECK_MS = 25;
const RELEASE_CHECK_MAX_MS = 1_000;

/** What boundUnreadInKernel knows of one connection (https-unread.ts). */
export interface ConnectionWatch {
  /** Its key in the kernel's table (https-peer.ts); null when it was not connected. */
  readonly key: string | null;
  /** Since when (performance.now()) the kernel has seen its client take nothing. */
  stalledSince: number | null;
  /** Set while its close waits for the kernel to have its bytes taken (keepUntilTaken): closes it. */
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
export function watchReleases(open: ReadonlyMap<Socket, ConnectionWatch>): () => void {
  let timer: NodeJS.Timeout | null = null;
  let looking = false;
  let wait = RELEASE_CHECK_MS;
  /** A connection started waiting during a look: the wait starts again after it. */
  let restart = false;
  /** The bytes each waiting connection's client had not taken at the last look, and when. */
  const left = new WeakMap<ConnectionWatch, { readonly bytes: number; readonly at: number }>();
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
export function keepUntilTaken(
  server: NetServer,
  socket: Socket,
  watch: ConnectionWatch,
  /** Has watchReleases look at the connections waiting for their clients. */
  waiting: () => void,
  /** It carries a stream without end (https-unread.ts carriesStream): never kept. */
  carriesStream: (socket: Socket) => boolean,
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
    if (!socket.readableEnded || !socket.writableFinished || carriesStream(socket)) {
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
