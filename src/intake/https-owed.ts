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
 */
export class AnswersOwed {
  /** Per connection, the requests read and not yet answered. */
  private readonly unanswered = new WeakMap<Socket, Set<IncomingMessage>>();
  /** Per connection, the answer waiting and the requests it waits for. */
  private readonly waiting = new WeakMap<
    Socket,
    { readonly before: Set<IncomingMessage>; readonly then: () => void }
  >();

  constructor(server: HttpsServer) {
    server.on('request', (request: IncomingMessage, response: ServerResponse) => {
      const socket = request.socket;
      let open = this.unanswered.get(socket);
      if (open === undefined) {
        open = new Set();
        this.unanswered.set(socket, open);
      }
      open.add(request);
      // 'close' follows the answer's last byte handed to the socket ('finish'), or the
      // connection's end without it; either way nothing more is owed for this request.
      response.once('close', () => {
        open.delete(request);
        const waiting = this.waiting.get(socket);
        if (waiting === undefined) return;
        waiting.before.delete(request);
        if (waiting.before.size > 0) return;
        this.waiting.delete(socket);
        waiting.then();
      });
    });
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
