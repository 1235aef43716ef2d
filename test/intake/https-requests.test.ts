import { randomUUID } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join, posix } from 'node:path';
import { connect } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { IdentityRegistry, sha256 } from '../../src/intake/identities.js';
import { startStack, TOKENS, type Stack } from '../helpers/stack.js';
import {
  call,
  makePki,
  memoryLogger,
  startIntake,
  type CallOptions,
  type HttpResult,
  type Pki,
  type RunningIntake,
} from './https-client.js';

/**
 * The HTTPS intake's requests that need no valve to move: authentication, validation, limits,
 * routes, the device and health endpoints, rate limiting, TLS versions and mutual TLS. One
 * stack and one intake serve the file; commands here are refused or are no-ops (closing a
 * closed valve is confirmed by a readback, without a write), so the plant stays as it was.
 */

let stack: Stack;
let pki: Pki;
let api: RunningIntake;
let ready = true;
const log = memoryLogger();

beforeAll(async () => {
  pki = await makePki();
  stack = await startStack();
  api = await startIntake(stack, pki, {
    logger: log,
    readiness: () =>
      ready
        ? { ready: true, checks: { journal: { ok: true, detail: 'writable' } } }
        : { ready: false, checks: { journal: { ok: false, detail: 'SQLITE_BUSY' } } },
  });
});

afterAll(async () => {
  await api.stop();
  await stack.stop();
  pki.cleanup();
});

const key = (): string => `k-${randomUUID()}`;

function post(
  k: string | undefined,
  json: unknown,
  options: CallOptions & { token?: string } = {},
): ReturnType<typeof call> {
  return call(api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    json,
    ...options,
    headers: { ...(k === undefined ? {} : { 'idempotency-key': k }), ...options.headers },
  });
}

const writes = (device: string): number => stack.plant.device(device).counters.writesReceived;

/** Writes a request as raw bytes on a fresh TLS connection and returns the raw answer. */
function rawRequest(request: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({
      host: '127.0.0.1',
      port: api.port,
      ca: api.ca,
      servername: 'localhost',
    });
    const chunks: Buffer[] = [];
    socket.on('secureConnect', () => socket.end(Buffer.from(request, 'latin1')));
    socket.on('data', (chunk: Buffer) => chunks.push(chunk));
    socket.on('error', reject);
    socket.on('close', () => {
      resolve(Buffer.concat(chunks).toString('latin1'));
    });
  });
}

function expectProblem(r: HttpResult, status: number, code: string): void {
  expect(r.status).toBe(status);
  expect(r.headers['content-type']).toBe('application/problem+json');
  expect(r.json).toMatchObject({ status, code });
  expect(String(r.json.type)).toMatch(/^urn:sluice:problem:/);
}

