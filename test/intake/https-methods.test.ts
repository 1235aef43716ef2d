import { connect } from 'node:tls';
import { describe, expect, it } from 'vitest';
import { TOKENS } from '../helpers/stack.js';
import { call, intakeForFile, type HttpResult } from './https-client.js';

/**
 * Methods on the HTTPS intake (RFC 9110 §9, §15.5.6): every method Node parses, on every path
 * the intake serves, is answered from the router's own routes — served, `OPTIONS` (204 with
 * `Allow`), or `405` with `Allow` — before authentication; an unknown path stays `404`; a
 * method nobody knows is `501`.
 */

// No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
const fx = intakeForFile({ stack: { opcua: false } });

/** Each known path with its Allow header. */
const PATHS: readonly (readonly [path: string, allow: string])[] = [
  ['/v1/commands', 'POST, OPTIONS'],
  ['/v1/commands/some-key', 'GET, HEAD, OPTIONS'],
  ['/v1/devices', 'GET, HEAD, OPTIONS'],
  ['/v1/devices/v1', 'GET, HEAD, OPTIONS'],
  ['/healthz', 'GET, HEAD, OPTIONS'],
  ['/readyz', 'GET, HEAD, OPTIONS'],
  ['/metrics', 'GET, HEAD, OPTIONS'],
];

function expectProblem(r: HttpResult, status: number, code: string): void {
  expect(r.status).toBe(status);
  expect(r.headers['content-type']).toBe('application/problem+json');
  expect(r.json).toMatchObject({ status, code });
  expect(String(r.json.type)).toMatch(/^urn:sluice:problem:/);
}

/** Writes a request as raw bytes on a fresh TLS connection and returns the raw answer. */
function raw(request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: '127.0.0.1',
      port: fx.api.port,
      ca: fx.api.ca,
      servername: 'localhost',
    });
    const chunks: Buffer[] = [];
    socket.on('secureConnect', () => socket.end(request));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('close', () => {
      resolve(Buffer.concat(chunks).toString('utf8'));
    });
  });
}

describe('405 with Allow for every method a known path does not serve', () => {
  it('answers TRACE and PROPFIND on a known path 405, not 404', async () => {
    for (const method of ['TRACE', 'PROPFIND']) {
      const r = await call(fx.api, method, '/v1/devices');
      expectProblem(r, 405, 'METHOD_NOT_ALLOWED');
      expect(r.headers.allow).toBe('GET, HEAD, OPTIONS');
      expect(String(r.json.detail)).toContain(method);
    }
  });

  it('answers every method Node parses on every known path: served, OPTIONS or 405', async () => {
    // CONNECT is not a request on a path (its target is host:port); Node hands it to the
    // server's `connect` event, not to the router.
    const methods = [
      'ACL',
      'BIND',
      'CHECKOUT',
      'COPY',
      'DELETE',
      'LINK',
      'LOCK',
      'M-SEARCH',
      'MERGE',
      'MKACTIVITY',
      'MKCALENDAR',
      'MKCOL',
      'MOVE',
      'NOTIFY',
      'PATCH',
      'PROPFIND',
      'PROPPATCH',
      'PURGE',
      'PUT',
      'QUERY',
      'REBIND',
      'REPORT',
      'SEARCH',
      'SOURCE',
      'SUBSCRIBE',
      'TRACE',
      'UNBIND',
      'UNLINK',
      'UNLOCK',
      'UNSUBSCRIBE',
      'GET',
      'POST',
    ];
    for (const [path, allow] of PATHS) {
      const served = allow.split(', ');
      for (const method of methods.filter((m) => !served.includes(m))) {
        const r = await call(fx.api, method, path);
        expect({ method, path, status: r.status }).toEqual({ method, path, status: 405 });
        expect(r.headers.allow).toBe(allow);
        expect(r.json).toMatchObject({ code: 'METHOD_NOT_ALLOWED' });
      }
    }
  });

  it('answers 405 before authentication and before reading the body', async () => {
    // No credentials, a body that is neither JSON nor declared: still 405, not 401 or 415.
    const r = await call(fx.api, 'PUT', '/v1/commands', {
      body: '<propfind/>',
      headers: { 'content-type': 'application/xml' },
    });
    expectProblem(r, 405, 'METHOD_NOT_ALLOWED');
    expect(r.headers.allow).toBe('POST, OPTIONS');
    const propfind = await call(fx.api, 'PROPFIND', '/v1/devices/v1', {
      body: '<?xml version="1.0"?><propfind xmlns="DAV:"><allprop/></propfind>',
      headers: { 'content-type': 'application/xml', depth: '1' },
    });
    expectProblem(propfind, 405, 'METHOD_NOT_ALLOWED');
  });

  it('counts 405s under the route they were aimed at', async () => {
    await call(fx.api, 'TRACE', '/healthz');
    const metrics = await call(fx.api, 'GET', '/metrics');
    expect(metrics.text).toMatch(
      /sluice_http_responses_total\{route="\/healthz",status="405"\} \d+/,
    );
  });
});

