import { randomUUID } from 'node:crypto';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { commitFaults } from '../helpers/commit-faults.js';
import { startStack, TOKENS, type Stack } from '../helpers/stack.js';
import {
  call,
  makePki,
  startIntake,
  until,
  type CallOptions,
  type HttpResult,
  type Pki,
  type RunningIntake,
} from './https-client.js';

/**
 * A request waiting for its command's outcome (`Prefer: wait`) whose claim was lost with its
 * batch (its COMMIT failed) while the command waited in its device's queue, the same identity
 * then claiming the key again for another command: the request waits for its own claim, and is
 * answered 503 JOURNAL_UNAVAILABLE ("send it again") as for any lost claim. It waited on the key
 * alone and was answered with the other command's outcome: 200 `confirmed` with the close's
 * body for an open never journaled, or, its wait ending first, 202 with a Location for it (I5:
 * acknowledged without a journal entry).
 *
 * The real HTTPS intake over TLS, the pipeline, SQLite journal and sluice-sim. One double, for
 * what no filesystem here times on demand: the failure of exactly one COMMIT
 * (test/helpers/commit-faults.ts: an I/O error that clears at once; a full or read-only
 * filesystem fails every later write too, and the key could not be claimed again). Ground
 * truth: what the client received, and the journal.
 */

let pki: Pki;
let stack: Stack;
let api: RunningIntake;
const cleanups: (() => Promise<void>)[] = [];
beforeAll(async () => {
  pki = await makePki();
});
afterAll(() => {
  pki.cleanup();
});
afterEach(async () => {
  for (let step = cleanups.pop(); step !== undefined; step = cleanups.pop()) await step();
});

function post(k: string, json: unknown, options: CallOptions = {}): Promise<HttpResult> {
  return call(api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    json,
    ...options,
    headers: { 'idempotency-key': k, ...options.headers },
  });
}

/**
 * v1 travelling (an open, `travelMs` long); then `POST k {v1 open}` waiting `waitS`, its claim
 * queued behind the travel, its batch lost at its COMMIT. Returns the pending answer and the key.
 */
async function lostWhileWaiting(
  travelMs: number,
  waitS: number,
): Promise<{ readonly answer: Promise<HttpResult>; readonly k: string }> {
  stack = await startStack({ travelMs, opcua: false });
  cleanups.push(() => stack.stop());
  api = await startIntake(stack, pki);
  cleanups.push(() => api.stop());
  const writes = (): number => stack.plant.device('v1').counters.writesReceived;
  const busy = await post(
    `busy-${randomUUID()}`,
    { device: 'v1', action: 'open' },
    { headers: { prefer: 'respond-async' } },
  );
  expect(busy.status).toBe(202);
  await until(() => writes() === 1, 10_000, 'the travelling open written');
  await stack.pipeline.durable();
  const k = `k-${randomUUID()}`;
  const faults = commitFaults(stack.journal);
  const failed = faults.failed;
  faults.failNext();
  const answer = post(
    k,
    { device: 'v1', action: 'open' },
    { headers: { prefer: `wait=${String(waitS)}` } },
  );
  await until(() => faults.failed > failed, 10_000, "the open's COMMIT failed");
  expect(stack.journal.get({ scope: 'plant', key: k })).toBeUndefined();
  return { answer, k };
}

describe('HTTPS: a request waiting for a command whose claim was lost', () => {
  it('is answered 503, not with the outcome of the command claimed under its key since', async () => {
    const { answer, k } = await lostWhileWaiting(2_000, 10);
    const close = await post(
      k,
      { device: 'v1', action: 'close' },
      { headers: { prefer: 'wait=10' } },
    );
    expect(close.status).toBe(200);
    expect(close.json).toMatchObject({ action: 'close', state: 'confirmed' });
    const open = await answer;
    expect(open.status).toBe(503);
    expect(open.json).toMatchObject({ code: 'JOURNAL_UNAVAILABLE' });
    expect(open.headers.location).toBeUndefined();
    expect(stack.journal.findByKey(k).map((r) => [r.action, r.state])).toEqual([
      ['close', 'confirmed'],
    ]);
  }, 60_000);

  it('is answered 503 at the end of its wait, not 202 for the command claimed since', async () => {
    // The travel outlasts the open's wait: the close claimed since is still `accepted` then.
    const { answer, k } = await lostWhileWaiting(8_000, 3);
    const close = await post(
      k,
      { device: 'v1', action: 'close' },
      { headers: { prefer: 'respond-async' } },
    );
    expect(close.status).toBe(202);
    const open = await answer;
    expect(open.status).toBe(503);
    expect(open.json).toMatchObject({ code: 'JOURNAL_UNAVAILABLE' });
    expect(open.headers.location).toBeUndefined();
    expect(stack.journal.findByKey(k).map((r) => [r.action, r.state])).toEqual([
      ['close', 'accepted'],
    ]);
  }, 60_000);
});