describe('400: key and body validation', () => {
  it('refuses a command without an Idempotency-Key', async () => {
    const r = await post(undefined, { device: 'v1', action: 'close' });
    expectProblem(r, 400, 'MISSING_IDEMPOTENCY_KEY');
  });

  it('refuses a malformed key: spaces, control characters, too long', async () => {
    for (const bad of ['has space', 'x'.repeat(256), '"unterminated\\"']) {
      const r = await post(bad, { device: 'v1', action: 'close' });
      expectProblem(r, 400, 'MISSING_IDEMPOTENCY_KEY');
    }
  });

  it('refuses a key with a control character MISSING_IDEMPOTENCY_KEY, naming the header and the byte', async () => {
    // Node's parser refuses such a header before the request exists; a client library that
    // sends it anyway must learn that its key is the problem, not that "the request could not
    // be read".
    const before = writes('v1');
    for (const [byte, hex] of [
      ['\x01', '0x01'],
      ['\x7f', '0x7F'],
    ] as const) {
      const k = `k${byte}${randomUUID()}`;
      const answer = await rawRequest(
        'POST /v1/commands HTTP/1.1\r\nHost: localhost\r\n' +
          `Authorization: Bearer ${TOKENS.plant}\r\nIdempotency-Key: ${k}\r\n` +
          'Content-Type: application/json\r\nContent-Length: 33\r\n\r\n' +
          '{"device":"v1","action":"close"}\n',
      );
      expect(answer).toMatch(/^HTTP\/1\.1 400 /);
      expect(answer).toContain('Content-Type: application/problem+json');
      const body = JSON.parse(answer.slice(answer.indexOf('\r\n\r\n') + 4)) as {
        code: string;
        detail: string;
      };
      expect(body.code).toBe('MISSING_IDEMPOTENCY_KEY');
      expect(body.detail).toContain(`the Idempotency-Key header holds the byte ${hex}`);
      expect(stack.pipeline.get({ scope: 'plant', key: k })).toBeUndefined();
    }
    // Another header with one is a plain bad request, and says which header.
    const other = await rawRequest(
      'GET /v1/devices HTTP/1.1\r\nHost: localhost\r\nX-Trace: a\x02b\r\n\r\n',
    );
    expect(other).toMatch(/^HTTP\/1\.1 400 /);
    expect(other).toContain('"code":"BAD_REQUEST"');
    expect(other).toContain('the X-Trace header holds the byte 0x02');
    expect(writes('v1')).toBe(before);
  });

  it('refuses an invalid command with every error listed, and journals nothing', async () => {
    const k = key();
    const r = await post(k, { device: 'v1', action: 'fly', ttlMs: -1 });
    expectProblem(r, 400, 'INVALID_COMMAND');
    const errors = (r.json as { errors: string[] }).errors;
    expect(errors.some((e) => e.startsWith('action:'))).toBe(true);
    expect(errors.some((e) => e.startsWith('ttlMs:'))).toBe(true);
    const get = await call(api, 'GET', `/v1/commands/${k}`, { token: TOKENS.plant });
    expectProblem(get, 404, 'UNKNOWN_COMMAND');
  });

  it('refuses an action the device does not have (move on a valve)', async () => {
    const r = await post(key(), { device: 'v1', action: 'move', position: 10 });
    expectProblem(r, 400, 'INVALID_COMMAND');
  });

  it('refuses malformed and empty JSON as INVALID_COMMAND', async () => {
    const json = { 'content-type': 'application/json' };
    const broken = await post(key(), undefined, { body: '{"device":', headers: json });
    expectProblem(broken, 400, 'INVALID_COMMAND');
    const empty = await post(key(), undefined, { body: '', headers: json });
    expectProblem(empty, 400, 'INVALID_COMMAND');
    const poisoned = await post(key(), undefined, {
      body: '{"device":"v1","action":"close","__proto__":{"x":1}}',
      headers: json,
    });
    expectProblem(poisoned, 400, 'INVALID_COMMAND');
    const none = await post(key(), undefined);
    expectProblem(none, 400, 'INVALID_COMMAND');
    // No body and no media type: said as such, with the fix, not as a JavaScript "undefined".
    expect(none.json.errors).toEqual([
      '(body): is missing; a command is a JSON object, sent with Content-Type: application/json',
    ]);
    expect(none.text).not.toContain('undefined');
  });
});

describe('401: credentials', () => {
  it('asks for a bearer token when there is none', async () => {
    const r = await call(api, 'POST', '/v1/commands', {
      json: { device: 'v1', action: 'close' },
      headers: { 'idempotency-key': key() },
    });
    expectProblem(r, 401, 'UNAUTHORIZED');
    expect(r.headers['www-authenticate']).toBe('Bearer realm="sluice"');
    expectProblem(await call(api, 'GET', '/v1/devices'), 401, 'UNAUTHORIZED');
  });

  it('refuses a wrong token or another scheme, and never logs a token', async () => {
    const r = await post(key(), { device: 'v1', action: 'close' }, { token: 'wrong-secret-xyz' });
    expectProblem(r, 401, 'UNAUTHORIZED');
    expect(r.headers['www-authenticate']).toBe('Bearer realm="sluice", error="invalid_token"');
    const basic = await call(api, 'GET', '/v1/devices', {
      headers: { authorization: 'Basic cGxhbnQ6cGxhbnQtdG9rZW4=' },
    });
    expectProblem(basic, 401, 'UNAUTHORIZED');
    await post(key(), { device: 'v1', action: 'close' });
    const lines = log.lines.join('\n');
    expect(lines).toContain('HTTPS command answered');
    expect(lines).not.toContain('wrong-secret-xyz');
    expect(lines).not.toContain(TOKENS.plant);
    expect(lines).not.toContain('cGxhbnQ6cGxhbnQtdG9rZW4=');
    expect(lines.toLowerCase()).not.toContain('authorization');
  });
});

