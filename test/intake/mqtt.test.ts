import { randomUUID } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import type { Metrics } from '../../src/daemon/metrics.js';
import type { MqttConfig, MqttIntake } from '../../src/intake/mqtt.js';
import { MAX_PACKET_BYTES } from '../../src/intake/mqtt-session.js';
import {
  mosquittoAvailable,
  TestClient,
  timed,
  until,
  useMqttSite,
  type Received,
} from '../helpers/mqtt-site.js';

/**
 * The MQTT intake against a real mosquitto, the real drivers and the simulated plant: the
 * command path (PUBACK after the claim, result, retained state and status), MQTT 5 Response
 * Topics, MQTT 3.1.1, malformed messages and replays.
 */

const available = mosquittoAvailable();
const mentions = (text: string): unknown => expect.stringContaining(text);

async function counted(
  metrics: Metrics,
  metric: 'mqttMessages' | 'accepted',
  outcome: string,
): Promise<number> {
  const { values } = await metrics[metric].get();
  return values.filter((v) => v.labels.outcome === outcome).reduce((sum, v) => sum + v.value, 0);
}

describe.skipIf(!available)('MQTT intake (mosquitto, MQTT 5)', () => {
  const GATEWAY = 'gw';
  const PREFIX = `sluice/${GATEWAY}`;
  const CLIENT_ID = 'sluice-gw';
  const site = useMqttSite();
  const { cleanups } = site;
  let intake: MqttIntake;
  let observer: TestClient;
  let issuer: TestClient;

  /** The action that moves the valve from where it rests now. */
  const moveOf = (device: string): 'open' | 'close' =>
    site.stack.plant.device(device).published.state === 'CLOSED' ? 'open' : 'close';
  const writes = (device: string): number =>
    site.stack.plant.device(device).counters.writesReceived;
  const resultFor =
    (key: string, device: string) =>
    (m: Received): boolean =>
      m.topic === `${PREFIX}/result/${device}` && m.json().key === key;

  /** An intake on this site speaking MQTT 5 unless `config` says otherwise. */
  const intakeOf = (
    gatewayId: string,
    config: Partial<MqttConfig> = {},
    reconnect?: { minMs: number; maxMs: number },
  ): MqttIntake => site.intake({ gatewayId, config: { protocolVersion: 5, ...config }, reconnect });

  beforeAll(async () => {
    intake = intakeOf(GATEWAY, {}, { minMs: 100, maxMs: 1_000 });
    cleanups.push(() => intake.stop());
    await site.connect(intake);
    observer = await TestClient.connect(site.broker.url);
    cleanups.push(() => observer.end());
    await observer.subscribe(`${PREFIX}/result/#`);
    await observer.subscribe(`${PREFIX}/state/#`);
    issuer = await TestClient.connect(site.broker.url);
    cleanups.push(() => issuer.end());
    await issuer.subscribe('test/replies/#');
  }, 60_000);

  it('acknowledges a command after its claim, confirms it and publishes result, state and status', async () => {
    const key = randomUUID();
    const action = moveOf('v1');
    const before = writes('v1');
    const pubacks = site.broker.pubacksFrom(CLIENT_ID);
    // Timed by an MQTT 5 Message Expiry Interval instead of issuedAt: the gateway times it.
    await issuer.publish(
      `${PREFIX}/cmd/v1`,
      { action, key },
      { properties: { messageExpiryInterval: 60 } },
    );

    const result = await observer.waitFor(resultFor(key, 'v1'), 10_000, 'result');
    expect(result.json()).toMatchObject({
      key,
      device: 'v1',
      action,
      state: 'confirmed',
      code: 'OK',
      faultCode: null,
      replayed: false,
      issuedAtSource: 'gateway',
    });
    expect(result.packet.qos).toBe(1);
    expect(result.packet.retain).toBe(false);
    expect(result.packet.properties?.contentType).toBe('application/json');
    // The stored result, byte for byte: what HTTPS and every replay return.
    expect(result.text).toBe(site.stack.pipeline.get({ scope: 'plant', key })?.response);
    expect(writes('v1')).toBe(before + 1);
    // The intake itself acknowledged the message to the broker, once, without redelivery.
    await until(() => (site.broker.pubacksFrom(CLIENT_ID) > pubacks ? true : undefined));
    expect(site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/v1`).filter((d) => d.dup)).toEqual(
      [],
    );

    const late = await TestClient.connect(site.broker.url);
    try {
      await late.subscribe(`${PREFIX}/state/v1`);
      await late.subscribe(`${PREFIX}/status`);
      const state = await late.waitFor((m) => m.topic === `${PREFIX}/state/v1`);
      expect(state.packet.retain).toBe(true);
      const target = action === 'open' ? 'OPEN' : 'CLOSED';
      expect(state.json()).toMatchObject({ device: 'v1', state: target, faultCode: null });
      expect(Date.parse(String(state.json().readAt))).not.toBeNaN();
      const status = await late.waitFor((m) => m.topic === `${PREFIX}/status`);
      expect(status.text).toBe('online');
      expect(status.packet.retain).toBe(true);
    } finally {
      await late.end();
    }
    // Live state changes on the way: the valve's travel was mirrored.
    const states = observer.on(`${PREFIX}/state/v1`).map((m) => m.json().state);
    expect(states).toContain(action === 'open' ? 'OPENING' : 'CLOSING');
    expect(await counted(site.stack.metrics, 'mqttMessages', 'new')).toBeGreaterThanOrEqual(1);
    expect(await counted(site.stack.metrics, 'accepted', 'new')).toBeGreaterThanOrEqual(1);
  });

  it('answers an MQTT 5 Response Topic with its Correlation Data; the key may be a user property', async () => {
    const key = randomUUID();
    const command = timed({ action: moveOf('v2') });
    await issuer.publish(`${PREFIX}/cmd/v2`, command, {
      properties: {
        responseTopic: 'test/replies/a',
        correlationData: Buffer.from('corr-1'),
        userProperties: { 'idempotency-key': key },
      },
    });
    const reply = await issuer.waitFor((m) => m.topic === 'test/replies/a', 10_000, 'reply');
    expect(reply.json()).toMatchObject({ key, device: 'v2', state: 'confirmed', replayed: false });
    expect(reply.packet.properties?.correlationData?.toString()).toBe('corr-1');
    await observer.waitFor(resultFor(key, 'v2'));

    // A retry with a new correlation: the replay goes to its Response Topic.
    await issuer.publish(
      `${PREFIX}/cmd/v2`,
      { ...command, key },
      { properties: { responseTopic: 'test/replies/b', correlationData: Buffer.from('corr-2') } },
    );
    const replay = await issuer.waitFor((m) => m.topic === 'test/replies/b', 10_000, 'replay');
    expect(replay.json()).toMatchObject({ key, state: 'confirmed', replayed: true });
    expect(replay.packet.properties?.correlationData?.toString()).toBe('corr-2');
  });

  it('replays a settled key with replayed: true and writes nothing more; a duplicate in flight adds nothing', async () => {
    const key = randomUUID();
    const command = timed({ action: moveOf('u1'), key });
    const before = writes('u1');
    // Two copies at once: the second finds the first in flight.
    await issuer.publish(`${PREFIX}/cmd/u1`, command);
    await issuer.publish(`${PREFIX}/cmd/u1`, command);
    const first = await observer.waitFor(resultFor(key, 'u1'), 15_000, 'result');
    expect(first.json()).toMatchObject({ state: 'confirmed', replayed: false });
    expect(writes('u1')).toBe(before + 1);

    await issuer.publish(`${PREFIX}/cmd/u1`, command);
    const replay = await observer.waitFor(
      (m) => resultFor(key, 'u1')(m) && m.json().replayed === true,
      10_000,
      'replay',
    );
    expect(replay.json()).toEqual({ ...first.json(), replayed: true });
    // A device's results reach the observer in the order they were published, and the valve
    // takes its commands in order: once a later command on u1 is confirmed, any result or
    // write the copies above caused is in.
    const marker = randomUUID();
    await issuer.publish(`${PREFIX}/cmd/u1`, timed({ action: moveOf('u1'), key: marker }));
    const markerResult = await observer.waitFor(resultFor(marker, 'u1'), 15_000, 'marker result');
    expect(markerResult.json()).toMatchObject({ state: 'confirmed', replayed: false });
    // One result for the command and one for the replay; the in-flight duplicate added none.
    expect(observer.on(`${PREFIX}/result/u1`).filter((m) => m.json().key === key)).toHaveLength(2);
    expect(writes('u1')).toBe(before + 2);
    expect(await counted(site.stack.metrics, 'mqttMessages', 'replayed')).toBeGreaterThanOrEqual(1);
    expect(await counted(site.stack.metrics, 'mqttMessages', 'in_flight')).toBeGreaterThanOrEqual(
      1,
    );
  });

  it('acknowledges malformed messages (no redelivery) and answers them when a key can be read', async () => {
    const before = { v1: writes('v1'), v2: writes('v2') };
    const pubacks = site.broker.pubacksFrom(CLIENT_ID);
    const settledKey = randomUUID();
    await issuer.publish(`${PREFIX}/cmd/v1`, timed({ action: moveOf('v1'), key: settledKey }));
    await observer.waitFor(resultFor(settledKey, 'v1'), 10_000, 'result');
    const reuseFrom = writes('v1');

    const k = {
      notJson: `nj-${randomUUID()}`,
      bad: `bad-${randomUUID()}`,
      unknown: `unk-${randomUUID()}`,
      mismatch: `mm-${randomUUID()}`,
      retained: `ret-${randomUUID()}`,
    };
    const sends: [string, string | Record<string, unknown>, Record<string, unknown>][] = [
      // Not JSON, no key anywhere: answered only on the Response Topic.
      [`${PREFIX}/cmd/v1`, '{not json', { properties: { responseTopic: 'test/replies/nj' } }],
      // Not JSON, key in a user property: answered on the result topic.
      [
        `${PREFIX}/cmd/v1`,
        'open please',
        { properties: { userProperties: { 'idempotency-key': k.notJson } } },
      ],
      [
        `${PREFIX}/cmd/v2`,
        { action: 'open' },
        { properties: { responseTopic: 'test/replies/nk' } },
      ],
      [`${PREFIX}/cmd/v2`, { action: 'fly', key: k.bad }, {}],
      [`${PREFIX}/cmd/nope`, timed({ action: 'open', key: k.unknown }), {}],
      [`${PREFIX}/cmd/v1`, { action: 'open', device: 'v2', key: k.mismatch }, {}],
      [`${PREFIX}/cmd/v1`, timed({ action: 'stop', key: settledKey }), {}],
      [`${PREFIX}/cmd/v2`, { action: 'open', key: k.retained }, { retain: true }],
    ];
    for (const [topic, payload, options] of sends) await issuer.publish(topic, payload, options);

    const error = async (device: string, key: string): Promise<Record<string, unknown>> =>
      (
        await observer.waitFor(
          (m) => resultFor(key, device)(m) && m.json().code !== 'OK',
          10_000,
          `error for ${key}`,
        )
      ).json();
    const noKeyNotJson = await issuer.waitFor((m) => m.topic === 'test/replies/nj');
    expect(noKeyNotJson.json()).toMatchObject({ key: null, device: 'v1', code: 'INVALID_COMMAND' });
    const noKey = await issuer.waitFor((m) => m.topic === 'test/replies/nk');
    expect(noKey.json()).toMatchObject({ key: null, code: 'MISSING_IDEMPOTENCY_KEY' });
    expect(await error('v1', k.notJson)).toMatchObject({ code: 'INVALID_COMMAND' });
    const bad = await error('v2', k.bad);
    expect(bad).toMatchObject({ device: 'v2', code: 'INVALID_COMMAND' });
    expect(bad.errors).toEqual([mentions('action')]);
    expect(await error('nope', k.unknown)).toMatchObject({ code: 'UNKNOWN_DEVICE' });
    expect(await error('v1', k.mismatch)).toMatchObject({ code: 'INVALID_COMMAND' });
    expect(
      await observer.waitFor(
        (m) => resultFor(settledKey, 'v1')(m) && m.json().code === 'IDEMPOTENCY_KEY_REUSED',
      ),
    ).toBeDefined();
    expect((await error('v2', k.retained)).detail).toContain('retained');
    await issuer.publish(`${PREFIX}/cmd/v2`, '', { retain: true });

    // Every one was acknowledged by the intake (the empty retained clear included), none
    // redelivered, none written.
    await until(
      () =>
        site.broker.pubacksFrom(CLIENT_ID) >= pubacks + 1 + sends.length + 1 ? true : undefined,
      5_000,
      'PUBACKs for the malformed messages',
    );
    // Acknowledged, none can be redelivered now; the broker's log holds every delivery made
    // before the PUBACKs it logged.
    for (const device of ['v1', 'v2', 'nope']) {
      expect(
        site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/${device}`).filter((d) => d.dup),
      ).toEqual([]);
    }
    expect(writes('v1')).toBe(reuseFrom);
    expect(reuseFrom).toBe(before.v1 + 1);
    expect(writes('v2')).toBe(before.v2);
    expect(site.stack.pipeline.get({ scope: 'plant', key: k.bad })).toBeUndefined();
    expect(await counted(site.stack.metrics, 'mqttMessages', 'invalid')).toBeGreaterThanOrEqual(6);
    expect(await counted(site.stack.metrics, 'mqttMessages', 'unknown_device')).toBe(1);
    expect(await counted(site.stack.metrics, 'mqttMessages', 'key_reused')).toBe(1);
  });

  it('answers a payload device nested thousands of levels deep INVALID_COMMAND, once, and goes on with the commands behind it', async () => {
    const topic = `${PREFIX}/cmd/v1`;
    const before = writes('v1');
    const redelivered = site.broker.deliveriesTo(CLIENT_ID, topic).filter((d) => d.dup).length;
    const connections = site.broker.connectionsOf(CLIENT_ID);
    const deep = randomUUID();
    // Within the 16 KiB a command may have: 8 000 nested arrays as the payload's `device`.
    const payload = JSON.stringify(timed({ key: deep, action: moveOf('v1') })).replace(
      /}$/,
      `,"device":${'['.repeat(8_000)}${']'.repeat(8_000)}}`,
    );
    expect(payload.length).toBeLessThan(16_384);
    await issuer.publish(topic, payload);
    // Behind it on the same topic, in the same session: a command that must run.
    const next = randomUUID();
    await issuer.publish(topic, timed({ key: next, action: moveOf('v1') }));

    const answer = await observer.waitFor(resultFor(deep, 'v1'), 10_000, 'answer');
    expect(answer.json()).toMatchObject({ code: 'INVALID_COMMAND', device: 'v1' });
    expect(answer.json().detail).toContain('an array does not match the topic\'s device "v1"');
    const result = await observer.waitFor(resultFor(next, 'v1'), 10_000, 'result');
    expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
    // Ground truth: one write (the command behind it), the deep one never journaled, neither
    // message redelivered, the intake's connection never dropped for it.
    expect(writes('v1')).toBe(before + 1);
    expect(site.stack.pipeline.get({ scope: 'plant', key: deep })).toBeUndefined();
    expect(site.broker.deliveriesTo(CLIENT_ID, topic).filter((d) => d.dup)).toHaveLength(
      redelivered,
    );
    expect(site.broker.connectionsOf(CLIENT_ID)).toBe(connections);
  });

  it('a message past the Maximum Packet Size is not delivered to the gateway; one within it is answered', async () => {
    const topic = `${PREFIX}/cmd/v2`;
    const deliveredBefore = site.broker.deliveriesTo(CLIENT_ID, topic).length;
    const droppedBefore = site.broker
      .log()
      .split('\n')
      .filter((line) => line.includes('Dropping too large')).length;
    const before = writes('v2');
    const keys = { huge: `huge-${randomUUID()}`, large: `large-${randomUUID()}`, ok: randomUUID() };
    const withKey = (key: string): Record<string, unknown> => ({
      properties: { userProperties: { 'idempotency-key': key } },
    });
    // Past MAX_PACKET_BYTES: the broker drops it for the gateway. Within it but past a
    // command's 16 KiB: read and answered INVALID_COMMAND. Then a command.
    await issuer.publish(topic, 'x'.repeat(MAX_PACKET_BYTES + 1024), withKey(keys.huge));
    await issuer.publish(topic, 'x'.repeat(1024 * 1024), withKey(keys.large));
    await issuer.publish(topic, timed({ action: moveOf('v2'), key: keys.ok }));
    // Delivered in order on one topic: once the command's result is here, the two before it
    // were delivered (and answered) or dropped.
    await observer.waitFor(resultFor(keys.ok, 'v2'), 10_000, 'the command after them');
    const large = await observer.waitFor(resultFor(keys.large, 'v2'), 10_000, 'large answered');
    expect(large.json()).toMatchObject({ code: 'INVALID_COMMAND' });
    expect(observer.messages.filter(resultFor(keys.huge, 'v2'))).toEqual([]);
    // Ground truth from the broker's log: three sent to the gateway, the first of them dropped
    // as too large for it (mosquitto logs the send, then the drop).
    expect(site.broker.deliveriesTo(CLIENT_ID, topic).length - deliveredBefore).toBe(3);
    const drops = site.broker
      .log()
      .split('\n')
      .filter((line) => line.includes(`Dropping too large outgoing PUBLISH for ${CLIENT_ID} (`));
    expect(drops.length - droppedBefore).toBe(1);
    expect(writes('v2')).toBe(before + 1);
  });

  it('answers a command topic as long as MQTT allows on its Response Topic only: its result topic would be too long', async () => {
    // `{prefix}/cmd/{device}` of 65 535 bytes, the most a topic may have: `result/{device}`
    // would be 3 bytes longer. Publishing there made mqtt.js throw outside any handler.
    const device = 'd'.repeat(65_535 - `${PREFIX}/cmd/`.length);
    const key = `long-${randomUUID()}`;
    await issuer.publish(`${PREFIX}/cmd/${device}`, timed({ action: 'open', key }), {
      properties: { responseTopic: 'test/replies/long', correlationData: Buffer.from('long') },
    });
    const answer = await issuer.waitFor((m) => m.topic === 'test/replies/long', 10_000, 'answer');
    expect(answer.json()).toMatchObject({ key, code: 'INVALID_COMMAND' });
    expect(answer.packet.properties?.correlationData?.toString()).toBe('long');

    // The connection is intact: the next command is claimed, written once and its result
    // published, with no reconnection in between.
    const connections = (): number => site.broker.connectionsOf(CLIENT_ID);
    const connected = connections();
    const next = randomUUID();
    const before = writes('v1');
    await issuer.publish(`${PREFIX}/cmd/v1`, timed({ action: moveOf('v1'), key: next }));
    const result = await observer.waitFor(resultFor(next, 'v1'), 10_000, 'result');
    expect(result.json()).toMatchObject({ state: 'confirmed' });
    expect(writes('v1')).toBe(before + 1);
    expect(connections()).toBe(connected);
    expect(observer.messages.some((m) => m.topic.length > 65_535)).toBe(false);
  });

  it('refuses an untimed command: INVALID_COMMAND on the result topic and the Response Topic, acknowledged, never written', async () => {
    const key = `untimed-${randomUUID()}`;
    const before = writes('v1');
    const pubacks = site.broker.pubacksFrom(CLIENT_ID);
    const untimed = await counted(site.stack.metrics, 'mqttMessages', 'untimed');
    await issuer.publish(
      `${PREFIX}/cmd/v1`,
      { action: moveOf('v1'), key },
      { properties: { responseTopic: 'test/replies/untimed', correlationData: Buffer.from('u') } },
    );
    const answer = await observer.waitFor(resultFor(key, 'v1'), 10_000, 'answer');
    expect(answer.json()).toMatchObject({ key, device: 'v1', code: 'INVALID_COMMAND' });
    expect(answer.json().state).toBeUndefined();
    expect(String(answer.json().detail)).toContain('issuedAt');
    const reply = await issuer.waitFor((m) => m.topic === 'test/replies/untimed');
    expect(reply.json()).toMatchObject({ key, code: 'INVALID_COMMAND' });
    expect(reply.packet.properties?.correlationData?.toString()).toBe('u');
    // Acknowledged once (no redelivery), never journaled, never written.
    await until(() => (site.broker.pubacksFrom(CLIENT_ID) > pubacks ? true : undefined));
    expect(site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/v1`).filter((d) => d.dup)).toEqual(
      [],
    );
    expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
    expect(writes('v1')).toBe(before);
    expect(await counted(site.stack.metrics, 'mqttMessages', 'untimed')).toBe(untimed + 1);
  });

  it('refuses a command timed by a Message Expiry Interval longer than the journal keeps its key; one within it runs', async () => {
    // Timed from its receipt, such a command is fresh at every delivery, and the broker may
    // deliver it again until its interval runs out: its key must still be journaled then (I1).
    // The site keeps keys 48 h (172,800 s).
    const key = `expiry-${randomUUID()}`;
    const action = moveOf('v1');
    const log = site.stack.plant.device('v1').writeLog.length;
    const pubacks = site.broker.pubacksFrom(CLIENT_ID);
    await issuer.publish(
      `${PREFIX}/cmd/v1`,
      { action, key },
      {
        properties: {
          messageExpiryInterval: 172_800 + 600,
          responseTopic: 'test/replies/expiry',
          correlationData: Buffer.from('e'),
        },
      },
    );
    const answer = await observer.waitFor(resultFor(key, 'v1'), 10_000, 'answer');
    expect(answer.json()).toMatchObject({ key, device: 'v1', code: 'INVALID_COMMAND' });
    expect(answer.json().state).toBeUndefined();
    expect(String(answer.json().detail)).toMatch(
      /^Message Expiry Interval 1734\d\d s without issuedAt: longer than this gateway keeps a settled key \(journal\.retentionHours, 172800 s\).*send issuedAt, or an interval of at most 172800 s; nothing was written$/,
    );
    const reply = await issuer.waitFor((m) => m.topic === 'test/replies/expiry');
    expect(reply.json()).toMatchObject({ key, code: 'INVALID_COMMAND' });
    await until(() => (site.broker.pubacksFrom(CLIENT_ID) > pubacks ? true : undefined));
    expect(site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/v1`).filter((d) => d.dup)).toEqual(
      [],
    );
    // Ground truth: no row for the key, no write.
    expect(site.stack.journal.findByKey(key)).toEqual([]);
    expect(site.stack.plant.device('v1').writeLog).toHaveLength(log);

    // Within the retention: taken, timed from its receipt, written once.
    const within = `expiry-${randomUUID()}`;
    await issuer.publish(
      `${PREFIX}/cmd/v1`,
      { action, key: within },
      { properties: { messageExpiryInterval: 172_800 - 600 } },
    );
    const result = await observer.waitFor(resultFor(within, 'v1'), 10_000, 'result');
    expect(result.json()).toMatchObject({
      key: within,
      state: 'confirmed',
      issuedAtSource: 'gateway',
    });
    const seq = Number(result.json().seq);
    expect(site.stack.plant.device('v1').writeLog).toHaveLength(log + 1);
    expect(site.stack.plant.device('v1').writesWithSeq(seq)).toBe(1);
  });

  it('refuses a misspelt ttlMs (never the default TTL): answered, acknowledged, not journaled, never written; spelt right it runs', async () => {
    const key = `ttl-${randomUUID()}`;
    const action = moveOf('v1');
    const log = site.stack.plant.device('v1').writeLog.length;
    const before = writes('v1');
    const pubacks = site.broker.pubacksFrom(CLIENT_ID);
    await issuer.publish(`${PREFIX}/cmd/v1`, timed({ action, key, ttl: 5000 }), {
      properties: { responseTopic: 'test/replies/ttl', correlationData: Buffer.from('t') },
    });
    const answer = await observer.waitFor(resultFor(key, 'v1'), 10_000, 'answer');
    expect(answer.json()).toMatchObject({ key, device: 'v1', code: 'INVALID_COMMAND' });
    expect(answer.json().state).toBeUndefined();
    expect(answer.json().errors).toEqual([
      'ttl: is not a field of a command (did you mean "ttlMs"?); the fields are device, action, position, issuedAt, ttlMs, key: a field that is not understood is refused, not ignored',
    ]);
    const reply = await issuer.waitFor((m) => m.topic === 'test/replies/ttl');
    expect(reply.json()).toMatchObject({ key, code: 'INVALID_COMMAND' });
    await until(() => (site.broker.pubacksFrom(CLIENT_ID) > pubacks ? true : undefined));
    expect(site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/v1`).filter((d) => d.dup)).toEqual(
      [],
    );
    // Ground truth: no row for the key in the journal file, no write at the controller.
    expect(site.stack.journal.findByKey(key)).toEqual([]);
    expect(site.stack.plant.device('v1').writeLog).toHaveLength(log);

    // Spelt right, the same key is a new command and runs with the TTL it asks for.
    await issuer.publish(`${PREFIX}/cmd/v1`, timed({ action, key, ttlMs: 5000 }));
    const result = await observer.waitFor(
      (m) => resultFor(key, 'v1')(m) && m.json().state !== undefined,
      10_000,
      'result',
    );
    expect(result.json()).toMatchObject({ key, action, state: 'confirmed', replayed: false });
    const [record] = site.stack.journal.findByKey(key);
    expect(record?.ttlMs).toBe(5000);
    expect(
      site.stack.plant
        .device('v1')
        .writeLog.slice(log)
        .map((w) => w.seq),
    ).toEqual([record?.seq]);
    expect(writes('v1')).toBe(before + 1);
  });

  it('answers a command topic that names no device (cmd/): on the Response Topic and result/, acknowledged', async () => {
    const key = `nodev-${randomUUID()}`;
    const pubacks = site.broker.pubacksFrom(CLIENT_ID);
    const before = { v1: writes('v1'), v2: writes('v2') };
    await observer.subscribe(`${PREFIX}/result/`);
    await issuer.publish(`${PREFIX}/cmd/`, timed({ action: 'open', key }), {
      properties: { responseTopic: 'test/replies/nodev', correlationData: Buffer.from('nd') },
    });
    const reply = await issuer.waitFor((m) => m.topic === 'test/replies/nodev', 10_000, 'reply');
    expect(reply.json()).toMatchObject({ key, device: '', code: 'INVALID_COMMAND' });
    expect(String(reply.json().detail)).toContain('names no device');
    expect(reply.packet.properties?.correlationData?.toString()).toBe('nd');
    const result = await observer.waitFor(
      (m) => m.topic === `${PREFIX}/result/` && m.json().key === key,
      10_000,
      'answer on result/',
    );
    expect(result.json()).toMatchObject({ code: 'INVALID_COMMAND' });
    await until(() => (site.broker.pubacksFrom(CLIENT_ID) > pubacks ? true : undefined));
    expect(site.broker.deliveriesTo(CLIENT_ID, `${PREFIX}/cmd/`).filter((d) => d.dup)).toEqual([]);
    expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
    expect({ v1: writes('v1'), v2: writes('v2') }).toEqual(before);
  });

  it('answers only allowed Response Topics, never a command topic; counts each refusal', async () => {
    const refused = async (reason: string): Promise<number> =>
      (await site.stack.metrics.mqttResponseTopicsRefused.get()).values
        .filter((v) => v.labels.reason === reason)
        .reduce((sum, v) => sum + v.value, 0);
    const spy = await TestClient.connect(site.broker.url);
    try {
      await spy.subscribe('sluice/+/cmd/#');
      await spy.subscribe('elsewhere/#');
      const counts = {
        command: await refused('command_topic'),
        notAllowed: await refused('not_allowed'),
      };
      const keys = { cmd: `rt-cmd-${randomUUID()}`, other: `rt-other-${randomUUID()}` };
      await issuer.publish(`${PREFIX}/cmd/v2`, timed({ action: 'fly', key: keys.cmd }), {
        properties: { responseTopic: 'sluice/other-gw/cmd/v2' },
      });
      await issuer.publish(`${PREFIX}/cmd/v2`, timed({ action: 'fly', key: keys.other }), {
        properties: { responseTopic: 'elsewhere/x' },
      });
      // Answered on the result topic all the same; then a fence: an allowed route's reply,
      // published after both, proves the refused ones were not published.
      await observer.waitFor(resultFor(keys.cmd, 'v2'), 10_000, 'answer');
      await observer.waitFor(resultFor(keys.other, 'v2'), 10_000, 'answer');
      await issuer.publish(`${PREFIX}/cmd/v2`, timed({ action: 'fly', key: 'fence' }), {
        properties: { responseTopic: 'test/replies/fence' },
      });
      await issuer.waitFor((m) => m.topic === 'test/replies/fence', 10_000, 'fence reply');
      expect(spy.messages.filter((m) => m.topic !== `${PREFIX}/cmd/v2`)).toEqual([]);
      expect(await refused('command_topic')).toBe(counts.command + 1);
      expect(await refused('not_allowed')).toBe(counts.notAllowed + 1);
    } finally {
      await spy.end();
    }
  });

  it('works over MQTT 3.1.1, and a clean stop publishes retained offline', async () => {
    const v4 = intakeOf('gw4', { protocolVersion: 4, clientId: 'sluice-gw4' });
    const client = await TestClient.connect(site.broker.url, { protocolVersion: 4 });
    try {
      v4.start();
      await until(() => v4.connected() || undefined, 10_000, 'v4 intake connected');
      await client.subscribe('sluice/gw4/#');
      const key = randomUUID();
      const before = writes('v2');
      await client.publish('sluice/gw4/cmd/v2', timed({ action: moveOf('v2'), key }));
      const result = await client.waitFor(
        (m) => m.topic === 'sluice/gw4/result/v2' && m.json().key === key,
        10_000,
        'v4 result',
      );
      expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
      expect(writes('v2')).toBe(before + 1);
      expect(site.broker.pubacksFrom('sluice-gw4')).toBeGreaterThanOrEqual(1);
      await client.publish('sluice/gw4/cmd/v2', { action: 'nope', key: 'v4-bad' });
      expect(
        (
          await client.waitFor(
            (m) => m.topic === 'sluice/gw4/result/v2' && m.json().key === 'v4-bad',
          )
        ).json(),
      ).toMatchObject({ code: 'INVALID_COMMAND' });
      expect(client.on('sluice/gw4/status').map((m) => m.text)).toEqual(['online']);

      await v4.stop();
      expect(v4.connected()).toBe(false);
      const offline = await client.waitFor(
        (m) => m.topic === 'sluice/gw4/status' && m.text === 'offline',
        5_000,
        'offline',
      );
      expect(offline.text).toBe('offline');
      const late = await TestClient.connect(site.broker.url, { protocolVersion: 4 });
      await late.subscribe('sluice/gw4/status');
      const retained = await late.waitFor(() => true);
      expect(retained.text).toBe('offline');
      await late.end();
    } finally {
      await v4.stop();
      await client.end();
    }
  });

  it('MQTT 3.1.1: a command published retained runs once; its replays at each new subscription are refused (I1)', async () => {
    // 3.1.1 §3.3.1.3: the broker clears the retain flag of a live delivery, so the gateway
    // cannot tell it was retained; each replay from the retained store carries the flag.
    const newV4 = (): MqttIntake =>
      intakeOf('gwr', { protocolVersion: 4, clientId: 'sluice-gwr' }, { minMs: 100, maxMs: 500 });
    const client = await TestClient.connect(site.broker.url, { protocolVersion: 4 });
    let v4 = newV4();
    const topic = 'sluice/gwr/cmd/v1';
    try {
      v4.start();
      await until(() => v4.connected() || undefined, 10_000, 'v4 intake connected');
      await client.subscribe('sluice/gwr/result/v1');
      const key = randomUUID();
      const before = writes('v1');
      await client.publish(topic, timed({ action: moveOf('v1'), key }), { retain: true });
      const answers = (): Record<string, unknown>[] =>
        client
          .on('sluice/gwr/result/v1')
          .map((m) => m.json())
          .filter((a) => a.key === key);
      await until(() => (answers().length === 1 ? true : undefined), 10_000, 'the result');
      expect(answers()[0]).toMatchObject({ state: 'confirmed' });

      // Twice the session is lost (a broker without persistence, an expired session): the
      // gateway subscribes again and the broker replays the retained command each time.
      for (const round of [2, 3]) {
        await v4.stop();
        const clean = await TestClient.connect(site.broker.url, {
          protocolVersion: 4,
          clientId: 'sluice-gwr',
          clean: true,
        });
        await clean.end();
        v4 = newV4();
        v4.start();
        await until(() => (answers().length === round ? true : undefined), 10_000, 'the refusal');
        expect(answers()[round - 1]).toMatchObject({ code: 'INVALID_COMMAND' });
        expect(String(answers()[round - 1]?.detail)).toContain('retained');
      }
      expect(site.broker.deliveriesTo('sluice-gwr', topic).length).toBe(3);
      expect(writes('v1')).toBe(before + 1);
    } finally {
      await client.publish(topic, '', { retain: true });
      await v4.stop();
      await client.end();
    }
  });
});
