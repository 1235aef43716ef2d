import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { commitFaults } from '../helpers/commit-faults.js';
import { failFdatasync } from '../helpers/failing-fdatasync.js';
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
 * The HTTPS intake's command outcomes (SPEC §4) against the simulated plant over real sockets:
 * each test gets a fresh plant, journal and intake, and counts the writes that reached the
 * controller (the ground truth for I1). The plant is the Modbus PLC alone: no test here
 * addresses the OPC UA valve, whose server and session would cost most of each test's CPU.
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

async function setUp(options: Parameters<typeof startStack>[0] = {}): Promise<void> {
  stack = await startStack({ ...options, opcua: false });
  cleanups.push(() => stack.stop());
  api = await startIntake(stack, pki);
  cleanups.push(() => api.stop());
}

const key = (): string => `k-${randomUUID()}`;
const writes = (device: string): number => stack.plant.device(device).counters.writesReceived;

function post(k: string, json: unknown, options: CallOptions = {}): Promise<HttpResult> {
  return call(api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    json,
    ...options,
    headers: { 'idempotency-key': k, ...options.headers },
  });
}

function get(path: string, token: string = TOKENS.plant): Promise<HttpResult> {
  return call(api, 'GET', path, { token });
}

async function settledAt(location: string): Promise<HttpResult> {
  let last = await get(location);
  await until(
    async () => {
      last = await get(location);
      return ['confirmed', 'rejected', 'failed'].includes(String(last.json.state));
    },
    10_000,
    `${location} to settle`,
  );
  return last;
}

function expectProblem(r: HttpResult, status: number, code: string): void {
  expect(r.status).toBe(status);
  expect(r.headers['content-type']).toBe('application/problem+json');
  expect(r.json).toMatchObject({ status, code });
}

describe('200 confirmed and replays', () => {
  it('confirms an open, then replays the identical bytes with Idempotent-Replayed', async () => {
    await setUp();
    const k = key();
    const r = await post(k, { device: 'v1', action: 'open' });
    expect(r.status).toBe(200);
    expect(r.headers['content-type']).toBe('application/json');
    expect(r.headers['idempotent-replayed']).toBeUndefined();
    expect(r.json).toMatchObject({
      key: k,
      device: 'v1',
      action: 'open',
      state: 'confirmed',
      code: 'OK',
      faultCode: null,
      observed: { state: 'OPEN', position: 100 },
      replayed: false,
    });
    expect(writes('v1')).toBe(1);

    const again = await post(k, { device: 'v1', action: 'open' });
    expect(again.status).toBe(200);
    expect(again.headers['idempotent-replayed']).toBe('true');
    expect(again.headers['content-type']).toBe(r.headers['content-type']);
    expect(again.body.equals(r.body)).toBe(true);
    expect(writes('v1')).toBe(1);
    const third = await post(k, { device: 'v1', action: 'open' });
    expect(third.body.equals(r.body)).toBe(true);

    const shown = await get(`/v1/commands/${k}`);
    expect(shown.status).toBe(200);
    expect(shown.json).toMatchObject({ key: k, state: 'confirmed' });
    const history = (
      shown.json as {
        history: { at: string; from: string | null; to: string; intake: string; detail: string }[];
      }
    ).history;
    expect(history.slice(0, 3).map((e) => e.to)).toEqual(['accepted', 'dispatched', 'confirmed']);
    expect(history[0]).toMatchObject({ from: null, intake: 'https' });
    expect(history.every((e) => !Number.isNaN(Date.parse(e.at)))).toBe(true);
    // The two replays are in the history as one duplicate event that counts them, its time
    // the last one's.
    expect(history.length).toBe(4);
    expect(history[3]).toMatchObject({ from: 'confirmed', to: 'confirmed', intake: 'https' });
    expect(history[3]?.detail).toMatch(/^duplicate ×2 \(first \d{4}-\S+Z\)$/);
    expect(Date.parse(history[3]?.at ?? '')).toBeGreaterThanOrEqual(
      Date.parse(/first (\S+)\)/.exec(history[3]?.detail ?? '')?.[1] ?? ''),
    );

    const metrics = await call(api, 'GET', '/metrics');
    expect(metrics.text).toMatch(
      /sluice_commands_received_total\{intake="https",outcome="new"\} 1/,
    );
    expect(metrics.text).toMatch(
      /sluice_commands_received_total\{intake="https",outcome="replayed"\} 2/,
    );
    expect(metrics.text).toContain(
      'sluice_http_responses_total{route="/v1/commands",status="200"} 3',
    );
  });
});

describe('202 accepted', () => {
  it('answers at once with Prefer: respond-async, then settles at its Location', async () => {
    await setUp();
    const k = key();
    const r = await post(
      k,
      { device: 'v1', action: 'open' },
      { headers: { prefer: 'respond-async' } },
    );
    expect(r.status).toBe(202);
    expect(r.headers['preference-applied']).toBe('respond-async');
    expect(r.headers.location).toBe(`/v1/commands/${k}`);
    expect(r.headers['retry-after']).toBe('1');
    expect(['accepted', 'dispatched']).toContain(r.json.state);
    const settled = await settledAt(r.headers.location!);
    expect(settled.json).toMatchObject({ state: 'confirmed', observed: { state: 'OPEN' } });
    const replay = await post(k, { device: 'v1', action: 'open' });
    expect(replay.status).toBe(200);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(writes('v1')).toBe(1);
  });
});

