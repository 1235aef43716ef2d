import type { IncomingMessage, ServerResponse } from 'node:http';

/**
 * A body refused as too large (413) is refused before it was read: on its Content-Length, or once
 * a chunked body passed the limit. fastify then answers with `Connection: close`, and Node closes
 * the connection as soon as the answer is written — while the client may still be sending the
 * body. Its next write meets a reset, and a client that reads only after it has written the whole
 * request (most do) gets EPIPE or ECONNRESET instead of the 413 (RFC 9112 §9.6 describes the
 * hazard).
 *
 * Instead, the rest of such a body is read and discarded — Node's own handling of a body nobody
 * consumed — and the connection stays open: the client writes its body to the end, reads the 413,
 * and may use the connection again. Only what is bounded is drained: a declared length over
 * DRAIN_MAX_BYTES keeps the close (it would be read for nothing), and a chunked body, whose length
 * is not known, or a client that sends slowly, has its connection cut once DRAIN_MAX_BYTES have
 * been discarded after the answer, or DRAIN_MAX_MS have passed.
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
 * Called while the refusal is being answered. True when the rest of the request's body will be
 * drained, and the answer must then keep the connection (no `Connection: close`); false when
 * there is nothing left to read or too much, and the connection may be closed.
 */
export function drainRefusedBody(
  request: IncomingMessage,
  response: ServerResponse,
  limits: DrainLimits = DEFAULT_LIMITS,
): boolean {
  if (request.complete) return false;
  const declared = request.headers['content-length'];
  if (declared !== undefined && !(Number(declared) <= limits.maxBytes)) return false;
  const socket = request.socket;
  let discarded = 0;
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
    socket.off('close', stop);
  }
  // Node reads a body nobody consumed to its end once the answer is finished (and drops the
  // 'data' listeners then): counting starts after that.
  response.once('finish', () => {
    if (request.complete) {
      stop();
      return;
    }
    request.on('data', count);
  });
  request.once('end', stop);
  socket.once('close', stop);
  return true;
}
