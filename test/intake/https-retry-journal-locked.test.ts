import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { startStack, TOKENS, type Stack } from '../helpers/stack.js';
import {
  call,
  makePki,
  startIntake,
  until,
  type HttpResult,
  type Pki,
  type RunningIntake,
} from './https-client.js';

/**
 * A retry of a key the journal holds, while another program holds the journal's write lock (a
 * sqlite3 shell or a backup in `BEGIN IMMEDIATE`: here a second SQLite connection to the
 * journal file, the lock itself, no double), is answered as the duplicate it is: a settled
 * key's replay, an open key's 503 with its key, state and Location (the command goes on), a
 * different command under the key its 422. It used to be answered 503 "nothing was accepted or
 * written", without the key: the claim's duplicate event could not be journaled, and the
 * client was invited to send the command again under a new key (a second actuation). Real
 * HTTPS intake, pipeline, SQLite journal and simulated PLC; the ground truth is what the client
 * received and the simulator's write log.
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

async function setUp(travelMs: number): Promise<void> {
  stack = await startStack({ opcua: false, travelMs, timing: { confirmTimeoutMs: 10_000 } });
  cleanups.push(() => stack.stop());
  api = await startIntake(stack, pki);
  cleanups.push(() => api.stop());
}

function post(
  key: string,
  json: unknown,
  headers: Record<string, string> = {},
): Promise<HttpResult> {
  return call(api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    json,
    headers: { 'idempotency-key': key, ...headers },
  });
}

/** `request` sent while a second connection to the journal file holds its write lock. */
async function whileLocked<T>(request: () => Promise<T>): Promise<T> {
  const lock = new Database(stack.journalPath);
  try {
    lock.exec('BEGIN IMMEDIATE');
    return await request();
  } finally {
    if (lock.inTransaction) lock.exec('ROLLBACK');
    lock.close();
  }
}

const writeLog = () => stack.plant.device('v1').writeLog;

it('a retry of a command written and still in flight is answered 503 with its key, state and Location, and the command goes on: one write', async () => {
  await setUp(2_000);
  const k = `k-${randomUUID()}`;
  const open = { device: 'v1', action: 'open' };
  const first = await post(k, open, { prefer: 'respond-async' });
  expect(first.status).toBe(202);
  await until(() => writeLog().length === 1, 5_000, 'the write at the PLC');

  const retry = await whileLocked(() => post(k, open, { prefer: 'respond-async' }));
  expect(retry.status).toBe(503);
  expect(retry.json).toMatchObject({ code: 'JOURNAL_UNAVAILABLE', key: k, state: 'dispatched' });
  expect(retry.json.detail).not.toContain('nothing was accepted');
  expect(retry.json.detail).toContain('goes on');
  expect(retry.json.detail).toContain('never with a new key');
  expect(retry.headers.location).toBe(`/v1/commands/${k}`);
  expect(retry.headers['retry-after']).toBe('1');

  // What it said holds: the command goes on and is confirmed, from its one write.
  let settled = await call(api, 'GET', retry.headers.location!, { token: TOKENS.plant });
  await until(
    async () => {
      settled = await call(api, 'GET', retry.headers.location!, { token: TOKENS.plant });
      return settled.json.state !== 'dispatched';
    },
    10_000,
    'the command settled',
  );
  expect(settled.json).toMatchObject({ state: 'confirmed', code: 'OK' });
  expect(writeLog()).toHaveLength(1);
  expect(writeLog()[0]!.seq).toBe(settled.json.seq);
});

it('a retry of a confirmed command is replayed byte for byte, and one of another command under its key is 422: one write', async () => {
  await setUp(200);
  const k = `k-${randomUUID()}`;
  const open = { device: 'v1', action: 'open' };
  const first = await post(k, open);
  expect(first.status).toBe(200);
  expect(first.json).toMatchObject({ key: k, state: 'confirmed' });

  const [replay, reuse] = await whileLocked(async () => [
    await post(k, open),
    await post(k, { device: 'v1', action: 'close' }),
  ]);
  expect(replay.status).toBe(200);
  expect(replay.headers['idempotent-replayed']).toBe('true');
  expect(replay.body.equals(first.body)).toBe(true);
  expect(reuse.status).toBe(422);
  expect(reuse.json).toMatchObject({ code: 'IDEMPOTENCY_KEY_REUSED', key: k });

  expect(writeLog()).toHaveLength(1);
  expect(writeLog()[0]!.seq).toBe(first.json.seq);
});
