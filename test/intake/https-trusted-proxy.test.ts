import { afterAll, beforeAll, expect, it } from 'vitest';
import { startStack, TOKENS, type Stack } from '../helpers/stack.js';
import {
  call,
  makePki,
  memoryLogger,
  startIntake,
  type Pki,
  type RunningIntake,
} from './https-client.js';

/**
 * The failed-token bound behind a reverse proxy (https.trustedProxies), against the real intake
 * over TLS on loopback, with sluice-sim and the SQLite journal under it. Every client behind a
 * proxy reaches the gateway from the proxy's address: counted by that address, one client
 * whose token keeps failing held the proxy, and with it every client behind it, a plant
 * system's commands refused 429. From a proxy the site names, the client's address is the last
 * hop of its X-Forwarded-For (the one the proxy wrote: what a client wrote before it is not
 * believed); from any other address the header is ignored, so a client cannot rotate past the
 * bound by writing it. The proxy is 127.0.0.5, an untrusted client 127.0.0.6.
 */

const PROXY = '127.0.0.5';
const STRANGER = '127.0.0.6';
const WRONG = ['guess-0001', 'guess-0002', 'guess-0003', 'guess-0004', 'guess-0005', 'guess-0006'];

let stack: Stack;
let pki: Pki;
let api: RunningIntake;
const log = memoryLogger();

beforeAll(async () => {
  pki = await makePki();
  stack = await startStack({ opcua: false });
  api = await startIntake(stack, pki, {
    logger: log,
    https: { trustedProxies: [PROXY, '192.0.2.0/24'] },
  });
});

afterAll(async () => {
  await api.stop();
  await stack.stop();
  pki.cleanup();
});

it("behind a trusted proxy, a client whose tokens keep failing is held by its own address, not the proxy's", async () => {
  const guesser = { 'x-forwarded-for': '10.0.0.1' };
  for (const token of WRONG.slice(0, 5)) {
    const answer = await call(api, 'GET', '/v1/devices', {
      token,
      localAddress: PROXY,
      headers: guesser,
    });
    expect(answer.status).toBe(401);
  }
  const held = await call(api, 'GET', '/v1/devices', {
    token: WRONG[5]!,
    localAddress: PROXY,
    headers: guesser,
  });
  expect(held.status).toBe(429);
  // What the client wrote before the proxy's hop is not believed: still its address.
  const prepended = await call(api, 'GET', '/v1/devices', {
    token: WRONG[5]!,
    localAddress: PROXY,
    headers: { 'x-forwarded-for': '10.7.7.7, 10.0.0.1' },
  });
  expect(prepended.status).toBe(429);

  // Another client behind the same proxy: its command is journaled and written once.
  const v2 = stack.plant.device('v2');
  const writes = v2.writeLog.length;
  const other = await call(api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    localAddress: PROXY,
    headers: {
      'x-forwarded-for': '10.0.0.2',
      'idempotency-key': 'behind-proxy-1',
      prefer: 'wait=10',
    },
    json: { device: 'v2', action: 'open' },
  });
  expect(other.status, other.text).toBe(200);
  expect(stack.journal.findByKey('behind-proxy-1').map((r) => r.state)).toEqual(['confirmed']);
  expect(v2.writeLog.length).toBe(writes + 1);
  // Through a second proxy of the trusted range: the client is the hop before it.
  const chained = await call(api, 'GET', '/v1/devices', {
    token: WRONG[0]!,
    localAddress: PROXY,
    headers: { 'x-forwarded-for': '10.0.0.1, 192.0.2.7' },
  });
  expect(chained.status).toBe(429);

  // Said with the client's address.
  const warnings = log.lines.filter((line) => line.includes('too many failed from this address'));
  expect(warnings.map((line) => (JSON.parse(line) as { ip: string }).ip)).toEqual(['10.0.0.1']);
}, 60_000);

it('a hop that is no IP address (a proxy that writes the client port) is counted by the proxy, not each as its own', async () => {
  const proxy = '127.0.0.7';
  const api2 = await startIntake(stack, pki, { https: { trustedProxies: [proxy] } });
  try {
    for (const [i, token] of WRONG.slice(0, 5).entries()) {
      const answer = await call(api2, 'GET', '/v1/devices', {
        token,
        localAddress: proxy,
        headers: { 'x-forwarded-for': `10.0.0.9:${51_000 + i}` },
      });
      expect(answer.status).toBe(401);
    }
    const held = await call(api2, 'GET', '/v1/devices', {
      token: WRONG[5]!,
      localAddress: proxy,
      headers: { 'x-forwarded-for': '10.0.0.9:51999' },
    });
    expect(held.status).toBe(429);
  } finally {
    await api2.stop();
  }
}, 60_000);

it('from an address not named a proxy, X-Forwarded-For is ignored: rotating it does not escape the bound', async () => {
  for (const [i, token] of WRONG.slice(0, 5).entries()) {
    const answer = await call(api, 'GET', '/v1/devices', {
      token,
      localAddress: STRANGER,
      headers: { 'x-forwarded-for': `10.9.0.${i + 1}` },
    });
    expect(answer.status).toBe(401);
  }
  const held = await call(api, 'GET', '/v1/devices', {
    token: WRONG[5]!,
    localAddress: STRANGER,
    headers: { 'x-forwarded-for': '10.9.0.99' },
  });
  expect(held.status).toBe(429);
  const warnings = log.lines.filter((line) => line.includes('too many failed from this address'));
  expect(JSON.parse(warnings.at(-1)!)).toMatchObject({ ip: STRANGER });
}, 60_000);
