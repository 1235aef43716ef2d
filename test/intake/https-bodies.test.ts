import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { duplicateMember } from '../../src/intake/json-members.js';
import { TOKENS } from '../helpers/stack.js';
import { call, intakeForFile, type HttpResult } from './https-client.js';

/**
 * Command bodies that must be refused whole over HTTPS, as MQTT refuses them: bytes that are
 * not UTF-8 (never replaced by U+FFFD), dates the calendar does not have, result documents.
 * Each refusal is a 400 that leaves nothing in the journal and writes nothing.
 */

// No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
const fx = intakeForFile({ stack: { opcua: false } });

const key = (): string => `k-${randomUUID()}`;
const writes = (): number => fx.stack.plant.device('v1').counters.writesReceived;

function post(
  k: string,
  body: Buffer | string,
  contentType = 'application/json',
): Promise<HttpResult> {
  return call(fx.api, 'POST', '/v1/commands', {
    token: TOKENS.plant,
    body,
    headers: { 'idempotency-key': k, 'content-type': contentType },
  });
}

/** `{"device":"v1","action":"open","note":"<bytes>"}` with `bytes` spliced in raw. */
function withBytes(bytes: number[]): Buffer {
  return Buffer.concat([
    Buffer.from('{"device":"v1","action":"open","note":"'),
    Buffer.from(bytes),
    Buffer.from('"}'),
  ]);
}

/** The refusal is a 400 INVALID_COMMAND and nothing was journaled or written. */
async function expectRefused(r: HttpResult, k: string, before: number): Promise<void> {
  expect(r.status).toBe(400);
  expect(r.headers['content-type']).toBe('application/problem+json');
  expect(r.json).toMatchObject({ status: 400, code: 'INVALID_COMMAND' });
  expect(fx.stack.pipeline.get({ scope: 'plant', key: k })).toBeUndefined();
  const shown = await call(fx.api, 'GET', `/v1/commands/${k}`, { token: TOKENS.plant });
  expect(shown.status).toBe(404);
  expect(writes()).toBe(before);
}

describe('400: a body that is not UTF-8', () => {
  const cases: readonly (readonly [what: string, bytes: number[]])[] = [
    ['a Latin-1 byte', [0xe9]],
    ['a lone continuation byte', [0x80]],
    ['a truncated sequence', [0xe2, 0x82]],
    ['an overlong encoding of "/"', [0xc0, 0xaf]],
    ['an overlong encoding of NUL', [0xe0, 0x80, 0x80]],
    ['an encoded surrogate (U+D800)', [0xed, 0xa0, 0x80]],
    ['a code point past U+10FFFF', [0xf4, 0x90, 0x80, 0x80]],
    ['a byte UTF-8 never uses', [0xff]],
  ];
  for (const [what, bytes] of cases) {
    it(`refuses ${what}, journals nothing and writes nothing`, async () => {
      const before = writes();
      const k = key();
      const r = await post(k, withBytes(bytes));
      await expectRefused(r, k, before);
      expect(r.json.detail).toBe('the request body is not valid UTF-8');
      expect(r.json.errors).toEqual(['(body): is not valid UTF-8']);
    });
  }

  it('refuses invalid UTF-8 in the device name too (no U+FFFD lookalike device)', async () => {
    const before = writes();
    const k = key();
    const body = Buffer.concat([
      Buffer.from('{"device":"v1'),
      Buffer.from([0xff]),
      Buffer.from('","action":"open"}'),
    ]);
    await expectRefused(await post(k, body), k, before);
  });

  it('refuses it whatever charset the Content-Type claims', async () => {
    const before = writes();
    const k = key();
    const r = await post(k, withBytes([0xe9]), 'application/json; charset=utf-8');
    await expectRefused(r, k, before);
    expect(r.json.detail).toBe('the request body is not valid UTF-8');
  });

  it('takes valid multi-byte UTF-8 and one leading BOM', async () => {
    // Decoded, not refused as bytes: the device name comes back whole in the answer.
    const plain = await post(
      key(),
      Buffer.from('{"device":"Schieber Zulauf ü €  𝄞","action":"close"}'),
    );
    expect(plain.status).toBe(404);
    expect(plain.json.detail).toContain('"Schieber Zulauf ü €  𝄞"');
    // RFC 8259 §8.1: a parser MAY ignore a byte order mark; MQTT's decoder drops one too.
    const bom = Buffer.concat([
      Buffer.from([0xef, 0xbb, 0xbf]),
      Buffer.from('{"device":"v1","action":"close"}'),
    ]);
    expect((await post(key(), bom)).status).toBe(200);
    const twice = Buffer.concat([
      Buffer.from([0xef, 0xbb, 0xbf, 0xef, 0xbb, 0xbf]),
      Buffer.from('{"device":"v1","action":"close"}'),
    ]);
    const k = key();
    const r = await post(k, twice);
    await expectRefused(r, k, writes());
    expect(r.json.detail).toBe('the request body is not valid JSON');
  });
});

