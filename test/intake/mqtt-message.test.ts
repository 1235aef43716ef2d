import { describe, expect, it } from 'vitest';
import {
  MAX_COMMAND_BYTES,
  errorDocument,
  parseCommandMessage,
  stateDocument,
} from '../../src/intake/mqtt-message.js';
import { ResponseRoutes } from '../../src/intake/mqtt-response-routes.js';
import { GatewayTopics } from '../../src/intake/mqtt-topics.js';

/** The MQTT intake's pure parts: message parsing, documents, topics, routes and backoff. */

const mentions = (text: string): unknown => expect.stringContaining(text);

const message = (
  payload: unknown,
  extra: { userProperties?: Record<string, string | string[]>; retained?: boolean } = {},
): ReturnType<typeof parseCommandMessage> =>
  parseCommandMessage({
    device: 'v1',
    payload: Buffer.from(typeof payload === 'string' ? payload : JSON.stringify(payload)),
    userProperties: extra.userProperties,
    retained: extra.retained ?? false,
  });

describe('parseCommandMessage', () => {
  it('takes the device from the topic and the key from the payload', () => {
    expect(message({ action: 'open', key: 'k1', ttlMs: 5000 })).toEqual({
      kind: 'command',
      key: 'k1',
      request: { device: 'v1', action: 'open', position: null, issuedAt: null, ttlMs: 5000 },
    });
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

  it('takes the key from the idempotency-key user property', () => {
    expect(
      message({ action: 'close' }, { userProperties: { 'idempotency-key': 'up-1' } }),
    ).toMatchObject({ kind: 'command', key: 'up-1' });
    expect(
      message({ action: 'close', key: 'up-1' }, { userProperties: { 'Idempotency-Key': 'up-1' } }),
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
    expect(message({ action: 'open', key: 42 })).toMatchObject({
      code: 'MISSING_IDEMPOTENCY_KEY',
      key: null,
    });
    const long = message({ action: 'open', key: 'x'.repeat(300) });
    expect(long).toMatchObject({ code: 'MISSING_IDEMPOTENCY_KEY' });
    expect(long.kind === 'malformed' ? long.key?.length : 0).toBe(255);
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
    expect(topics.commandDevice('sluice/gw/cmd/')).toBeNull();
    expect(topics.commandDevice('sluice/gw/cmd/a/b')).toBeNull();
    expect(topics.commandDevice('sluice/other/cmd/v1')).toBeNull();
  });

  it('refuses response topics that are malformed, the broker’s, or under the gateway’s prefix', () => {
    expect(topics.isResponseTopic('app/replies/1')).toBe(true);
    for (const bad of ['', 'a/+/b', 'a/#', '$SYS/x', 'sluice/gw/cmd/v1', 'sluice/gw', 'a\u0000b']) {
      expect(topics.isResponseTopic(bad)).toBe(false);
    }
    expect(topics.isResponseTopic('sluice/gw2/replies')).toBe(true);
    expect(() => new GatewayTopics('a/b')).toThrow();
  });
});

describe('ResponseRoutes', () => {
  const ref = (key: string): { scope: string; key: string } => ({ scope: 'plant', key });

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
