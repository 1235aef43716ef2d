import { describe, expect, it } from 'vitest';
import { parseCommandKey } from '../../src/core/command.js';
import {
  MAX_COMMAND_BYTES,
  errorDocument,
  leadingKey,
  parseCommandMessage,
  stateDocument,
} from '../../src/intake/mqtt-message.js';
import { ResponseRoutes } from '../../src/intake/mqtt-response-routes.js';
import { GatewayTopics, topicFilterProblem, topicMatches } from '../../src/intake/mqtt-topics.js';

/** The MQTT intake's pure parts: message parsing, documents, topics, routes and backoff. */

const mentions = (text: string): unknown => expect.stringContaining(text);

const ISSUED = '2026-11-23T17:00:00.000Z';

const message = (
  payload: unknown,
  extra: {
    userProperties?: Record<string, string | string[]>;
    retained?: boolean;
    device?: string;
    messageExpiryS?: number;
    acceptUntimed?: boolean;
  } = {},
): ReturnType<typeof parseCommandMessage> =>
  parseCommandMessage({
    device: extra.device ?? 'v1',
    payload: Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload)),
    userProperties: extra.userProperties,
    retained: extra.retained ?? false,
    messageExpiryS: extra.messageExpiryS,
    acceptUntimed: extra.acceptUntimed ?? false,
  });

