import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
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
 * Failed bearer tokens on `/v1`, against the real intake over TLS on loopback, with sluice-sim
 * and the SQLite journal under it: after five failures within a minute from one address, its
 * requests that present a token are answered `429 RATE_LIMITED` with `Retry-After`, a correct
 * token too, and nothing they carry is journaled or written; another address (127.0.0.2, a
 * client of its own on loopback) is untouched, its correct token served and its command written
 * once. An identity whose token was accepted from the held address before its hold is still
 * served there: a plant system beside a client left with a rotated token goes on commanding. Without the bound a client could guess tokens as fast as the gateway answered. The
 * address is logged once when it is held, never a token, and the refusals are counted. The
 * window ends on the intake's monotonic clock, moved on here rather than waited for.
 */

const WRONG = ['guess-0001', 'guess-0002', 'guess-0003', 'guess-0004', 'guess-0005', 'guess-0006'];
const OTHER = '127.0.0.2';

let stack: Stack;
let pki: Pki;
let api: RunningIntake;
const log = memoryLogger();
/** The intake's clock: the system's, its monotonic time moved on by `ahead`. */
let ahead = 0;
const clock: Clock = {
  now: () => systemClock.now(),
  elapsed: () => systemClock.elapsed() + ahead,
  sleep: (ms, signal) => systemClock.sleep(ms, signal),
};

beforeAll(async () => {
  pki = await makePki();
  stack = await startStack({ opcua: false });
  api = await startIntake(stack, pki, { logger: log, clock });
});

afterAll(async () => {
  await api.stop();
  await stack.stop();
  pki.cleanup();
});

async function refusals429(): Promise<number> {
  const metric = await stack.metrics.httpResponses.get();
  return metric.values
    .filter((v) => v.labels.status === '429')
    .reduce((sum, v) => sum + v.value, 0);
}

it('an address whose tokens keep failing is held 429 for a while; another address is not', async () => {
  const counted = await refusals429();
  for (const token of WRONG.slice(0, 5)) {
    const answer = await call(api, 'GET', '/v1/devices', { token });
    expect(answer.status).toBe(401);
  }
  // The sixth guess is not looked at.
  const held = await call(api, 'GET', '/v1/devices', { token: WRONG[5]! });
  expect(held.status).toBe(429);
  expect(held.json.code).toBe('RATE_LIMITED');
  const retryAfter = Number(held.headers['retry-after']);
  expect(retryAfter).toBeGreaterThanOrEqual(1);
  expect(retryAfter).toBeLessThanOrEqual(60);

  // A correct token from the held address waits too: its command is neither journaled nor
  // written.
  const v2 = stack.plant.device('v2');
  const writes = v2.writeLog.length;
  const fromHeld = await call(api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    headers: { 'idempotency-key': 'from-held-1' },
    json: { device: 'v2', action: 'open' },
  });
  expect(fromHeld.status).toBe(429);
  expect(stack.journal.findByKey('from-held-1')).toEqual([]);

  // Another address: its correct token is served, its command written once.
  const fromOther = await call(api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    localAddress: OTHER,
    headers: { 'idempotency-key': 'from-other-1', prefer: 'wait=10' },
    json: { device: 'v2', action: 'open' },
  });
  expect(fromOther.status, fromOther.text).toBe(200);
  expect(stack.journal.findByKey('from-other-1').map((r) => r.state)).toEqual(['confirmed']);
  expect(v2.writeLog.length).toBe(writes + 1);
  // Its own failures are its own count.
  const otherWrong = await call(api, 'GET', '/v1/devices', {
    token: WRONG[0]!,
    localAddress: OTHER,
  });
  expect(otherWrong.status).toBe(401);

  // A request from the held address that presents no token guesses nothing: answered as before.
  expect((await call(api, 'GET', '/v1/devices')).status).toBe(401);
  expect((await call(api, 'GET', '/healthz')).status).toBe(200);

  // Counted with the intake's responses, and said once, with the address and never a token.
  expect(await refusals429()).toBe(counted + 2);
  const warnings = log.lines.filter((line) => line.includes('too many failed from this address'));
  expect(warnings).toHaveLength(1);
  expect(JSON.parse(warnings[0]!)).toMatchObject({
    level: 'warn',
    ip: '127.0.0.1',
    route: '/v1/devices',
  });
  for (const secret of [...WRONG, TOKENS.plant]) expect(log.lines.join('\n')).not.toContain(secret);

  // Once the oldest failure is a window old, the address is served again.
  ahead += 61_000;
  const later = await call(api, 'GET', '/v1/devices', { token: TOKENS.plant });
  expect(later.status).toBe(200);
}, 60_000);

it('an identity accepted from an address before its hold is served there; another identity is held', async () => {
  const SHARED = '127.0.0.3';
  const v2 = stack.plant.device('v2');
  // The plant system on this address is served, as every day.
  const before = await call(api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    localAddress: SHARED,
    headers: { 'idempotency-key': 'shared-before-1', prefer: 'wait=10' },
    json: { device: 'v2', action: 'close' },
  });
  expect(before.status, before.text).toBe(200);
  // Beside it, a client whose token was rotated away retries: the address is held.
  for (const token of WRONG.slice(0, 5)) {
    expect((await call(api, 'GET', '/v1/devices', { token, localAddress: SHARED })).status).toBe(
      401,
    );
  }
  const guess = await call(api, 'GET', '/v1/devices', { token: WRONG[5]!, localAddress: SHARED });
  expect(guess.status).toBe(429);

  // The plant system goes on: its command is journaled, confirmed and written once.
  const writes = v2.writeLog.length;
  const during = await call(api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    localAddress: SHARED,
    headers: { 'idempotency-key': 'shared-during-1', prefer: 'wait=10' },
    json: { device: 'v2', action: 'open' },
  });
  expect(during.status, during.text).toBe(200);
  expect(stack.journal.findByKey('shared-during-1').map((r) => r.state)).toEqual(['confirmed']);
  expect(v2.writeLog.length).toBe(writes + 1);

  // A correct token of an identity never accepted from here is answered as a guess is.
  const ops = await call(api, 'POST', '/v1/commands', {
    token: TOKENS.ops,
    localAddress: SHARED,
    headers: { 'idempotency-key': 'shared-ops-1' },
    json: { device: 'v2', action: 'close' },
  });
  expect(ops.status).toBe(429);
  expect(stack.journal.findByKey('shared-ops-1')).toEqual([]);
  expect(v2.writeLog.length).toBe(writes + 1);
}, 60_000);