describe('the log of a refusal', () => {
  it('says why a command was refused, as the MQTT intake does', async () => {
    const k = key();
    const r = await post(k, { device: 'v1', action: 'close', ttl: 5000 });
    expectProblem(r, 400, 'INVALID_COMMAND');
    const line = log.lines
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => l.msg === 'HTTPS command refused' && l.key === k);
    expect(line?.code).toBe('INVALID_COMMAND');
    expect(line?.detail).toContain('ttl: is not a field of a command (did you mean "ttlMs"?)');
  });
});

describe('repeated headers: one credential and one key, or nothing is done', () => {
  it('refuses two Authorization headers, even when the first is valid, and journals nothing', async () => {
    const k = key();
    // Node keeps only the first: this request acted as plant, whatever a proxy read from it.
    const r = await post(
      k,
      { device: 'v1', action: 'close' },
      { headers: { authorization: [`Bearer ${TOKENS.plant}`, `Bearer ${TOKENS.ops}`] } },
    );
    expectProblem(r, 401, 'UNAUTHORIZED');
    expect(r.json.detail).toBe('the request has 2 Authorization headers; send exactly one');
    expect(r.headers['www-authenticate']).toBe('Bearer realm="sluice", error="invalid_request"');
    expect(stack.pipeline.get({ scope: 'plant', key: k })).toBeUndefined();
    expect(stack.pipeline.get({ scope: 'ops', key: k })).toBeUndefined();
    const read = await call(api, 'GET', `/v1/commands/${k}`, {
      headers: { authorization: [`Bearer ${TOKENS.ops}`, `Bearer ${TOKENS.plant}`] },
    });
    expectProblem(read, 401, 'UNAUTHORIZED');
  });

  it('refuses a repeated Idempotency-Key header, also when one of them is empty', async () => {
    const k = key();
    // Node joins them as "k, ", which trimmed is the valid key "k," — another command than k.
    for (const given of [
      [k, ''],
      ['', k],
      [k, k],
    ]) {
      const r = await post(
        undefined,
        { device: 'v1', action: 'close' },
        {
          headers: { 'idempotency-key': given },
        },
      );
      expectProblem(r, 400, 'MISSING_IDEMPOTENCY_KEY');
      expect(r.json.detail).toBe(
        'the request has 2 Idempotency-Key headers; exactly one is allowed',
      );
    }
    for (const journaled of [k, `${k},`, `,${k}`]) {
      expect(stack.pipeline.get({ scope: 'plant', key: journaled })).toBeUndefined();
    }
  });
});

describe('tokens as their files hold them', () => {
  it('authenticates a token with any visible ASCII character (RFC 6750 b64token is narrower)', async () => {
    const token = 'S3cr3t!:pa$$w0rd#%&*(1)';
    const tokenFile = join(pki.dir, 'odd.token');
    writeFileSync(tokenFile, `${token}\n`, { mode: 0o600 });
    const identities = new IdentityRegistry({ site: { tokenFile, devices: ['v1'] } });
    const odd = await startIntake(stack, pki, { identities });
    try {
      const k = key();
      const r = await call(odd, 'POST', '/v1/commands', {
        token,
        json: { device: 'v1', action: 'close' },
        headers: { 'idempotency-key': k },
      });
      expect(r.status).toBe(200);
      expect(stack.pipeline.get({ scope: 'site', key: k })?.state).toBe('confirmed');
      const wrong = await call(odd, 'GET', '/v1/devices', { token: `${token}x` });
      expectProblem(wrong, 401, 'UNAUTHORIZED');
      expect(wrong.json.detail).toBe('the bearer token is not valid');
    } finally {
      await odd.stop();
    }
  });

  it('refuses at load two identities with one token or one certificate CN', () => {
    const tokenFile = join(pki.dir, 'shared.token');
    writeFileSync(tokenFile, `${TOKENS.plant}\n`, { mode: 0o600 });
    const digest = sha256(TOKENS.plant).toString('hex');
    // Before, the token acted as the identity listed last: here, viewer's client as admin.
    expect(
      () =>
        new IdentityRegistry({
          viewer: { tokenSha256: digest, devices: ['v2'] },
          admin: { tokenFile, devices: ['*'] },
        }),
    ).toThrow(
      "identities.admin.tokenFile: the same token as identities.viewer's; a token must name one identity",
    );
    expect(
      () =>
        new IdentityRegistry({
          a: { tokenSha256: digest, devices: ['v2'] },
          b: { tokenSha256: digest.toUpperCase(), devices: ['*'] },
        }),
    ).toThrow("identities.b.tokenSha256: the same token as identities.a's");
    expect(
      () =>
        new IdentityRegistry({
          a: { certificateCn: 'scada-1', devices: ['v2'] },
          b: { certificateCn: 'scada-1', devices: ['*'] },
        }),
    ).toThrow('identities.b.certificateCn: "scada-1" is also identities.a\'s');
    // One identity may hold both forms of its own token.
    const both = new IdentityRegistry({
      plant: { tokenSha256: digest, tokenFile, devices: ['*'] },
    });
    expect(both.byToken(TOKENS.plant)?.name).toBe('plant');
  });

  it('refuses at load a token file whose token no Authorization header can carry', () => {
    for (const [what, text] of [
      ['a space', 'two words\n'],
      ['a second line', 'first\nsecond\n'],
      ['a non-ASCII character', 'Schlüssel\n'],
    ] as const) {
      const tokenFile = join(pki.dir, 'bad.token');
      writeFileSync(tokenFile, text, { mode: 0o600 });
      expect(() => new IdentityRegistry({ site: { tokenFile, devices: ['*'] } }), what).toThrow(
        `identities.site.tokenFile: ${tokenFile} holds a space, a control character or a non-ASCII character inside the token`,
      );
    }
  });
});