describe('parseCommandMessage', () => {
  it('takes the device from the topic and the key from the payload', () => {
    expect(message({ action: 'open', key: 'k1', issuedAt: ISSUED, ttlMs: 5000 })).toEqual({
      kind: 'command',
      key: 'k1',
      request: { device: 'v1', action: 'open', position: null, issuedAt: ISSUED, ttlMs: 5000 },
    });
  });

  it('refuses an untimed command (no issuedAt, no message expiry) unless the site accepts them', () => {
    const untimed = message({ action: 'open', key: 'k1' });
    expect(untimed).toMatchObject({
      kind: 'malformed',
      code: 'INVALID_COMMAND',
      cause: 'untimed',
      key: 'k1',
      detail: mentions('issuedAt'),
    });
    // MQTT 5 Message Expiry: the broker bounded how long it could wait.
    expect(message({ action: 'open', key: 'k1' }, { messageExpiryS: 30 })).toMatchObject({
      kind: 'command',
      request: { issuedAt: null },
    });
    expect(message({ action: 'open', key: 'k1' }, { acceptUntimed: true })).toMatchObject({
      kind: 'command',
      request: { issuedAt: null },
    });
    // A malformed command is told as such, not as untimed.
    expect(message({ action: 'fly', key: 'k1' })).toMatchObject({ cause: 'command' });
  });

  it('refuses a command topic that names no device, with the key for the answer', () => {
    expect(message({ action: 'open', key: 'k1', issuedAt: ISSUED }, { device: '' })).toMatchObject({
      kind: 'malformed',
      code: 'INVALID_COMMAND',
      cause: 'topic',
      key: 'k1',
    });
  });

  it('refuses a result document published as a command', () => {
    expect(
      message({
        key: 'k1',
        device: 'v1',
        action: 'open',
        state: 'rejected',
        code: 'FORBIDDEN_DEVICE',
        issuedAt: ISSUED,
        replayed: false,
      }),
    ).toMatchObject({ kind: 'malformed', code: 'INVALID_COMMAND', key: 'k1' });
  });

  it('accepts a payload device equal to the topic device, and canonicalises issuedAt', () => {
    const parsed = message({
      device: 'v1',
      action: 'open',
      key: 'k1',
      issuedAt: '2026-11-23T18:00:00+01:00',
    });
    expect(parsed).toMatchObject({
      kind: 'command',
      request: { device: 'v1', issuedAt: '2026-11-23T17:00:00.000Z' },
    });
  });

  it('refuses a field that is not a command field (a misspelt ttlMs), with the key; takes key and device', () => {
    const misspelt = message({ action: 'open', key: 'k1', issuedAt: ISSUED, ttlms: 5000 });
    expect(misspelt).toMatchObject({ kind: 'malformed', code: 'INVALID_COMMAND', key: 'k1' });
    expect(misspelt.kind === 'malformed' ? misspelt.errors : []).toEqual([
      'ttlms: is not a field of a command (did you mean "ttlMs"?); the fields are device, action, position, issuedAt, ttlMs, key: a field that is not understood is refused, not ignored',
    ]);
    // A misspelt issuedAt leaves the command untimed: the name is what is wrong, and said so.
    expect(message({ action: 'open', key: 'k1', issued_at: ISSUED })).toMatchObject({
      cause: 'command',
      detail: mentions('issued_at: is not a field of a command (did you mean "issuedAt"?)'),
    });
    expect(message({ device: 'v1', action: 'open', key: 'k1', issuedAt: ISSUED })).toMatchObject({
      kind: 'command',
    });
  });

  it('takes the key from the idempotency-key user property', () => {
    expect(
      message(
        { action: 'close', issuedAt: ISSUED },
        { userProperties: { 'idempotency-key': 'up-1' } },
      ),
    ).toMatchObject({ kind: 'command', key: 'up-1' });
    expect(
      message(
        { action: 'close', key: 'up-1', issuedAt: ISSUED },
        { userProperties: { 'Idempotency-Key': 'up-1' } },
      ),
    ).toMatchObject({ kind: 'command', key: 'up-1' });
  });

  it('refuses conflicting, repeated, missing and malformed keys', () => {
    expect(
      message({ action: 'open', key: 'a' }, { userProperties: { 'idempotency-key': 'b' } }),
    ).toMatchObject({ kind: 'malformed', code: 'MISSING_IDEMPOTENCY_KEY', key: 'a' });
    expect(
      message({ action: 'open' }, { userProperties: { 'idempotency-key': ['a', 'b'] } }),
    ).toMatchObject({ kind: 'malformed', code: 'MISSING_IDEMPOTENCY_KEY', key: 'a' });
    expect(message({ action: 'open' })).toMatchObject({
      kind: 'malformed',
      code: 'MISSING_IDEMPOTENCY_KEY',
      key: null,
    });
    expect(message({ action: 'open', key: 'has space' })).toMatchObject({
      kind: 'malformed',
      code: 'MISSING_IDEMPOTENCY_KEY',
      key: 'has space',
    });
    // A key that is there but not a string is named as such, not as missing.
    expect(message({ action: 'open', key: 42 })).toMatchObject({
      code: 'MISSING_IDEMPOTENCY_KEY',
      key: null,
      detail: 'key: must be a JSON string of 1-255 printable ASCII characters, not a number',
    });
    expect(
      message({ action: 'open', key: null }, { userProperties: { 'idempotency-key': 'k' } }),
    ).toMatchObject({ code: 'MISSING_IDEMPOTENCY_KEY', key: 'k', detail: mentions('not null') });
    expect(message({ action: 'open', key: ['k'] })).toMatchObject({
      detail: mentions('not an array'),
    });
    // A quote is never a key character (parseCommandKey): in the HTTPS header `"k"` is `k`.
    for (const quoted of ['"k1"', 'a"b', '""']) {
      expect(message({ action: 'open', key: quoted, issuedAt: ISSUED })).toMatchObject({
        code: 'MISSING_IDEMPOTENCY_KEY',
        key: quoted,
        detail: mentions('no double quote'),
      });
      expect(
        message(
          { action: 'open', issuedAt: ISSUED },
          { userProperties: { 'idempotency-key': quoted } },
        ),
      ).toMatchObject({ code: 'MISSING_IDEMPOTENCY_KEY', key: quoted });
    }
    // Cut for the answer, and marked so: the first 255 characters alone are a valid key, which
    // may be another command's.
    const long = message({ action: 'open', key: 'x'.repeat(300) });
    expect(long).toMatchObject({ code: 'MISSING_IDEMPOTENCY_KEY', key: `${'x'.repeat(254)}…` });
    expect(() => parseCommandKey(long.kind === 'malformed' ? (long.key ?? '') : '')).toThrow();
  });

  it('refuses payloads that are not a JSON object, keeping a user-property key for the answer', () => {
    expect(message('{nope')).toMatchObject({ code: 'INVALID_COMMAND', key: null });
    expect(message('[1,2]', { userProperties: { 'idempotency-key': 'k' } })).toMatchObject({
      code: 'INVALID_COMMAND',
      key: 'k',
    });
    expect(
      parseCommandMessage({
        device: 'v1',
        payload: Buffer.from([0xff, 0xfe, 0x7b, 0x7d]),
        retained: false,
      }),
    ).toMatchObject({ code: 'INVALID_COMMAND', detail: mentions('JSON') });
    expect(message('x'.repeat(MAX_COMMAND_BYTES + 1))).toMatchObject({
      code: 'INVALID_COMMAND',
      detail: mentions('bytes'),
    });
  });

  it('reads the key of an oversized payload from its start, for the answer (MQTT 3.1.1 has no user property)', () => {
    const pad = 'x'.repeat(MAX_COMMAND_BYTES);
    expect(message({ key: 'big-1', action: 'open', issuedAt: ISSUED, pad })).toMatchObject({
      kind: 'malformed',
      code: 'INVALID_COMMAND',
      key: 'big-1',
      detail: `(body): ${MAX_COMMAND_BYTES + 78} bytes; a command is at most ${MAX_COMMAND_BYTES} bytes; nothing was written`,
    });
    // The user property first, as for any malformed message.
    expect(
      parseCommandMessage({
        device: 'v1',
        payload: Buffer.from(JSON.stringify({ key: 'in-payload', pad })),
        userProperties: { 'idempotency-key': 'in-property' },
        retained: false,
      }),
    ).toMatchObject({ key: 'in-property' });
    const head = (text: string): string | null => leadingKey(Buffer.from(text));
    // After members of every kind, escaped, after a BOM and spaces.
    expect(
      head(
        '\ufeff { "a" : {"key":"inner","b":["]",{"c":"}"}]}, "n":-1.5e3, "t":true, "s":"\\"key\\"", "k\\u0065y" : "k-\\u0031", "pad":"xx',
      ),
    ).toBe('k-1');
    // Not found whole, not the outer object's, not a string, not JSON: none.
    expect(head('{"pad":"xxxx')).toBeNull();
    expect(head('{"n":12')).toBeNull();
    expect(head('{"key":"abc')).toBeNull();
    expect(head('{"key":17,"pad":"')).toBeNull();
    expect(head('[{"key":"k"}')).toBeNull();
    expect(head('{"a":{"key":"k"')).toBeNull();
    expect(head('{"a" "key":"k"')).toBeNull();
    expect(head('xyz')).toBeNull();
  });

  it('refuses a member given twice, as the HTTPS intake does, never reading the last one', () => {
    const twice = `{"key":"k2","action":"close","issuedAt":"${ISSUED}","action":"open"}`;
    expect(message(twice)).toMatchObject({
      kind: 'malformed',
      code: 'INVALID_COMMAND',
      key: 'k2',
      detail: 'action: is given more than once in an object',
    });
    // Escaped, the same name; the key itself given twice leaves no key to answer with.
    expect(
      message(`{"key":"a","action":"open","\\u006bey":"b","issuedAt":"${ISSUED}"}`),
    ).toMatchObject({
      code: 'INVALID_COMMAND',
      key: null,
      detail: 'key: is given more than once in an object',
    });
  });

  it('refuses a device mismatch, an invalid command and a retained message, with the key', () => {
    expect(message({ action: 'open', key: 'k', device: 'v2' })).toMatchObject({
      code: 'INVALID_COMMAND',
      key: 'k',
      detail: mentions('"v2"'),
    });
    const invalid = message({ action: 'move', key: 'k', ttlMs: -1 });
    expect(invalid).toMatchObject({ code: 'INVALID_COMMAND', key: 'k' });
    expect(invalid.kind === 'malformed' ? invalid.errors : []).toEqual([
      mentions('ttlMs'),
      mentions('position'),
    ]);
    expect(message({ action: 'open', key: 'k' }, { retained: true })).toMatchObject({
      code: 'INVALID_COMMAND',
      key: 'k',
      detail: mentions('retained'),
    });
  });
});

