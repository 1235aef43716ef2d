import { request } from 'node:https';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { createServer } from '../../src/intake/https-server.js';
import type { HttpsConfig } from '../../src/intake/https-types.js';
import { makePki, type Pki } from './https-client.js';

/**
 * The server under the intake's routes takes no JSON schema (commands are validated with zod):
 * fastify's schema compilers are not loaded at start, and a route given a schema is refused
 * when the server gets ready rather than validated by a compiler nobody configured. And a path
 * whose named parameter is empty is unknown (404), checked by the routes that have one alone.
 */

const metrics = {
  registry: { contentType: 'text/plain', metrics: (): Promise<string> => Promise.resolve('') },
  httpResponses: { inc: (): void => undefined },
  accepted: { inc: (): void => undefined },
  journalFailures: { inc: (): void => undefined },
  httpsConnectionsRefused: { inc: (): void => undefined },
  httpsConnectionsIdleClosed: { inc: (): void => undefined },
  httpsTlsHandshakesFailed: { inc: (): void => undefined },
  httpsClientsGone: { inc: (): void => undefined },
};

describe('HTTPS server', () => {
  let pki: Pki;
  beforeAll(async () => {
    pki = await makePki();
  });
  afterAll(() => {
    pki.cleanup();
  });

  function server(): ReturnType<typeof createServer> {
    return createServer({
      config: {
        bodyLimitBytes: 65_536,
        maxConnections: 1024,
        maxConnectionsPerAddress: 256,
        trustedProxies: [] as string[],
      } as HttpsConfig,
      tls: { cert: Buffer.from(pki.server.cert), key: Buffer.from(pki.server.key), ca: undefined },
      metrics,
      logger: silentLogger,
      clock: systemClock,
      stopping: new AbortController().signal,
    });
  }

  it('refuses a route with a JSON schema when it gets ready', async () => {
    const app = server();
    app.post('/with-schema', { schema: { body: { type: 'object' } } }, () => Promise.resolve({}));
    await expect(app.ready()).rejects.toThrow(/take no JSON schema/);
    await app.close();
  });

  it('answers plain JSON from a route without one', async () => {
    const app = server();
    app.get('/plain', () => Promise.resolve({ state: 'OPEN', seq: 7 }));
    await app.ready();
    try {
      const answer = await app.inject({ method: 'GET', url: '/plain' });
      expect(answer.statusCode).toBe(200);
      expect(answer.json()).toEqual({ state: 'OPEN', seq: 7 });
    } finally {
      await app.close();
    }
  });

  it('answers an empty path parameter 404 from the routes that have one; a route without one runs no check (over TLS)', async () => {
    const app = server();
    app.post('/plain', () => Promise.resolve({ plain: true }));
    app.get('/items/:id', (request) =>
      Promise.resolve({ id: (request.params as { id: string }).id }),
    );
    app.get('/pairs/:scope/:key', (request) => Promise.resolve(request.params));
    app.get('/files/*', () => Promise.resolve({ file: true }));
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const port = (app.server.address() as AddressInfo).port;
      const get = (method: string, path: string): Promise<{ status: number; body: string }> =>
        new Promise((resolve, reject) => {
          const req = request(
            {
              host: '127.0.0.1',
              port,
              method,
              path,
              ca: pki.serverCa.cert,
              servername: 'localhost',
              agent: false,
            },
            (res) => {
              let body = '';
              res.setEncoding('utf8');
              res.on('data', (c: string) => (body += c));
              res.on('end', () => {
                resolve({ status: res.statusCode ?? 0, body });
              });
            },
          );
          req.once('error', reject);
          req.end();
        });
      for (const path of ['/items/', '/pairs//k', '/pairs/s/']) {
        const answer = await get('GET', path);
        expect(answer.status, path).toBe(404);
        expect(JSON.parse(answer.body), path).toMatchObject({ code: 'NOT_FOUND' });
      }
      expect(await get('GET', '/items/a')).toEqual({ status: 200, body: '{"id":"a"}' });
      expect(await get('GET', '/pairs/s/k')).toEqual({
        status: 200,
        body: '{"scope":"s","key":"k"}',
      });
      // A wildcard may be empty (the status page's files: /ui/).
      expect((await get('GET', '/files/')).status).toBe(200);
      expect((await get('POST', '/plain')).status).toBe(200);

      // The check is the parametric routes' own: a route without a parameter (as POST
      // /v1/commands, the throughput's path) runs only the server's hook (a stopping gateway's
      // 503). It ran as a second server hook on every request.
      const table = app.printRoutes({ includeHooks: true, commonPrefix: false });
      expect(onRequestHooks(table, '/plain (POST)')).toEqual(['anonymous()']);
      expect(onRequestHooks(table, '/items/:id (GET)')).toEqual([
        'anonymous()',
        'emptyParameterNotFound()',
      ]);
      expect(onRequestHooks(table, '/items/:id (HEAD)')).toEqual([
        'anonymous()',
        'emptyParameterNotFound()',
      ]);
      expect(onRequestHooks(table, '/pairs/:scope/:key (GET)')).toEqual([
        'anonymous()',
        'emptyParameterNotFound()',
      ]);
    } finally {
      await app.close();
    }
  });
});

/** The onRequest hooks fastify lists for a route (printRoutes with its hooks), by name. */
function onRequestHooks(table: string, route: string): string[] {
  const lines = table.split('\n');
  const at = lines.findIndex((line) => line.replace(/^[\s│├└─]+/, '') === route);
  if (at < 0) throw new Error(`no route ${route} in:\n${table}`);
  const hooks = lines.slice(at + 1).find((line) => line.includes('(onRequest)'));
  return JSON.parse(hooks?.slice(hooks.indexOf('[')) ?? '[]') as string[];
}