describe('403: device not allowed for the identity', () => {
  it('journals FORBIDDEN_DEVICE, writes nothing, and replays it byte for byte', async () => {
    const k = key();
    const before = writes('v1');
    const r = await post(k, { device: 'v1', action: 'open' }, { token: TOKENS.ops });
    expectProblem(r, 403, 'FORBIDDEN_DEVICE');
    // A rejected command's problem document carries the whole result.
    expect(r.json).toMatchObject({ key: k, device: 'v1', state: 'rejected', replayed: false });
    expect(r.headers['idempotent-replayed']).toBeUndefined();
    const again = await post(k, { device: 'v1', action: 'open' }, { token: TOKENS.ops });
    expect(again.status).toBe(403);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.body.equals(r.body)).toBe(true);
    expect(writes('v1')).toBe(before);
    // Keys are scoped to the identity: the plant identity does not see ops's command.
    const mine = await call(api, 'GET', `/v1/commands/${k}`, { token: TOKENS.ops });
    expect(mine.status).toBe(200);
    expect(mine.json).toMatchObject({ state: 'rejected', code: 'FORBIDDEN_DEVICE' });
    const theirs = await call(api, 'GET', `/v1/commands/${k}`, { token: TOKENS.plant });
    expectProblem(theirs, 404, 'UNKNOWN_COMMAND');
  });
});

describe('404, 405', () => {
  it('answers an unknown device, route, command with problem documents', async () => {
    const unknown = await post(key(), { device: 'nope', action: 'open' });
    expectProblem(unknown, 404, 'UNKNOWN_DEVICE');
    expect(unknown.json).toMatchObject({ device: 'nope' });
    const device = await call(api, 'GET', '/v1/devices/nope', { token: TOKENS.plant });
    expectProblem(device, 404, 'UNKNOWN_DEVICE');
    // The same member on both routes (docs/http-api.md: UNKNOWN_DEVICE has `device`).
    expect(device.json).toMatchObject({ device: 'nope' });
    expectProblem(await call(api, 'GET', '/v2/whatever'), 404, 'NOT_FOUND');
    expectProblem(
      await call(api, 'GET', '/v1/commands/never-sent', { token: TOKENS.plant }),
      404,
      'UNKNOWN_COMMAND',
    );
    expectProblem(
      await call(api, 'GET', '/v1/commands/%zz', { token: TOKENS.plant }),
      400,
      'BAD_REQUEST',
    );
  });

  it('answers a wrong method with 405 and Allow, before authentication', async () => {
    const r = await call(api, 'GET', '/v1/commands');
    expectProblem(r, 405, 'METHOD_NOT_ALLOWED');
    // OPTIONS is served on every known path (204 with Allow), so Allow lists it.
    expect(r.headers.allow).toBe('POST, OPTIONS');
    const d = await call(api, 'DELETE', '/v1/devices/v1', { body: 'x' });
    expectProblem(d, 405, 'METHOD_NOT_ALLOWED');
    expect(d.headers.allow).toBe('GET, HEAD, OPTIONS');
  });
});