describe('documents', () => {
  it('renders an error answer, with errors only when there are some', () => {
    const base = {
      key: 'k',
      device: 'v1',
      code: 'UNKNOWN_DEVICE' as const,
      detail: 'unknown device "v1"',
      receivedAt: '2026-11-23T17:00:00.000Z',
    };
    expect(JSON.parse(errorDocument(base))).toEqual(base);
    expect(JSON.parse(errorDocument({ ...base, errors: ['a'] }))).toEqual({
      ...base,
      errors: ['a'],
    });
  });

  it('renders the state document with a hex fault code and ISO times', () => {
    expect(
      JSON.parse(
        stateDocument('v1', {
          state: 'FAULT',
          position: 40,
          seq: 7,
          faultCode: 0x81,
          sourceTime: Date.parse('2026-11-23T17:00:00.000Z'),
          requestedAt: Date.parse('2026-11-23T17:00:00.100Z'),
          receivedAt: Date.parse('2026-11-23T17:00:00.120Z'),
        }),
      ),
    ).toEqual({
      device: 'v1',
      state: 'FAULT',
      position: 40,
      faultCode: '0x81',
      seq: 7,
      sourceTime: '2026-11-23T17:00:00.000Z',
      readAt: '2026-11-23T17:00:00.100Z',
    });
  });
});

