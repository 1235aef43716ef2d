import type { IncomingMessage } from 'node:http';

/**
 * An answer given before the request's body was read: a body refused as too large (413, on its
 * Content-Length or once a chunked body passed the limit), or a request refused before its body
 * mattered (401, 403, 415, 429). The client may still be sending the body.
 *
 * fastify answers a 413 with `Connection: close`, and Node closes the connection as soon as the
 * answer is written: the client's next write meets a reset, and a client that reads only after it
 * has written the whole request (most do) gets EPIPE or ECONNRESET instead of the 413 (RFC 9112
 * §9.6 describes the hazard). Any other early answer keeps the connection, and Node reads the
 * rest of the body and discards it — with no bound: a client could stream a body for as long as
 * the request timeout allows.
 *
 * Here every early answer is treated alike. The rest of the body is read and discarded and the
 * connection kept: the client writes its body to the end, reads the answer, and may use the
 * connection again. Only what is bounded is drained: a declared length over DRAIN_MAX_BYTES is
 * answered with `Connection: close` (it would be read for nothing), and a chunked body, whose
 * length is not known, or a client that sends slowly, has its connection cut once DRAIN_MAX_BYTES
 * have been discarded, or DRAIN_MAX_MS have passed since the answer.
 */

/** The most of a refused body read and discarded to let its client see the answer. */
export const DRAIN_MAX_BYTES = 4 * 1024 * 1024;
/** How long the rest of a refused body may take to arrive before the connection is cut. */
export const DRAIN_MAX_MS = 10_000;

export interface DrainLimits {
  readonly maxBytes: number;
  readonly maxMs: number;
}

const DEFAULT_LIMITS: DrainLimits = { maxBytes: DRAIN_MAX_BYTES, maxMs: DRAIN_MAX_MS };

/**
 * What becomes of the rest of a request's body, called as its answer is about to be sent:
 * - `complete`: nothing is left to read (the body was read, or there is none);
 * - `drained`: the rest is read and discarded within the bounds, and the answer must keep the
 *   connection (no `Connection: close`);
 * - `close`: the declared length is past the bound, and the answer must close the connection.
 */
export function settleUnreadBody(
  request: IncomingMessage,
  limits: DrainLimits = DEFAULT_LIMITS,
): 'complete' | 'drained' | 'close' {
  if (request.complete) return 'complete';
  const declared = request.headers['content-length'];
  if (declared === undefined && request.headers['transfer-encoding'] === undefined) {
    return 'complete';
  }
  if (declared !== undefined && !(Number(declared) <= limits.maxBytes)) return 'close';
  const socket = request.socket;
  let discarded = 0;
  // A connection that closes after this answer (its client asked for it, `Connection: close`,
  // as Python's urllib and many embedded clients send, or an HTTP/1.0 request without
  // keep-alive) is closed by Node once the answer is written (socket.destroySoon): the rest of
  // the body then arrived on a closed socket, the kernel answered it with a reset, and the
  // client, still writing, got EPIPE or ECONNRESET instead of the answer — the hazard this
  // drain is here to avoid. So its close lingers (RFC 9112 §9.6): its sending side is ended
  // after the answer, and the connection closed once the body is read, or at the bounds.
  let closeWhenDrained = false;
  const lingeringClose = (): void => {
    closeWhenDrained = true;
    socket.end();
  };
  socket.destroySoon = lingeringClose;
  const cut = (): void => {
    stop();
    socket.destroy();
  };
  const timer = setTimeout(cut, limits.maxMs);
  timer.unref();
  const count = (chunk: Buffer): void => {
    discarded += chunk.length;
    if (discarded > limits.maxBytes) cut();
  };
  function stop(): void {
    clearTimeout(timer);
    request.off('data', count);
    request.off('end', stop);
    socket.off('end', stop);
    socket.off('close', stop);
    // Node's own close again (the prototype's), and the close that waited for the body.
    if (socket.destroySoon === lingeringClose) Reflect.deleteProperty(socket, 'destroySoon');
    if (closeWhenDrained) socket.destroySoon();
  }
  // Read here, not by Node: Node discards a body nobody consumed without a count (its 'data'
  // events stop), and this reading is what bounds it.
  request.on('data', count);
  request.once('end', stop);
  // The client's end of input (a FIN, with close_notify or not): the rest of the body will not
  // come, and there is nothing left to bound. Cut at the bound all the same, the connection lost
  // the answers still owed before this one (a command waiting for its outcome, pipelined before
  // it); it is closed once nothing more is owed (https-owed.ts endedInAnsweredBody), and a client
  // that does not read them is bounded as any other (https-unread.ts boundAnswers).
  socket.once('end', stop);
  socket.once('close', stop);
  return 'drained';
}