describe('OPTIONS and HEAD', () => {
  it('answers OPTIONS on a known path 204 with Allow, without credentials', async () => {
    for (const [path, allow] of PATHS) {
      const r = await call(fx.api, 'OPTIONS', path);
      expect({ path, status: r.status }).toEqual({ path, status: 204 });
      expect(r.headers.allow).toBe(allow);
      expect(r.body.length).toBe(0);
      expect(r.headers['cache-control']).toBe('no-store');
    }
  });

  it('serves HEAD wherever GET is served: same status and headers, no body', async () => {
    for (const path of ['/healthz', '/readyz', '/metrics']) {
      const get = await call(fx.api, 'GET', path);
      const head = await call(fx.api, 'HEAD', path);
      expect({ path, status: head.status }).toEqual({ path, status: get.status });
      expect(head.headers['content-type']).toBe(get.headers['content-type']);
      expect(head.body.length).toBe(0);
    }
    const device = await call(fx.api, 'HEAD', '/v1/devices/v1', { token: TOKENS.plant });
    expect(device.status).toBe(200);
    expect(device.headers['content-type']).toBe('application/json');
    expect(Number(device.headers['content-length'])).toBeGreaterThan(0);
    expect(device.body.length).toBe(0);
    // HEAD is a GET without the body: it needs the same credentials.
    const anonymous = await call(fx.api, 'HEAD', '/v1/devices');
    expect(anonymous.status).toBe(401);
    expect(anonymous.headers['www-authenticate']).toBe('Bearer realm="sluice"');
    expect(
      (await call(fx.api, 'HEAD', '/v1/commands/never-sent', { token: TOKENS.plant })).status,
    ).toBe(404);
  });

  it('answers HEAD on the command route 405 (it serves POST only)', async () => {
    const r = await call(fx.api, 'HEAD', '/v1/commands');
    expect(r.status).toBe(405);
    expect(r.headers.allow).toBe('POST, OPTIONS');
    expect(r.body.length).toBe(0);
  });
});

describe('unknown paths and unknown methods', () => {
  it('keeps 404 NOT_FOUND for any method on an unknown path', async () => {
    for (const method of ['GET', 'TRACE', 'PROPFIND', 'OPTIONS', 'DELETE']) {
      const r = await call(fx.api, method, '/v2/whatever');
      expectProblem(r, 404, 'NOT_FOUND');
    }
    expectProblem(await call(fx.api, 'TRACE', '/v1/devices/v1/extra'), 404, 'NOT_FOUND');
  });

  it('answers a method nobody knows 501 NOT_IMPLEMENTED (RFC 9110 §9.1)', async () => {
    const answer = await raw('BREW /v1/devices HTTP/1.1\r\nHost: localhost\r\n\r\n');
    expect(answer).toMatch(/^HTTP\/1\.1 501 /);
    expect(answer).toContain('Content-Type: application/problem+json');
    expect(answer).toContain('"code":"NOT_IMPLEMENTED"');
  });

  it('answers what the router and the HTTP parser refuse with the headers of every response', async () => {
    // The router's (a malformed percent-encoding, an over-long segment) pass none of fastify's
    // hooks, and the parser's are written on the socket: docs/http-api.md promises both
    // headers on every response.
    for (const [request, status] of [
      ['GET /v1/commands/%E0%A4%A HTTP/1.1\r\nHost: localhost\r\n\r\n', 400],
      [`GET /v1/commands/${'k'.repeat(2_000)} HTTP/1.1\r\nHost: localhost\r\n\r\n`, 414],
      ['BREW /v1/devices HTTP/1.1\r\nHost: localhost\r\n\r\n', 501],
    ] as const) {
      const answer = await raw(request);
      const head = answer.split('\r\n\r\n')[0]!;
      expect(head).toMatch(new RegExp(`^HTTP/1\\.1 ${status} `));
      expect(head).toMatch(/^cache-control: no-store$/im);
      expect(head).toMatch(/^x-content-type-options: nosniff$/im);
    }
  });
});

describe('a path with an empty key or device id is no path', () => {
  it('answers 404 NOT_FOUND for every method, before authentication, and journals nothing', async () => {
    // `POST /v1/commands/` matched `/v1/commands/:key` with an empty key and was answered 405
    // 'use GET, HEAD, OPTIONS': a client with a stray slash read that POST is not served.
    const post = await call(fx.api, 'POST', '/v1/commands/', {
      token: TOKENS.plant,
      headers: { 'idempotency-key': 'empty-key-path-1' },
      json: { device: 'v1', action: 'open' },
    });
    expectProblem(post, 404, 'NOT_FOUND');
    expect(post.headers.allow).toBeUndefined();
    for (const [method, path] of [
      ['GET', '/v1/commands/'],
      ['HEAD', '/v1/commands/'],
      ['OPTIONS', '/v1/commands/'],
      ['GET', '/v1/devices/'],
      ['PUT', '/v1/devices/'],
    ] as const) {
      const r = await call(fx.api, method, path, { token: TOKENS.plant });
      expect(r.status, `${method} ${path}`).toBe(404);
      expect(r.headers.allow, `${method} ${path}`).toBeUndefined();
    }
    // Unauthenticated, the same: the path is unknown whoever asks.
    expectProblem(await call(fx.api, 'POST', '/v1/commands/'), 404, 'NOT_FOUND');
    // Nothing journaled under the key.
    const read = await call(fx.api, 'GET', '/v1/commands/empty-key-path-1', {
      token: TOKENS.plant,
    });
    expectProblem(read, 404, 'UNKNOWN_COMMAND');
  });
});
