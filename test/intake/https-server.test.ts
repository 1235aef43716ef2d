import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { createServer } from '../../src/intake/https-server.js';
import type { HttpsConfig } from '../../src/intake/https-types.js';
import { makePki, type Pki } from './https-client.js';

/**
 * The server under the intake's routes takes no JSON schema (commands are validated with zod):
 * fastify's schema compilers are not loaded at start, and a route given a schema is refused
 * when the server gets ready rather than validated by a compiler nobody configured.
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
});
