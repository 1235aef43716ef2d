import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { startStack, TOKENS, type Stack } from '../helpers/stack.js';
import { call, makePki, startIntake, type Pki, type RunningIntake } from './https-client.js';

/**
 * A stop is never refused by the per-identity rate limit, against the real intake over TLS on
 * loopback, with sluice-sim and the SQLite journal under it. An identity that has spent its
 * bucket (as one polling its commands every second, as their 202's Retry-After says, does) is
 * answered 429 RATE_LIMITED for its reads and its other commands, and nothing such a command
 * carries is journaled; its stop is taken, journaled and answered with its outcome (the valve is
 * closed: a no-op, confirmed by a readback). A stop takes a token when one is left: the read
 * after it is refused. The refill runs on the intake's monotonic clock, held still here and
 * moved on by the test rather than waited for.
 */

let stack: Stack;
let pki: Pki;
let api: RunningIntake;
/** The intake's monotonic time moved on by `ahead`, and otherwise still: nothing refills. */
let ahead = 0;
const clock: Clock = {
  now: () => systemClock.now(),
  elapsed: () => 1_000_000 + ahead,
  sleep: (ms, signal) => systemClock.sleep(ms, signal),
};

beforeAll(async () => {
  pki = await makePki();
  stack = await startStack({ opcua: false });
  api = await startIntake(stack, pki, {
    https: { rateLimit: { perSecond: 0.5, burst: 2 } },
    clock,
  });
});

afterAll(async () => {
  await api.stop();
  await stack.stop();
  pki.cleanup();
});

function post(key: string, action: string): ReturnType<typeof call> {
  return call(api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    json: { device: 'v1', action },
    headers: { 'idempotency-key': key },
  });
}

const poll = (): ReturnType<typeof call> =>
  call(api, 'GET', `/v1/commands/poll-${randomUUID()}`, { token: TOKENS.plant });

it('an identity over its rate limit is refused its reads and commands, never its stop', async () => {
  // The bucket's two tokens go to two polls (a key with no command: 404); the third is refused.
  expect((await poll()).status).toBe(404);
  expect((await poll()).status).toBe(404);
  const refused = await poll();
  expect(refused.status).toBe(429);
  expect(refused.json).toMatchObject({ code: 'RATE_LIMITED' });
  expect(refused.headers['retry-after']).toBe('2');

  // A close is refused at the door as before, and nothing of it is journaled.
  const closeKey = `close-${randomUUID()}`;
  const close = await post(closeKey, 'close');
  expect(close.status).toBe(429);
  expect(close.json).toMatchObject({ code: 'RATE_LIMITED' });
  expect(close.headers['retry-after']).toBe('2');
  expect(stack.journal.findByKey(closeKey)).toEqual([]);

  // The stop is taken with the bucket empty.
  const stopKey = `stop-${randomUUID()}`;
  const stop = await post(stopKey, 'stop');
  expect(stop.status, stop.text).toBe(200);
  expect(stop.json).toMatchObject({ key: stopKey, action: 'stop', state: 'confirmed' });
  expect(stack.journal.findByKey(stopKey)).toMatchObject([
    { key: stopKey, action: 'stop', state: 'confirmed' },
  ]);

  // One token refilled: the stop takes it, and the poll after it finds none.
  ahead += 2_000;
  const second = await post(`stop-${randomUUID()}`, 'stop');
  expect(second.status, second.text).toBe(200);
  expect((await poll()).status).toBe(429);
});
