import { Socket } from 'node:net';

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
export function tcpOf(socket: Socket): Socket {
  const under = (socket as Socket & { _parent?: unknown })._parent;
  return under instanceof Socket ? under : socket;
}