describe('400: commands the core refuses, end to end', () => {
  it('refuses issuedAt on 30 February, which Date.parse would roll into March', async () => {
    const before = writes();
    const k = key();
    const r = await post(
      k,
      JSON.stringify({ device: 'v1', action: 'open', issuedAt: '2026-02-30T10:00:00Z' }),
    );
    await expectRefused(r, k, before);
    const errors = r.json.errors as string[];
    expect(errors.some((e) => e.startsWith('issuedAt:'))).toBe(true);
  });

  it('refuses issuedAt without an offset with that reason alone (no calendar complaint)', async () => {
    for (const issuedAt of ['2026-11-23T17:00:00', '2026-11-23', 'yesterday']) {
      const before = writes();
      const k = key();
      const r = await post(k, JSON.stringify({ device: 'v1', action: 'open', issuedAt }));
      await expectRefused(r, k, before);
      expect(r.json.errors).toEqual(['issuedAt: must be an RFC 3339 date-time with an offset']);
    }
  });

  it('refuses an issuedAt past year 9999 in UTC (its result would not be RFC 3339), journals nothing', async () => {
    const before = writes();
    const k = key();
    const r = await post(
      k,
      JSON.stringify({ device: 'v1', action: 'open', issuedAt: '9999-12-31T23:59:59-23:59' }),
    );
    await expectRefused(r, k, before);
    expect(r.json.errors).toEqual([
      'issuedAt: lies outside the years 0000-9999 in UTC (with a day for its deadline), which an RFC 3339 result cannot show',
    ]);
    expect(fx.stack.journal.findByKey(k)).toEqual([]);
  });

  it("refuses a body carrying a result's state (a result document is not a command)", async () => {
    const before = writes();
    const k = key();
    const r = await post(k, JSON.stringify({ device: 'v1', action: 'open', state: 'confirmed' }));
    await expectRefused(r, k, before);
    const errors = r.json.errors as string[];
    expect(errors.some((e) => e.startsWith('state:'))).toBe(true);
  });
});

describe('400: a field that is not a command field', () => {
  const v1 = () => fx.stack.plant.device('v1');
  /** The action that moves v1 from where it rests now (so that the command is a real write). */
  const moving = (): 'open' | 'close' => (v1().published.state === 'CLOSED' ? 'open' : 'close');

  it('refuses a misspelt ttlMs or issuedAt (never the default TTL, never unchecked); the key stays free for the corrected command', async () => {
    for (const [field, meant, value] of [
      ['ttl', 'ttlMs', 5000],
      ['ttlms', 'ttlMs', 5000],
      ['issued_at', 'issuedAt', new Date().toISOString()],
    ] as const) {
      const log = v1().writeLog.length;
      const before = writes();
      const k = key();
      const action = moving();
      const r = await post(k, JSON.stringify({ device: 'v1', action, [field]: value }));
      await expectRefused(r, k, before);
      expect(r.json.errors).toEqual([
        `${field}: is not a field of a command (did you mean "${meant}"?); the fields are device, action, position, issuedAt, ttlMs: a field that is not understood is refused, not ignored`,
      ]);
      // Ground truth: the journal file has no row for the key, the controller no write.
      expect(fx.stack.journal.findByKey(k)).toEqual([]);
      expect(v1().writeLog).toHaveLength(log);

      // Spelt right, the same key is a new command (nothing was claimed under it) and runs
      // with what the issuer asked for.
      const right = await post(k, JSON.stringify({ device: 'v1', action, [meant]: value }));
      expect(right.status).toBe(200);
      expect(right.headers['idempotent-replayed']).toBeUndefined();
      expect(right.json).toMatchObject({ key: k, action, state: 'confirmed', replayed: false });
      const [record] = fx.stack.journal.findByKey(k);
      if (meant === 'ttlMs') {
        expect(record?.ttlMs).toBe(5000);
      } else {
        expect(record).toMatchObject({ issuedAt: Date.parse(value), issuedAtSource: 'issuer' });
      }
      // One write, the corrected command's.
      expect(
        v1()
          .writeLog.slice(log)
          .map((w) => w.seq),
      ).toEqual([record?.seq]);
      expect(writes()).toBe(before + 1);
    }
  });

  it('refuses a key in the body (it goes in the header) and any other field, naming each', async () => {
    const before = writes();
    const k = key();
    const r = await post(k, JSON.stringify({ key: k, device: 'v1', action: 'close', note: 'x' }));
    await expectRefused(r, k, before);
    expect(r.json.errors).toEqual([
      'key: does not go in the body here; the key goes in the Idempotency-Key header',
      expect.stringMatching(/^note: is not a field of a command; the fields are device, action/),
    ]);
    expect(r.json.detail).toContain('key: does not go in the body');
    expect(fx.stack.journal.findByKey(k)).toEqual([]);
  });
});

