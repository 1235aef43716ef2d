import { Socket } from 'node:net';

/**
 * Ends a connection with a TCP reset (RST): the kernel drops what is still queued to send and
 * forgets the connection at once, where a close (FIN) keeps it, and the unsent bytes, until the
 * peer has taken them. Node resets a TCP socket (`resetAndDestroy`, SO_LINGER 0) but refuses a
 * TLS socket, whose handle is the TLS layer (ERR_INVALID_HANDLE_TYPE; nodejs/node#49484). A TLS
 * server's socket wraps the TCP socket it accepted, which Node keeps as its `_parent`
 * (lib/_tls_wrap.js, undeclared in its types): that one is reset, and the TLS socket then
 * destroyed, which Node completes at once for a TLS socket whose TCP socket is already closed
 * (TLSWrap.close). A socket with no TCP socket under it (a pipe) is only destroyed. A
 * connection already gone (connectionGone) is not reset, only its socket destroyed: returns
 * whether it reset one, which is what a caller counts.
 */
export function resetConnection(socket: Socket): boolean {
  if (connectionGone(socket)) {
    socket.destroy();
    return false;
  }
  const tcp = tcpOf(socket);
  try {
    tcp.resetAndDestroy();
  } catch {
    // Not a TCP handle (ERR_INVALID_HANDLE_TYPE): a close is all there is.
  }
  socket.destroy();
  return true;
}

/**
 * Whether the connection is gone already: Node has destroyed its socket (or the TCP socket
 * under it), or the kernel no longer has it connected. A client that resets its connection (a
 * client destroyed with answers unread in its buffers sends a reset) is gone for the kernel
 * at once, and for Node only at its next turn to poll the socket: a bound that decided on what
 * it read before (a look at the kernel's table, https-peer.ts) and acts in the same turn would
 * reset, and count, a connection that no longer exists. The kernel says so at once:
 * getpeername fails (ENOTCONN) from the moment it has taken the reset (or the connection
 * closed both ways). Where the socket has no such handle (a pipe), it is not known gone.
 */
export function connectionGone(socket: Socket): boolean {
  const tcp = tcpOf(socket);
  if (socket.destroyed || tcp.destroyed) return true;
  const handle = (tcp as Socket & { _handle?: PeerHandle | null })._handle;
  if (typeof handle?.getpeername !== 'function') return false;
  return handle.getpeername({}) !== 0;
}

/** Node's TCP handle (undeclared in its types): getpeername returns 0 or a negative errno. */
interface PeerHandle {
  getpeername?: (out: Record<string, unknown>) => number;
}

/** The TCP socket under a TLS server's socket (its `_parent`: resetConnection), or itself. */
export function tcpOf(socket: Socket): Socket {
  const under = (socket as Socket & { _parent?: unknown })._parent;
  return under instanceof Socket ? under : socket;
}
