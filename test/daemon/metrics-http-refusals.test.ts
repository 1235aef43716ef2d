import { connect } from 'node:tls';
import { pino } from 'pino';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeTokenSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, RawJson } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * Requests the HTTPS intake refuses before any route runs, in `sluice_http_responses_total` of a
 * real daemon, read over HTTPS: those its body parser refuses (malformed JSON, the wrong media
 * type, a body past the limit: route known), those its router cannot read (a malformed
 * percent-encoding, an over-long path segment: route `unmatched`) and those Node's HTTP parser
 * refuses before there is a request (an unknown method, headers too large, a forbidden byte in a
 * header: route `unparsed`). The last two were answered and never counted: a client or a
 * scanner sending garbage left no trace in /metrics.
 */

const TOKEN = 'refusals-metrics-token';

let plant: Plant;
let daemon: Daemon;
let cert: string;
let cleanup: () => void;

/** Writes `text` on a TLS connection of its own; resolves with the status of the answer. */
function raw(text: string | Buffer): Promise<number> {
  return new Promise((resolve, reject) => {
    const socket = connect(
      { host: '127.0.0.1', port: daemon.https!.port, ca: cert, servername: 'localhost' },
      () => socket.end(text),
    );
    let answer = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => (answer += chunk));
    socket.once('error', reject);
    socket.once('close', () => {
      const m = /^HTTP\/1\.1 (\d{3}) /.exec(answer);
      if (m === null) reject(new Error(`no HTTP answer: ${JSON.stringify(answer.slice(0, 80))}`));
      else resolve(Number(m[1]));
    });
  });
}

/** A request with the token, Connection: close; `lines` are more header lines and the body. */
function request(head: string, ...lines: string[]): string {
  return `${head} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer ${TOKEN}\r\nConnection: close\r\n${lines.join('\r\n')}`;
}

/** `sluice_http_responses_total` by "route status". */
async function responses(): Promise<Map<string, number>> {
  const scrape = await httpsRequest(
    { port: daemon.https!.port, ca: cert, token: '' },
    'GET',
    '/metrics',
  );
  expect(scrape.status).toBe(200);
  const counts = new Map<string, number>();
  for (const m of scrape.body.matchAll(
    /^sluice_http_responses_total\{route="([^"]*)",status="(\d+)"\} (\S+)$/gm,
  )) {
    counts.set(`${m[1]} ${m[2]}`, Number(m[3]));
  }
  return counts;
}

beforeAll(async () => {
  const made = tempDir('sluice-metrics-refusals-');
  cleanup = made.cleanup;
  plant = await startModbusPlant({ v1: { profile: 'valve', base: 0, travelMs: 200 } });
  let configPath: string;
  ({ configPath, cert } = await writeTokenSite(made.dir, plant, {
    gatewayId: 'refusals',
    token: TOKEN,
  }));
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

it('counts every refused request in sluice_http_responses_total, with its status', async () => {
  const target = { port: daemon.https!.port, ca: cert, token: TOKEN };
  // The body parser's refusals: after routing, through fastify's hooks.
  const malformed = await httpsRequest(
    target,
    'POST',
    '/v1/commands',
    { 'idempotency-key': 'r-1' },
    new RawJson('{"device":'),
  );
  expect(malformed.status).toBe(400);
  const tooLarge = await httpsRequest(
    target,
    'POST',
    '/v1/commands',
    { 'idempotency-key': 'r-2' },
    new RawJson(`{"device":"${'x'.repeat(200_000)}"}`),
  );
  expect(tooLarge.status).toBe(413);
  expect(
    await raw(
      request(
        'POST /v1/commands',
        'Idempotency-Key: r-3',
        'Content-Type: text/plain',
        'Content-Length: 4',
        '',
        'open',
      ),
    ),
  ).toBe(415);
  // The router's: a path it cannot decode, a segment past its limit.
  expect(await raw(request('GET /v1/commands/%E0%A4%A', '', ''))).toBe(400);
  expect(await raw(request(`GET /v1/commands/${'k'.repeat(2_000)}`, '', ''))).toBe(414);
  // Node's HTTP parser's, before a request exists.
  expect(await raw(request('FETCH /v1/devices', '', ''))).toBe(501);
  expect(await raw(request('GET /v1/devices', `X-Filler: ${'a'.repeat(20_000)}`, '', ''))).toBe(
    431,
  );
  expect(await raw(request('GET /v1/devices', 'X-Bad: a\u0001b', '', ''))).toBe(400);

  const expected = new Map([
    ['/v1/commands 400', 1],
    ['/v1/commands 413', 1],
    ['/v1/commands 415', 1],
    ['unmatched 400', 1],
    ['unmatched 414', 1],
    ['unparsed 501', 1],
    ['unparsed 431', 1],
    ['unparsed 400', 1],
  ]);
  // fastify counts its responses once they are finished, which may follow the client's read.
  const counted = await until(
    async () => {
      const now = await responses();
      return [...expected.keys()].every((k) => now.has(k)) ? now : undefined;
    },
    5_000,
    'every refusal counted',
  );
  // Each once, and nothing else but the scrapes themselves.
  counted.delete('/metrics 200');
  expect(counted).toEqual(expected);
});

it('counts a command body refused by the parser as a command refused, as one refused by its route', async () => {
  const target = { port: daemon.https!.port, ca: cert, token: TOKEN };
  const refused = async (): Promise<number> => {
    const scrape = await httpsRequest(
      { port: daemon.https!.port, ca: cert, token: '' },
      'GET',
      '/metrics',
    );
    const m = /^sluice_commands_received_total\{intake="https",outcome="refused"\} (\S+)$/m.exec(
      scrape.body,
    );
    return m === null ? 0 : Number(m[1]);
  };
  const before = await refused();
  const answers = [
    // Refused by the body parser, before the route: not JSON, a member twice, not UTF-8, the
    // wrong media type, past the body limit.
    await httpsRequest(
      target,
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'p-1' },
      new RawJson('{'),
    ),
    await httpsRequest(
      target,
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'p-2' },
      new RawJson('{"device":"v1","action":"open","action":"close"}'),
    ),
    // A JSON string whose one byte is 0xFF, which UTF-8 never has.
    await raw(
      Buffer.concat([
        Buffer.from(
          request(
            'POST /v1/commands',
            'Idempotency-Key: p-3',
            'Content-Type: application/json',
            'Content-Length: 3',
            '',
            '',
          ),
        ),
        Buffer.from([0x22, 0xff, 0x22]),
      ]),
    ),
    await raw(
      request(
        'POST /v1/commands',
        'Idempotency-Key: p-4',
        'Content-Type: text/plain',
        'Content-Length: 4',
        '',
        'open',
      ),
    ),
    await httpsRequest(
      target,
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'p-5' },
      new RawJson(`{"device":"${'x'.repeat(200_000)}"}`),
    ),
    // Refused by the route: no key.
    await httpsRequest(target, 'POST', '/v1/commands', {}, { device: 'v1', action: 'open' }),
  ].map((a) => (typeof a === 'number' ? a : a.status));
  expect(answers).toEqual([400, 400, 400, 415, 413, 400]);
  // Counted before each answer was written.
  expect((await refused()) - before).toBe(6);
});