describe('409 IN_PROGRESS', () => {
  it('answers a retry while the original is in flight with Retry-After and Location', async () => {
    await setUp();
    const k = key();
    const first = await post(
      k,
      { device: 'v1', action: 'open' },
      { headers: { prefer: 'respond-async' } },
    );
    expect(first.status).toBe(202);
    const retry = await post(k, { device: 'v1', action: 'open' });
    expectProblem(retry, 409, 'IN_PROGRESS');
    expect(retry.headers['retry-after']).toBe('1');
    expect(retry.headers.location).toBe(`/v1/commands/${k}`);
    await settledAt(first.headers.location!);
    const later = await post(k, { device: 'v1', action: 'open' });
    expect(later.status).toBe(200);
    expect(writes('v1')).toBe(1);
  });
});

describe('409 rejected', () => {
  it('rejects LOCAL_MODE without a write', async () => {
    await setUp();
    const valve = stack.plant.device('v1');
    valve.setLocal(true);
    await until(() => valve.published.state === 'LOCAL', 5_000, 'v1 in LOCAL');
    const k = key();
    const r = await post(k, { device: 'v1', action: 'open' });
    expectProblem(r, 409, 'LOCAL_MODE');
    expect(r.json).toMatchObject({ key: k, state: 'rejected', observed: { state: 'LOCAL' } });
    expect(writes('v1')).toBe(0);
    const replay = await post(k, { device: 'v1', action: 'open' });
    expect(replay.status).toBe(409);
    expect(replay.body.equals(r.body)).toBe(true);
  });

  it('fails a stuck open 502 READBACK_TIMEOUT and rejects a close into OPENING (0x88)', async () => {
    // Long travel and a short confirm timeout: the open times out while the valve still shows
    // OPENING (its travel fault would come only after 2 × travel).
    await setUp({ travelMs: 2_000, timing: { confirmTimeoutMs: 500 } });
    const valve = stack.plant.device('v1');
    valve.setFault({ kind: 'stuck-travel' });
    const openKey = key();
    const open = post(openKey, { device: 'v1', action: 'open' });
    await until(() => valve.published.state === 'OPENING', 5_000, 'v1 OPENING');
    const closeKey = key();
    const close = post(closeKey, { device: 'v1', action: 'close' });

    const failed = await open;
    expectProblem(failed, 502, 'READBACK_TIMEOUT');
    expect(failed.json).toMatchObject({ key: openKey, state: 'failed' });
    expect(typeof failed.json.seq).toBe('number');

    const rejected = await close;
    expectProblem(rejected, 409, 'ILLEGAL_TRANSITION');
    expect(rejected.json).toMatchObject({
      key: closeKey,
      state: 'rejected',
      faultCode: '0x88',
      observed: { state: 'OPENING' },
    });
    // One write: the open. The close was known illegal and never sent.
    expect(writes('v1')).toBe(1);

    const replay = await post(openKey, { device: 'v1', action: 'open' });
    expect(replay.status).toBe(502);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.body.equals(failed.body)).toBe(true);
  });
});

describe('I1 over HTTPS', () => {
  it('100 concurrent requests with one key make exactly one controller write', async () => {
    await setUp();
    const k = key();
    const results = await Promise.all(
      Array.from({ length: 100 }, () => post(k, { device: 'v1', action: 'open' })),
    );
    const statuses = new Map<number, number>();
    for (const r of results) statuses.set(r.status, (statuses.get(r.status) ?? 0) + 1);
    for (const r of results) {
      if (r.status === 200) expect(r.json).toMatchObject({ key: k, state: 'confirmed' });
      else expectProblem(r, 409, 'IN_PROGRESS');
    }
    const fresh = results.filter(
      (r) => r.status === 200 && r.headers['idempotent-replayed'] === undefined,
    );
    expect(fresh).toHaveLength(1);
    const replays = results.filter((r) => r.headers['idempotent-replayed'] === 'true');
    for (const r of replays) expect(r.body.equals(fresh[0]!.body)).toBe(true);
    expect(writes('v1')).toBe(1);
  });
});

describe('503 journal unavailable', () => {
  it('refuses when the journal cannot be written, and nothing reaches the controller', async () => {
    await setUp();
    const k = key();
    const lock = new Database(stack.journalPath);
    try {
      lock.exec('BEGIN IMMEDIATE');
      const r = await post(k, { device: 'v1', action: 'open' });
      expectProblem(r, 503, 'JOURNAL_UNAVAILABLE');
    } finally {
      if (lock.inTransaction) lock.exec('ROLLBACK');
      lock.close();
    }
    expect(writes('v1')).toBe(0);
    expect(stack.pipeline.get({ scope: 'plant', key: k })).toBeUndefined();
    const metrics = await call(api, 'GET', '/metrics');
    expect(metrics.text).toMatch(/sluice_journal_unavailable_total 1/);
    // Once the journal is back, the same key is a new command.
    const retry = await post(k, { device: 'v1', action: 'open' });
    expect(retry.status).toBe(200);
    expect(writes('v1')).toBe(1);
  });
});