describe('409: stale and skewed commands are rejected without a write', () => {
  it('rejects a command issued an hour ago (STALE_COMMAND) or an hour ahead (CLOCK_SKEW)', async () => {
    const before = writes('v1');
    const hour = 3_600_000;
    const stale = await post(key(), {
      device: 'v1',
      action: 'open',
      issuedAt: new Date(Date.now() - hour).toISOString(),
    });
    expectProblem(stale, 409, 'STALE_COMMAND');
    expect(stale.json).toMatchObject({ state: 'rejected', issuedAtSource: 'issuer' });
    const ahead = await post(key(), {
      device: 'v1',
      action: 'open',
      issuedAt: new Date(Date.now() + hour).toISOString(),
    });
    expectProblem(ahead, 409, 'CLOCK_SKEW');
    expect(writes('v1')).toBe(before);
  });
});

describe('422: key reuse', () => {
  it('refuses the same key with a different command, and writes nothing', async () => {
    const k = key();
    const before = writes('v1');
    const first = await post(k, { device: 'v1', action: 'close' });
    expect(first.status).toBe(200);
    const reuse = await post(k, { device: 'v1', action: 'open' });
    expectProblem(reuse, 422, 'IDEMPOTENCY_KEY_REUSED');
    const elsewhere = await post(k, { device: 'v2', action: 'close' });
    expectProblem(elsewhere, 422, 'IDEMPOTENCY_KEY_REUSED');
    expect(writes('v1')).toBe(before);
  });
});

describe('413, 415: body limits', () => {
  it('refuses a body over the limit', async () => {
    const big = JSON.stringify({ device: 'v1', action: 'close', pad: 'x'.repeat(20_000) });
    const r = await post(key(), undefined, {
      body: big,
      headers: { 'content-type': 'application/json' },
    });
    expectProblem(r, 413, 'PAYLOAD_TOO_LARGE');
  });

  it('takes only application/json', async () => {
    const body = JSON.stringify({ device: 'v1', action: 'close' });
    for (const type of ['text/plain', 'application/xml', 'application/x-www-form-urlencoded']) {
      const r = await post(key(), undefined, { body, headers: { 'content-type': type } });
      expectProblem(r, 415, 'UNSUPPORTED_MEDIA_TYPE');
    }
    const untyped = await post(key(), undefined, { body });
    expectProblem(untyped, 415, 'UNSUPPORTED_MEDIA_TYPE');
    const charset = await post(key(), undefined, {
      body,
      headers: { 'content-type': 'application/json; charset=utf-8' },
    });
    expect(charset.status).toBe(200);
  });
});

describe('keys and preferences', () => {
  it('takes any printable key, quoted or bare, and finds it at its Location', async () => {
    const k = `a/b?c%d#e+${randomUUID()}`;
    const first = await post(
      k,
      { device: 'v1', action: 'close' },
      { headers: { prefer: 'wait=0' } },
    );
    expect(first.status).toBe(202);
    expect(first.headers['preference-applied']).toBe('wait=0');
    expect(first.headers.location).toBe(`/v1/commands/${encodeURIComponent(k)}`);
    expect(first.headers['retry-after']).toBe('1');
    const quoted = `"${k}"`;
    let polled = await call(api, 'GET', first.headers.location!, { token: TOKENS.plant });
    for (let i = 0; i < 200 && polled.json.state !== 'confirmed'; i++) {
      await new Promise((resolve) => setTimeout(resolve, 10));
      polled = await call(api, 'GET', first.headers.location!, { token: TOKENS.plant });
    }
    expect(polled.json).toMatchObject({ key: k, state: 'confirmed', seq: null });
    // The IETF draft's quoted form names the same key.
    const again = await post(quoted, { device: 'v1', action: 'close' });
    expect(again.status).toBe(200);
    expect(again.headers['idempotent-replayed']).toBe('true');
  });

  it('gives the keys . and .. a Location that no URI resolution turns into another path', async () => {
    for (const [k, segment] of [
      ['.', '%2E'],
      ['..', '%2E%2E'],
    ] as const) {
      const first = await post(
        k,
        { device: 'v1', action: 'close' },
        { headers: { prefer: 'respond-async' } },
      );
      expect(first.status).toBe(202);
      const location = first.headers.location!;
      expect(location).toBe(`/v1/commands/${segment}`);
      // RFC 3986 §5.2.4 removes dot-segments as posix normalisation does: the Location stays.
      expect(posix.normalize(location)).toBe(location);
      const polled = await call(api, 'GET', location, { token: TOKENS.plant });
      expect(polled.status).toBe(200);
      expect(polled.json).toMatchObject({ key: k });
    }
  });

  it('caps Prefer: wait at maxWaitS and says so', async () => {
    const r = await post(
      key(),
      { device: 'v1', action: 'close' },
      { headers: { prefer: 'wait=999' } },
    );
    expect(r.status).toBe(200);
    expect(r.headers['preference-applied']).toBe('wait=60');
    // delta-seconds past what a number keeps is still a wait, capped the same way.
    const huge = await post(
      key(),
      { device: 'v1', action: 'close' },
      { headers: { prefer: 'wait=99999999999' } },
    );
    expect(huge.status).toBe(200);
    expect(huge.headers['preference-applied']).toBe('wait=60');
  });
});