describe('400: bodies fastify refuses, said as they are', () => {
  it('calls an empty body empty, and valid JSON with a prototype-poisoning member not "not valid JSON"', async () => {
    const cases: [body: string | Buffer, error: RegExp][] = [
      ['', /^\(body\): is empty/],
      [
        '{"device":"v1","action":"close","__proto__":{"ttlMs":5}}',
        /^\(body\): has a member "__proto__"/,
      ],
      ['{"device":"v1","action":"close","constructor":{"prototype":{}}}', /"constructor" holding/],
      [
        Buffer.concat([
          Buffer.from([0xef, 0xbb, 0xbf]),
          Buffer.from('{"device":"v1","action":"close","m":{"__proto__":1}}'),
        ]),
        /prototype poisoning/,
      ],
      // Not JSON at all: still said so.
      ['{"device":"v1",', /^\(body\): is not valid JSON$/],
    ];
    for (const [body, error] of cases) {
      const before = writes();
      const k = key();
      const r = await post(k, body);
      await expectRefused(r, k, before);
      expect(r.json.errors).toEqual([expect.stringMatching(error)]);
      expect(fx.stack.journal.findByKey(k)).toEqual([]);
    }
  });
});

describe('400: a member name given twice', () => {
  it('refuses a command whose action is given twice (JSON.parse would keep the last), writes nothing', async () => {
    for (const body of [
      '{"device":"v1","action":"close","action":"open"}',
      // The same name, escaped: still the same member to every parser.
      '{"device":"v1","action":"close","\\u0061ction":"open"}',
      '{"device":"v1","action":"open","meta":{"a":1,"a":2}}',
    ]) {
      const before = writes();
      const k = key();
      const r = await post(k, body);
      await expectRefused(r, k, before);
      expect((r.json.errors as string[])[0]).toMatch(/^(action|a): is given more than once/);
    }
  });

  it('takes the same name in different objects, and strings that look like names', async () => {
    const k = key();
    const r = await post(
      k,
      '{"device":"v1","action":"close","meta":{"device":"x","l":["action",{"action":1}]},"n":"\\",\\"action\\":"}',
    );
    // Not a duplicate: refused for its two fields that are not command fields, and only that.
    await expectRefused(r, k, writes());
    expect(r.json.errors).toEqual([
      expect.stringMatching(/^meta: is not a field of a command/),
      expect.stringMatching(/^n: is not a field of a command/),
    ]);
  });

  it('finds duplicates at any depth, and only within one object', () => {
    expect(duplicateMember('{"a":1,"b":{"a":2}}')).toBeUndefined();
    expect(duplicateMember('[{"a":1},{"a":1}]')).toBeUndefined();
    expect(duplicateMember('{"a":"\\"a\\"","b":["a","a"]}')).toBeUndefined();
    expect(duplicateMember('{"a":[{"x":1,"x":2}]}')).toBe('x');
    expect(duplicateMember('{"a":{},"a":[]}')).toBe('a');
    expect(duplicateMember('\ufeff{"é":1,"\\u00e9":2}')).toBe('é');
  });
});