describe('503 after the key is in the journal', () => {
  it('never says nothing was accepted when the command goes on: a retry in flight meets a failed commit', async () => {
    await setUp({ travelMs: 2_000 });
    const k = key();
    const first = await post(
      k,
      { device: 'v1', action: 'open' },
      { headers: { prefer: 'respond-async' } },
    );
    expect(first.status).toBe(202);
    // The write is on the controller: the command is accepted, dispatched and written.
    await until(() => writes('v1') === 1, 5_000, 'the write to reach the PLC');
    const faults = commitFaults(stack.journal);
    faults.failNext();
    // The retry's own history event is the next commit, and it fails.
    const retry = await post(k, { device: 'v1', action: 'open' });
    expect(faults.failed).toBe(1);
    expectProblem(retry, 503, 'JOURNAL_UNAVAILABLE');
    expect(retry.json.detail).not.toContain('nothing was accepted');
    expect(retry.json).toMatchObject({ key: k, state: 'dispatched' });
    expect(retry.json.detail).toContain('retry with the same key');
    expect(retry.headers.location).toBe(`/v1/commands/${k}`);
    expect(retry.headers['retry-after']).toBe('1');
    // What it said holds: the command goes on and is confirmed, written once.
    const settled = await settledAt(retry.headers.location!);
    expect(settled.json).toMatchObject({ state: 'confirmed' });
    expect(writes('v1')).toBe(1);
    const replay = await post(k, { device: 'v1', action: 'open' });
    expect(replay.status).toBe(200);
    expect(writes('v1')).toBe(1);
  });

  it('a poll of a 202 command while the journal cannot sync says the command goes on, never that nothing was accepted', async () => {
    await setUp({ travelMs: 4_000, timing: { confirmTimeoutMs: 10_000 } });
    const k = key();
    const first = await post(
      k,
      { device: 'v1', action: 'open' },
      { headers: { prefer: 'respond-async' } },
    );
    expect(first.status).toBe(202);
    await until(() => writes('v1') === 1, 5_000, 'the write to reach the PLC');
    const sync = failFdatasync();
    try {
      // Another command's barrier meets the failed fdatasync: the journal fails closed.
      const other = await post(
        key(),
        { device: 'v2', action: 'open' },
        { headers: { prefer: 'respond-async' } },
      );
      expectProblem(other, 503, 'JOURNAL_UNAVAILABLE');
      const refusals = async (): Promise<number> =>
        Number(/sluice_journal_unavailable_total (\d+)/.exec((await get('/metrics')).text)?.[1]);
      const before = await refusals();
      const poll = await get(first.headers.location!);
      expectProblem(poll, 503, 'JOURNAL_UNAVAILABLE');
      // Counted like every request the journal refused.
      expect(await refusals()).toBe(before + 1);
      // "Nothing was accepted" would send the issuer to send it again under a new key: a
      // second actuation (I1). The poll says what the key holds, and to poll again.
      expect(poll.json.detail).not.toContain('nothing was accepted');
      expect(poll.json).toMatchObject({ key: k, state: 'dispatched' });
      expect(poll.json.detail).toContain('never with a new key');
      expect(poll.headers['retry-after']).toBe('1');
      expect(poll.headers.location).toBe(first.headers.location);
      // A key the journal does not hold is not said to be accepted either.
      const unknown = await get(`/v1/commands/${key()}`);
      expectProblem(unknown, 503, 'JOURNAL_UNAVAILABLE');
      expect(unknown.json.detail).not.toContain('nothing was accepted');
      expect(unknown.json.key).toBeUndefined();
    } finally {
      sync.restore();
    }
    // What it said holds: the command goes on and is confirmed, written once.
    const settled = await settledAt(first.headers.location!);
    expect(settled.json).toMatchObject({ state: 'confirmed' });
    expect(writes('v1')).toBe(1);
  });
});

describe('stop', () => {
  it('answers a waiting request with 202 at once, then refuses connections', async () => {
    await setUp({ travelMs: 2_000 });
    const k = key();
    const waiting = post(k, { device: 'v1', action: 'open' }, { headers: { prefer: 'wait=30' } });
    const valve = stack.plant.device('v1');
    await until(() => valve.published.state === 'OPENING', 5_000, 'v1 OPENING');
    const started = Date.now();
    await api.stop();
    const r = await waiting;
    // Well before the 30 s wait: the stop woke it (a settled command would be 200, not 202).
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(r.status).toBe(202);
    expect(r.headers.location).toBe(`/v1/commands/${k}`);
    await expect(call(api, 'GET', '/healthz')).rejects.toThrow(/ECONNREFUSED/);
    // The command was not abandoned: it settles in the pipeline all the same.
    const settled = await stack.pipeline.waitForSettled({ scope: 'plant', key: k }, 5_000);
    expect(settled?.state).toBe('confirmed');
  });
});