describe('devices, health, readiness, metrics', () => {
  it('lists every device with its mirror and connectivity, marking what the caller may command', async () => {
    await post(key(), { device: 'v1', action: 'close' });
    const all = await call(api, 'GET', '/v1/devices', { token: TOKENS.ops });
    expect(all.status).toBe(200);
    expect(all.headers['content-type']).toBe('application/json');
    expect(all.headers['cache-control']).toBe('no-store');
    const devices = (all.json as { devices: { id: string; allowed: boolean }[] }).devices;
    expect(devices.map((d) => [d.id, d.allowed]).sort()).toEqual([
      ['u1', false],
      ['v1', false],
      ['v2', true],
    ]);
    const v1 = await call(api, 'GET', '/v1/devices/v1', { token: TOKENS.plant });
    expect(v1.status).toBe(200);
    expect(v1.json).toMatchObject({
      id: 'v1',
      profile: 'valve',
      allowed: true,
      mirror: { state: 'CLOSED', faultCode: null },
      connectivity: { connected: true },
      queued: 0,
      inFlight: null,
    });
    const body = v1.json as {
      readbackAgeMs: number;
      mirror: { sourceTime: string | null };
      connectivity: { lastGoodReadAt: string };
      skew: unknown;
    };
    expect(body.readbackAgeMs).toBeGreaterThanOrEqual(0);
    expect(typeof (v1.json.connectivity as { errorCount: unknown }).errorCount).toBe('number');
    expect(Number.isNaN(Date.parse(body.connectivity.lastGoodReadAt))).toBe(false);
    expect(body.skew === null || typeof body.skew === 'object').toBe(true);
  });

  it('serves /healthz, /readyz and /metrics without credentials', async () => {
    const health = await call(api, 'GET', '/healthz');
    expect(health.status).toBe(200);
    expect(health.json).toEqual({ status: 'ok' });
    const isReady = await call(api, 'GET', '/readyz');
    expect(isReady.status).toBe(200);
    expect(isReady.json).toMatchObject({ status: 'ready', checks: { journal: { ok: true } } });
    ready = false;
    try {
      const notReady = await call(api, 'GET', '/readyz');
      expect(notReady.status).toBe(503);
      expect(notReady.json).toMatchObject({
        status: 'not ready',
        checks: { journal: { ok: false, detail: 'SQLITE_BUSY' } },
      });
    } finally {
      ready = true;
    }
    const metrics = await call(api, 'GET', '/metrics');
    expect(metrics.status).toBe(200);
    expect(metrics.headers['content-type']).toMatch(/^text\/plain/);
    expect(metrics.text).toContain('sluice_http_responses_total{route="/healthz",status="200"}');
    expect(metrics.text).toMatch(
      /sluice_commands_received_total\{intake="https",outcome="new"\} \d+/,
    );
  });
});