describe('GatewayTopics', () => {
  const topics = new GatewayTopics('gw');

  it('names the topics of SPEC §5 and reads the device of a command topic', () => {
    expect(topics.commandFilter).toBe('sluice/gw/cmd/+');
    expect(topics.result('v1')).toBe('sluice/gw/result/v1');
    expect(topics.state('v1')).toBe('sluice/gw/state/v1');
    expect(topics.status).toBe('sluice/gw/status');
    expect(topics.commandDevice('sluice/gw/cmd/v1')).toBe('v1');
    expect(topics.commandDevice('sluice/gw/cmd/a/b')).toBeNull();
    expect(topics.commandDevice('sluice/other/cmd/v1')).toBeNull();
  });

  it('reads an empty device segment as a command topic naming no device', () => {
    expect(topics.commandDevice('sluice/gw/cmd/')).toBe('');
  });

  it('never answers to a command topic of any gateway, nor into a gateway tree', () => {
    const everything = ['#'];
    const verdict = (topic: string, allowed = everything): unknown =>
      topics.responseTopicVerdict(topic, allowed);
    expect(verdict('app/replies/1')).toEqual({ ok: true });
    for (const [topic, reason] of [
      ['', 'invalid'],
      ['a/+/b', 'invalid'],
      ['a/#', 'invalid'],
      ['a\u0000b', 'invalid'],
      ['$SYS/x', 'system'],
      // The relay of issue 9: another gateway's command topic, and ours.
      ['sluice/demo/cmd/inlet-valve', 'command_topic'],
      ['sluice/gw/cmd/v1', 'command_topic'],
      ['sluice/demo/cmd', 'command_topic'],
      ['sluice//cmd/x', 'command_topic'],
      ['sluice/demo/result/inlet-valve', 'gateway_topic'],
      ['sluice/demo/status', 'gateway_topic'],
      ['sluice/gw', 'gateway_topic'],
      ['sluice/gw/replies', 'gateway_topic'],
    ] as const) {
      expect(verdict(topic), topic).toEqual({ ok: false, reason });
    }
    // Other gateways' other topics are for the allow-list to decide.
    expect(verdict('sluice/gw2/replies')).toEqual({ ok: true });
    expect(verdict('sluice/gw2/replies', ['+/replies/#'])).toEqual({
      ok: false,
      reason: 'not_allowed',
    });
  });

  it('takes response topics the allow-list matches, under another topic root too', () => {
    const defaults = ['replies/#', '+/replies/#'];
    expect(topics.responseTopicVerdict('replies/op-1', defaults)).toEqual({ ok: true });
    expect(topics.responseTopicVerdict('scada/replies/a/b', defaults)).toEqual({ ok: true });
    expect(topics.responseTopicVerdict('scada/cmd/a', defaults)).toEqual({
      ok: false,
      reason: 'not_allowed',
    });
    expect(topics.responseTopicVerdict('anything', [])).toEqual({
      ok: false,
      reason: 'not_allowed',
    });
    const plant = new GatewayTopics('gw', 'plant/a');
    expect(plant.prefix).toBe('plant/a/gw');
    expect(plant.responseTopicVerdict('plant/a/other/cmd/x', ['#'])).toEqual({
      ok: false,
      reason: 'command_topic',
    });
    expect(plant.responseTopicVerdict('sluice/other/cmd/x', ['#'])).toEqual({ ok: true });
    expect(() => new GatewayTopics('a/b')).toThrow();
    expect(() => new GatewayTopics('gw', 'a/+')).toThrow();
    expect(() => new GatewayTopics('gw', '$x')).toThrow();
  });
});

