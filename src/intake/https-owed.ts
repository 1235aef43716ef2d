import type { IncomingMessage, ServerResponse } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { Socket } from 'node:net';

/**
 * The answers a connection is still owed. HTTP/1.1 answers a connection's requests in the order
 * they came (RFC 9112 §9.3.2): a client that pipelines, or one whose `Content-Length` is a few
 * bytes short of what it sent (a body followed by a stray space or line end), has the next bytes
 * read as another request while the first is still being answered. When those bytes are not a
 * request, Node's parser fails and the server answers the failure on the raw socket
 * (https-problems.ts answerClientError) and closes it. Written at once, that answer (a 400, a
 * 501) came first on the connection, where the client reads the answer to its command: a command
 * journaled and written to the valve was seen as refused, and the answer that said what became
 * of it was cut off. So the failure's answer waits until every request read before it has been
 * answered.
 *
 * A client that half-closes its connection once its request is sent (shutdown of its sending
 * side: a FIN, after TLS's close_notify or not), as `nc -N`, socat and some embedded HTTP clients
 * do, and reads on, is owed its answers too. Node's HTTP server ended such a connection at its
 * FIN (lib/_http_server.js socketOnEnd), the answer still owed: the command was journaled and
 * written once and its client told nothing. Two switches of Node's keep it open. The TLS socket
 * keeps its sending side when the client ends its own (`allowHalfOpen`, a stream's documented
 * property, which may be changed until its 'end'): set once the handshake is done rather than as
 * a server option, so that a client hanging up mid-handshake is still closed at once (counted
 * `aborted`), not held until the handshake timeout. And the server's `httpAllowHalfOpen`, which
 * Node's tests set (test-http-server.js) and its types do not declare: with it, socketOnEnd
 * leaves the connection to be closed after the last answer owed. Node marks that answer for it,
 * but the mark does not survive the answer's Connection header being removed (https-server.ts
 * does, to keep a connection fastify would close): the connection stayed open, half-closed, for
 * the keep-alive timeout. So it is closed here, once nothing is owed.
 *
 * The last answer owed to a client that half-closed says so: `Connection: close` (RFC 9112 §9.6:
 * a server that will close after an answer sends the close option in it), added by the answer's
 * onSend hook (https-server.ts) when `isLastOwed`. Only the last: an earlier one would make Node
 * close the connection after it, the answers still owed to the requests that followed lost, and
 * §9.6 has a server process no request after one it answered with close. An answer made before
 * the FIN was read (its header composed, e.g. queued behind a slower answer) cannot say it: the
 * connection is closed after it all the same.
 *
 * TCP cannot tell a half-close from a client that closed its socket: such a client is answered
 * too, at the end of its wait, and the answer is lost with the connection (its kernel resets
 * it), not seen as a client gone. A connection reset or broken before its answer still is.
 */
export class AnswersOwed {
  /** Per connection, the requests read and not yet answered. */
  private readonly unanswered = new WeakMap<Socket, Set<IncomingMessage>>();
  /** Per connection, the request read last. */
  private readonly latest = new WeakMap<Socket, IncomingMessage>();
  /** Each request's answer. */
  private readonly answers = new WeakMap<IncomingMessage, ServerResponse>();
  /** Per connection, the answer waiting and the requests it waits for. */
  private readonly waiting = new WeakMap<
    Socket,
    { readonly before: Set<IncomingMessage>; readonly then: () => void }
  >();

  constructor(server: HttpsServer) {
    (server as HttpsServer & { httpAllowHalfOpen: boolean }).httpAllowHalfOpen = true;
    server.on('secureConnection', (socket: Socket) => {
      socket.allowHalfOpen = true;
    });
    // Before fastify's own listener, which may answer at once (a router error): the request is
    // known here by the time its answer is made.
    server.prependListener('request', (request: IncomingMessage, response: ServerResponse) => {
      const socket = request.socket;
      let open = this.unanswered.get(socket);
      if (open === undefined) {
        open = new Set();
        this.unanswered.set(socket, open);
      }
      open.add(request);
      this.latest.set(socket, request);
      this.answers.set(request, response);
      // 'close' follows the answer's last byte handed to the socket ('finish'), or the
      // connection's end without it; either way nothing more is owed for this request.
      response.once('close', () => {
        open.delete(request);
        this.answered(socket, request);
        // The client half-closed the connection and has had every answer it is owed.
        if (open.size === 0 && socket.readableEnded && !socket.destroyed) socket.destroySoon();
      });
    });
  }

  /**
   * Whether the answer to `request` is the last its connection is owed because its client
   * half-closed: the connection's end of input (the FIN) is read and `request` is the last request
   * read before it. Node reads a connection's requests ahead of their answers (it stops only when
   * answers back up), so once the FIN is read no request remains unread.
   */
  isLastOwed(request: IncomingMessage): boolean {
    const socket = request.socket;
    return socket.readableEnded && this.latest.get(socket) === request;
  }

  /**
   * Takes a parser error that is no request's: the client's FIN in the body of a request already
   * answered. A request refused before its body was read (413 on its Content-Length, 401, 415;
   * https-drain.ts) leaves its client free to stop sending the body and half-close: Node's parser
   * then fails at the end of input (HPE_INVALID_EOF_STATE), and the failure was answered as any
   * other, a `400 BAD_REQUEST` to no request after the answer the client had, its connection
   * destroyed at once — an answer still queued behind an earlier one (pipelined) lost with it.
   * Nothing is answered for it: the connection is closed once nothing more is owed (at once, or
   * after the answers still being written). The same request, never complete, later passes the
   * request timeout while an earlier request's answer is still owed (a command waiting for its
   * outcome, pipelined before it): Node then reports ERR_HTTP_REQUEST_TIMEOUT, taken here too —
   * answered, it was a `408` after the refusal, a second answer to the request. False for any
   * other error, and for one whose request is not answered yet (its answer is the failure's) or
   * that cut a request's head (no request).
   */
  endedInAnsweredBody(socket: Socket, error: { code?: string }): boolean {
    if (error.code !== 'HPE_INVALID_EOF_STATE' && error.code !== 'ERR_HTTP_REQUEST_TIMEOUT') {
      return false;
    }
    if (!socket.readableEnded) return false;
    const request = this.latest.get(socket);
    if (request === undefined || request.complete) return false;
    const answer = this.answers.get(request);
    if (answer === undefined || !(answer.headersSent || answer.writableEnded)) return false;
    const open = this.unanswered.get(socket);
    if ((open === undefined || open.size === 0) && !socket.destroyed) socket.destroySoon();
    return true;
  }

  /** Runs the answer waiting on `socket` once `request`, the last it waits for, is answered. */
  private answered(socket: Socket, request: IncomingMessage): void {
    const waiting = this.waiting.get(socket);
    if (waiting === undefined) return;
    waiting.before.delete(request);
    if (waiting.before.size > 0) return;
    this.waiting.delete(socket);
    waiting.then();
  }

  /**
   * Runs `then` once every request read whole on `socket` so far has been answered: at once
   * when none is owed. A request whose body is still coming is not waited for: the failure (a
   * request timeout) is its own, and its answer is the failure's. While it waits, a later call
   * for the same socket is dropped (a failed parser fails again on every chunk that arrives; one
   * answer is enough).
   */
  afterAnswered(socket: Socket, then: () => void): void {
    if (this.waiting.has(socket)) return;
    const before = new Set(
      [...(this.unanswered.get(socket) ?? [])].filter((request) => request.complete),
    );
    if (before.size === 0) then();
    else this.waiting.set(socket, { before, then });
  }
}
