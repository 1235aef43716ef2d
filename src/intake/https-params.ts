import type { App, Reply, Request } from './https-types.js';

/**
 * No key, device id or scope is empty (SPEC §2: keys of 1–255 characters), but the router
 * matches an empty segment to a parameter: `POST /v1/commands/` was `/v1/commands/:key` with the
 * key '' and answered 405 'use GET, HEAD, OPTIONS', and a client with a stray slash read that
 * commands cannot be posted (d45d54f). Such a path is unknown, 404 for every method
 * (docs/http-api.md), before authentication as every unknown path. A wildcard (`*`, the status
 * page's files) may be empty.
 *
 * Checked by the routes that have a named parameter, first among their own hooks (after the
 * server's, which answer a stopping gateway 503): a route without one never runs the check.
 * It ran as a server hook on every request, `POST /v1/commands` (the throughput's path, which
 * has no parameter) first of all. Call before the routes are registered: each is given the
 * check as it is (the 405 and OPTIONS routes https-methods.ts adds for a path included).
 */
export function notFoundOnEmptyParameters(app: App): void {
  const checks = new WeakSet<object>();
  app.addHook('onRoute', (route) => {
    const names = [...route.url.matchAll(/:([A-Za-z0-9_]+)/g)].flatMap((m) =>
      m[1] === undefined ? [] : [m[1]],
    );
    if (names.length === 0) return;
    const own = route.onRequest === undefined ? [] : [route.onRequest].flat();
    // A GET's implied HEAD route is made from its options, the check already in them.
    if (own.some((hook) => checks.has(hook))) return;
    const emptyParameterNotFound = async (
      request: Request,
      reply: Reply,
    ): Promise<Reply | undefined> => {
      const params = request.params as Record<string, unknown>;
      if (!names.some((name) => params[name] === '')) return undefined;
      reply.callNotFound();
      return reply;
    };
    checks.add(emptyParameterNotFound);
    route.onRequest = [emptyParameterNotFound, ...own];
  });
}