describe('MQTT topic filters', () => {
  it('match as MQTT 5 §4.7 says', () => {
    expect(topicMatches('a/+/c', 'a/b/c')).toBe(true);
    expect(topicMatches('a/+/c', 'a//c')).toBe(true);
    expect(topicMatches('a/+', 'a/b/c')).toBe(false);
    expect(topicMatches('a/#', 'a')).toBe(true);
    expect(topicMatches('a/#', 'a/b/c')).toBe(true);
    expect(topicMatches('#', '$SYS/x')).toBe(false);
    expect(topicMatches('+/x', '$SYS/x')).toBe(false);
    expect(topicMatches('a/b', 'a/b/c')).toBe(false);
  });

  it('are validated', () => {
    expect(topicFilterProblem('a/#')).toBeNull();
    expect(topicFilterProblem('+/replies/#')).toBeNull();
    expect(topicFilterProblem('a/#/b')).not.toBeNull();
    expect(topicFilterProblem('a/b#')).not.toBeNull();
    expect(topicFilterProblem('a+/b')).not.toBeNull();
    expect(topicFilterProblem('')).not.toBeNull();
  });
});

describe('ResponseRoutes', () => {
  const ref = (key: string): { scope: string; key: string; fingerprint: string } => ({
    scope: 'plant',
    key,
    fingerprint: `f-${key}`,
  });

  it('keeps distinct routes per command once, and forgets them when taken', () => {
    const routes = new ResponseRoutes();
    routes.add(ref('k'), { topic: 'r/1', correlationData: Buffer.from('a') });
    routes.add(ref('k'), { topic: 'r/1', correlationData: Buffer.from('a') });
    routes.add(ref('k'), { topic: 'r/1', correlationData: Buffer.from('b') });
    routes.add(ref('k'), { topic: 'r/2', correlationData: undefined });
    expect(
      routes.take(ref('k')).map((r) => `${r.topic}:${r.correlationData?.toString() ?? ''}`),
    ).toEqual(['r/1:a', 'r/1:b', 'r/2:']);
    expect(routes.take(ref('k'))).toEqual([]);
  });

  it('is bounded: the least recently used command is dropped first', () => {
    const routes = new ResponseRoutes(2, 2);
    routes.add(ref('a'), { topic: 'r/a', correlationData: undefined });
    routes.add(ref('b'), { topic: 'r/b', correlationData: undefined });
    routes.add(ref('a'), { topic: 'r/a2', correlationData: undefined });
    routes.add(ref('c'), { topic: 'r/c', correlationData: undefined });
    expect(routes.size).toBe(2);
    expect(routes.take(ref('b'))).toEqual([]);
    expect(routes.take(ref('a'))).toHaveLength(2);
    for (const t of ['1', '2', '3']) routes.add(ref('d'), { topic: t, correlationData: undefined });
    expect(routes.take(ref('d')).map((r) => r.topic)).toEqual(['2', '3']);
  });
});