describe('429: per-identity rate limit', () => {
  it('limits one identity after its burst, with Retry-After, and not the others; the refill runs on the monotonic clock', async () => {
    // The test's clock: its wall and monotonic readings step apart (SPEC §6).
    const shift = { wall: 0, mono: 0 };
    const clock: Clock = {
      ...systemClock,
      now: () => systemClock.now() + shift.wall,
      elapsed: () => 1_000_000 + shift.mono,
    };
    const limited = await startIntake(stack, pki, {
      https: { rateLimit: { perSecond: 0.5, burst: 2 } },
      clock,
    });
    try {
      const get = (token: string): ReturnType<typeof call> =>
        call(limited, 'GET', '/v1/devices', { token });
      expect((await get(TOKENS.plant)).status).toBe(200);
      expect((await get(TOKENS.plant)).status).toBe(200);
      const third = await get(TOKENS.plant);
      expectProblem(third, 429, 'RATE_LIMITED');
      expect(third.headers['retry-after']).toBe('2');
      expect((await get(TOKENS.ops)).status).toBe(200);
      expect((await call(limited, 'GET', '/healthz')).status).toBe(200);
      // The gateway's wall clock stepped an hour forward: no time passed, nothing refilled
      // (on the wall clock the bucket was full again: a burst past the limit after every step).
      shift.wall += 3_600_000;
      const stepped = await get(TOKENS.plant);
      expectProblem(stepped, 429, 'RATE_LIMITED');
      expect(stepped.headers['retry-after']).toBe('2');
      // And two hours back: the refill due still comes.
      shift.wall -= 7_200_000;
      shift.mono += 1_000;
      const half = await get(TOKENS.plant);
      expect(half.status).toBe(429);
      expect(half.headers['retry-after']).toBe('1');
      shift.mono += 1_000;
      expect((await get(TOKENS.plant)).status).toBe(200);
    } finally {
      await limited.stop();
    }
  });
});

describe('TLS', () => {
  it('refuses a TLS 1.2 client at the handshake', async () => {
    await expect(call(api, 'GET', '/healthz', { maxVersion: 'TLSv1.2' })).rejects.toThrow(
      /version|alert|ECONNRESET|socket/i,
    );
    expect((await call(api, 'GET', '/healthz')).status).toBe(200);
  });

  it('maps a client certificate from the configured CA to its identity (mutual TLS)', async () => {
    const identities = new IdentityRegistry({
      plant: { tokenSha256: sha256(TOKENS.plant).toString('hex'), devices: ['*'] },
      scada: { certificateCn: 'scada-1', devices: ['v1'] },
    });
    const mtls = await startIntake(stack, pki, { identities, mutualTls: true });
    try {
      const scada = await pki.client('scada-1');
      const listed = await call(mtls, 'GET', '/v1/devices', { clientCert: scada });
      expect(listed.status).toBe(200);
      const allowed = (listed.json as { devices: { id: string; allowed: boolean }[] }).devices
        .filter((d) => d.allowed)
        .map((d) => d.id);
      expect(allowed).toEqual(['v1']);
      const k = key();
      const command = await call(mtls, 'POST', '/v1/commands', {
        clientCert: scada,
        json: { device: 'v1', action: 'close' },
        headers: { 'idempotency-key': k },
      });
      expect(command.status).toBe(200);
      expect(stack.pipeline.get({ scope: 'scada', key: k })?.state).toBe('confirmed');

      // A token still works without a certificate.
      expect((await call(mtls, 'GET', '/v1/devices', { token: TOKENS.plant })).status).toBe(200);

      const foreign = await pki.client('scada-1', { ca: await pki.foreignCa() });
      const refused = await call(mtls, 'GET', '/v1/devices', { clientCert: foreign });
      expectProblem(refused, 401, 'UNAUTHORIZED');
      expect((refused.json as { detail: string }).detail).toMatch(/certificate was not accepted/);

      const expired = await pki.client('scada-1', { expired: true });
      const late = await call(mtls, 'GET', '/v1/devices', { clientCert: expired });
      expectProblem(late, 401, 'UNAUTHORIZED');
      expect((late.json as { detail: string }).detail).toMatch(/CERT_HAS_EXPIRED/);

      const stranger = await pki.client('nobody');
      expectProblem(
        await call(mtls, 'GET', '/v1/devices', { clientCert: stranger }),
        401,
        'UNAUTHORIZED',
      );
      expectProblem(await call(mtls, 'GET', '/v1/devices'), 401, 'UNAUTHORIZED');
    } finally {
      await mtls.stop();
    }
  });
});
