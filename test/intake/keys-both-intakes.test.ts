import { randomUUID } from 'node:crypto';
import { beforeAll, describe, expect, it } from 'vitest';
import {
  mosquittoAvailable,
  TestClient,
  timed,
  until,
  useMqttSite,
  type Received,
} from '../helpers/mqtt-site.js';
import { TOKENS } from '../helpers/stack.js';
import { call, makePki, startIntake, type Pki, type RunningIntake } from './https-client.js';

/**
 * One key, one command, whichever intake carries it (SPEC §2, I1): the HTTPS intake over TLS
 * on loopback and the MQTT intake through a real Mosquitto, on one stack (the `plant` identity
 * is both the token's and the MQTT intake's). The Idempotency-Key header is a Structured Field
 * string, so its quotes delimit the key; a key never holds a quote itself, so that `"k"` cannot
 * be the key `k` over HTTPS and another key over MQTT. Ground truth: the journal file's rows
 * for a key and the simulator's write log.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('idempotency keys on both intakes', () => {
  const PREFIX = 'sluice/gw';
  // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
  const site = useMqttSite({}, { opcua: false });
  const { cleanups } = site;
  let pki: Pki;
  let api: RunningIntake;
  let issuer: TestClient;

  const v1 = () => site.stack.plant.device('v1');
  const moving = (): 'open' | 'close' => (v1().published.state === 'CLOSED' ? 'open' : 'close');
  const rows = (key: string): number => site.stack.journal.findByKey(key).length;
  const post = (key: string, body: Record<string, unknown>) =>
    call(api, 'POST', '/v1/commands', {
      token: TOKENS.plant,
      json: body,
      headers: { 'idempotency-key': key },
    });
  /** The next answer on the result topic or the reply topic that carries `key`. */
  const answerFor =
    (key: string) =>
    (m: Received): boolean =>
      (m.topic === `${PREFIX}/result/v1` || m.topic.startsWith('test/replies/')) &&
      m.json().key === key;

  beforeAll(async () => {
    pki = await makePki();
    cleanups.push(() => {
      pki.cleanup();
    });
    api = await startIntake(site.stack, pki);
    cleanups.push(() => api.stop());
    const mqtt = site.intake({
      gatewayId: 'gw',
      config: { protocolVersion: 5 },
      reconnect: { minMs: 100, maxMs: 1_000 },
    });
    cleanups.push(() => mqtt.stop());
    await site.connect(mqtt);
    issuer = await TestClient.connect(site.broker.url);
    cleanups.push(() => issuer.end());
    await issuer.subscribe(`${PREFIX}/result/#`);
    await issuer.subscribe('test/replies/#');
  }, 60_000);

  it('a key bare in an MQTT payload and quoted in the header is one command, written once', async () => {
    const key = `both-${randomUUID()}`;
    const body = timed({ action: moving() });
    const log = v1().writeLog.length;
    await issuer.publish(`${PREFIX}/cmd/v1`, { ...body, key });
    const result = await issuer.waitFor(
      (m) => answerFor(key)(m) && m.json().state === 'confirmed',
      10_000,
      'MQTT result',
    );
    const replay = await post(`"${key}"`, { device: 'v1', ...body });
    expect(replay.status).toBe(200);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    expect(replay.text).toBe(result.text);
    expect(rows(key)).toBe(1);
    expect(v1().writeLog.length).toBe(log + 1);
  });

  it('a quoted key in an MQTT payload is refused, not taken as another command than the header\'s "k"', async () => {
    const key = `q-${randomUUID()}`;
    const body = timed({ action: moving() });
    const log = v1().writeLog.length;
    // Over HTTPS the quotes are the Structured Field's: the key is `key`.
    const first = await post(`"${key}"`, { device: 'v1', ...body });
    expect(first.status).toBe(200);
    expect(first.json).toMatchObject({ key, state: 'confirmed' });
    expect(v1().writeLog.length).toBe(log + 1);

    // The same characters as an MQTT key (payload or user property) would have been the key
    // `"key"`: a second command, a second write. Refused, answered, acknowledged.
    const quoted = `"${key}"`;
    const pubacks = site.broker.pubacksFrom('sluice-gw');
    await issuer.publish(`${PREFIX}/cmd/v1`, { ...body, key: quoted });
    await issuer.publish(`${PREFIX}/cmd/v1`, body, {
      properties: {
        userProperties: { 'idempotency-key': quoted },
        responseTopic: 'test/replies/quoted',
      },
    });
    const onResult = (m: Received): boolean =>
      m.topic === `${PREFIX}/result/v1` && m.json().key === quoted;
    const answers = await until(
      () => {
        const found = issuer.messages.filter(onResult);
        return found.length >= 2 ? found : undefined;
      },
      10_000,
      'both refusals',
    );
    for (const answer of answers) {
      expect(answer.json()).toMatchObject({ code: 'MISSING_IDEMPOTENCY_KEY' });
      expect(String(answer.json().detail)).toContain('no double quote');
    }
    const reply = await issuer.waitFor((m) => m.topic === 'test/replies/quoted');
    expect(reply.json()).toMatchObject({ key: quoted, code: 'MISSING_IDEMPOTENCY_KEY' });
    await until(() => (site.broker.pubacksFrom('sluice-gw') >= pubacks + 2 ? true : undefined));
    expect(rows(quoted)).toBe(0);
    expect(rows(key)).toBe(1);
    expect(v1().writeLog.length).toBe(log + 1);
  });

  it('a key with a quote inside is refused by both intakes; `""` by both', async () => {
    const body = timed({ action: moving() });
    const log = v1().writeLog.length;
    for (const key of [`a"${randomUUID()}`, '""']) {
      const https = await post(key, { device: 'v1', ...body });
      expect(https.status).toBe(400);
      expect(https.json).toMatchObject({ code: 'MISSING_IDEMPOTENCY_KEY' });
      await issuer.publish(`${PREFIX}/cmd/v1`, { ...body, key });
      const answer = await issuer.waitFor(answerFor(key), 10_000, `refusal of ${key}`);
      expect(answer.json()).toMatchObject({ code: 'MISSING_IDEMPOTENCY_KEY' });
      expect(rows(key)).toBe(0);
    }
    // Escaped inside the Structured Field string, a quote is still a quote in the key.
    const escaped = await post('"a\\"b"', { device: 'v1', ...body });
    expect(escaped.status).toBe(400);
    expect(rows('a"b')).toBe(0);
    expect(v1().writeLog.length).toBe(log);
  });
});
