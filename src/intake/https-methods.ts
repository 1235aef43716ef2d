import { METHODS } from 'node:http';
import { makeProblem, sendProblem } from './https-problems.js';
import type { App } from './https-types.js';

/**
 * Request methods (RFC 9110 §9). Which methods a path serves is read from the routes as they
 * are registered, so `Allow` cannot drift from the router. Once the served routes are in, every
 * served path also answers `OPTIONS` (204 with `Allow`) and every other method Node parses with
 * `405` and `Allow` (RFC 9110 §15.5.6) — both before authentication and before the body is
 * read: the answer is the same whoever asks and whatever they send. A path nobody serves stays
 * 404 for every method (the not-found handler), and a method Node does not know never becomes a
 * request (https-problems.ts answers it 501).
 */

/**
 * fastify routes only the methods it was told about (GET, HEAD, TRACE, DELETE, OPTIONS, PATCH,
 * PUT, POST, QUERY); a PROPFIND would otherwise find no route and answer 404 on a path that
 * exists. CONNECT never reaches the router: Node hands it to the server's `connect` event.
 */
function routeEveryMethod(app: App): void {
  for (const method of METHODS) {
    if (method === 'CONNECT' || app.supportedMethods.includes(method)) continue;
    // No body parsing: these methods are only ever answered 405, before the body is read.
    app.addHttpMethod(method, { hasBody: false });
  }
}

export class MethodTable {
  /** Served methods by route pattern, in registration order (GET before its implied HEAD). */
  private readonly served = new Map<string, string[]>();
  private sealed = false;

  /** Call before the served routes are registered: it records them as they are. */
  constructor(app: App) {
    routeEveryMethod(app);
    app.addHook('onRoute', (route) => {
      if (this.sealed) return;
      const methods = Array.isArray(route.method) ? route.method : [route.method];
      const known = this.served.get(route.url) ?? [];
      for (const method of methods) if (!known.includes(method)) known.push(method);
      this.served.set(route.url, known);
    });
  }

  /** Call after the served routes: OPTIONS and 405 for every path they serve. */
  answerOtherMethods(app: App): void {
    this.sealed = true;
    for (const [url, methods] of this.served) {
      const allowed = methods.includes('OPTIONS') ? methods : [...methods, 'OPTIONS'];
      const allow = allowed.join(', ');
      if (!methods.includes('OPTIONS')) {
        app.route({
          method: 'OPTIONS',
          url,
          onRequest: async (_request, reply) => reply.code(204).header('allow', allow).send(),
          // Never reached: the onRequest hook has answered.
          handler: async (_request, reply) => reply,
        });
      }
      const others = app.supportedMethods.filter((m) => !allowed.includes(m));
      app.route({
        method: others,
        url,
        onRequest: async (request, reply) =>
          sendProblem(
            reply,
            makeProblem(
              405,
              'METHOD_NOT_ALLOWED',
              `${request.method} is not allowed here; use ${allow}`,
            ),
            { allow },
          ),
        // Never reached: the onRequest hook has answered.
        handler: async (_request, reply) => reply,
      });
    }
  }
}
