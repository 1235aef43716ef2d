import { isIP } from 'node:net';

/**
 * The client's address a request is counted and recorded by (the failed-token bound, logs, a
 * status page operator's action): fastify's `request.ip`, the connection's peer or, from a proxy
 * named in https.trustedProxies, the last hop of its X-Forwarded-For not itself a named proxy.
 * A hop that is no IP address (`10.0.0.7:51234`, as some proxies write the client's port, or
 * `unknown`) is not one: taken as written, each source port would be a count of its own, and a
 * guesser behind such a proxy would pass the bound by changing port. Such a request is counted
 * by the connection's peer instead, the proxy, as without the setting.
 */
export function clientAddress(request: {
  readonly ip: string;
  readonly socket: { readonly remoteAddress?: string | undefined };
}): string {
  if (isIP(request.ip) !== 0) return request.ip;
  return request.socket.remoteAddress ?? request.ip;
}
