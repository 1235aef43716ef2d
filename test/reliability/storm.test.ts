import { Worker } from 'node:worker_threads';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { workerEntry } from '../helpers/entry.js';
import { TestClient, mosquittoAvailable } from '../helpers/mosquitto.js';
import type { FinalAnswer, StormJob, StormReply } from './https-clients.js';
import { Site } from './site.js';
import {
  assertInvariants,
  journalState,
  nowIso,
  plantWrites,
  until,
  writesOf,
  type ResultDoc,
} from './support.js';

/**
 * Duplicate storm (issue 10): the same keys from many concurrent clients on both intakes at
 * once, against the real `sluiced` process, a real Mosquitto and sluice-sim (Modbus and OPC UA).
 * Every key must reach its controller exactly once (the simulators' write logs, per sequence
 * number), every HTTPS client of a key must end with the same answer (status and body bytes),
 * and the MQTT result topic must carry the result once and every later duplicate as a replay.
 *
 * Keys come in waves, one key per device per wave, a wave starting as soon as the previous
 * one is claimed (while its commands still travel): a device takes its commands in claim order,
 * so each key's command moves its device and needs exactly one write. SLUICE_CAMPAIGN_SOAK=1
 * runs a longer storm.
 */

const real = mosquittoAvailable();
const SOAK = process.env.SLUICE_CAMPAIGN_SOAK === '1';
const WAVES = SOAK ? 25 : 5;
const HTTPS_CLIENTS = SOAK ? 40 : 30;
const MQTT_PUBLISHERS = 10;
const GW = 'storm';
const DEVICES = ['mb-valve-1', 'mb-valve-2', 'mb-actuator', 'ua-valve'] as const;

interface StormKey {
  readonly key: string;
  readonly device: string;
  readonly body: Record<string, unknown>;
}

describe.runIf(real)('duplicate storm on the real daemon', () => {
  let site: Site;
  let watcher: TestClient;
  const results = new Map<string, { text: string; doc: Record<string, unknown> }[]>();
  const originals = (key: string) =>
    (results.get(key) ?? []).filter((r) => r.doc.replayed === false);
  const replays = (key: string) => (results.get(key) ?? []).filter((r) => r.doc.replayed === true);
  let clients: Worker;
  const pending = new Map<number, (reply: StormReply) => void>();
  const publishers: TestClient[] = [];
  let nextJob = 0;
  const releasers: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    // Device timeouts of a plant network (2 s) rather than the simulator's tight defaults:
    // hundreds of TLS handshakes on a 2-core CI machine can stall the daemon for a few hundred
    // milliseconds, and a timed-out readback would end a command honestly (DEVICE_UNREACHABLE)
    // — not what this campaign measures, which is one write and one answer per key.
    site = await Site.start({
      opcua: true,
      gatewayId: GW,
      requestTimeoutMs: 2_000,
      timing: { redispatchGuardMs: 2_500, confirmTimeoutMs: 10_000 },
    });
    releasers.push(() => site.close());
    await site.startDaemon();
    // The HTTPS clients run in a worker thread: hundreds of TLS handshakes on this thread
    // would starve the simulated PLCs it hosts (seconds of event-loop lag), and the bridge
    // would rightly fail commands whose controller does not answer.
    const { script, execArgv } = workerEntry('test/reliability/https-clients.ts');
    clients = new Worker(script, { workerData: site.httpsEndpoint, execArgv });
    clients.on('message', (reply: StormReply) => pending.get(reply.id)?.(reply));
    releasers.push(async () => {
      await clients.terminate();
    });
    watcher = await TestClient.connect(site.broker.url, { clientId: 'storm-watcher' });
    releasers.push(() => watcher.end());
    // Result documents by key, parsed once as they arrive: the checks below look up hundreds
    // of keys among thousands of messages, on the thread that hosts the simulated PLCs.
    watcher.client.on('message', (topic, payload) => {
      if (!topic.includes('/result/')) return;
      const text = payload.toString('utf8');
      const doc = JSON.parse(text) as Record<string, unknown>;
      const key = String(doc.key);
      const list = results.get(key) ?? [];
      list.push({ text, doc });
      results.set(key, list);
    });
    await watcher.subscribe(`sluice/${GW}/result/#`);
    for (let i = 0; i < MQTT_PUBLISHERS; i++) {
      const publisher = await TestClient.connect(site.broker.url, { clientId: `storm-pub-${i}` });
      releasers.push(() => publisher.end());
      publishers.push(publisher);
    }
    await until(
      async () => {
        const answer = await site.https('GET', '/readyz');
        return answer.status === 200 ? true : undefined;
      },
      30_000,
      'the daemon ready',
      100,
    );
  }, 90_000);

  afterAll(async () => {
    for (let r = releasers.pop(); r !== undefined; r = releasers.pop()) await r();
  }, 60_000);

  it(`${WAVES * DEVICES.length} keys × (${HTTPS_CLIENTS} HTTPS clients + ${MQTT_PUBLISHERS} MQTT publishers): one write per key, one answer per key`, async () => {
    const started = Date.now();
    let maxLag = 0;
    let last = performance.now();
    const lagTimer = setInterval(() => {
      const now = performance.now();
      maxLag = Math.max(maxLag, now - last - 10);
      last = now;
    }, 10);
    const writesBefore = plantWrites(site);
    const keys: StormKey[] = [];
    const storms: Promise<FinalAnswer[]>[] = [];
    const publishes: Promise<void>[] = [];
    const issuedAt = nowIso();
    for (let wave = 0; wave < WAVES; wave++) {
      const batch = DEVICES.map((device) => stormKey(device, wave, issuedAt));
      keys.push(...batch);
      // Every client of every key of the wave at once, on both intakes.
      for (const k of batch) {
        for (const publisher of publishers) publishes.push(publishCommand(publisher, k));
        storms.push(httpsClients(k));
      }
      // The next wave once this one is claimed: each device then takes them in wave order.
      for (const k of batch) await journalState(site, k.key, JOURNALED, 15_000, 20);
      // At most three waves in flight: a longer storm (the soak) lasts longer, not harder. A
      // wave is in flight until its HTTPS clients have their answers, not only until its
      // commands end: the MQTT publishers claim a wave's keys and the devices settle them in
      // well under a second, so gated on the journal alone the soak launched all its 4,000
      // clients within ten seconds. From one address, past https.maxConnectionsPerAddress
      // (256), most were refused and the admitted ones queued for their TLS handshakes (on a
      // 2-core machine, past the 10 s handshake bound); some client was refused for a minute
      // in a row and the run failed, while the clients that did get through found their
      // commands long settled (none saw one in flight: no storm).
      if (wave >= 2) {
        await Promise.all(storms.slice((wave - 2) * DEVICES.length, (wave - 1) * DEVICES.length));
      }
      const settledWave = keys.slice((wave - 2) * DEVICES.length, (wave - 1) * DEVICES.length);
      for (const k of wave >= 2 ? settledWave : []) {
        await journalState(site, k.key, TERMINAL, 60_000, 20);
      }
    }
    const answers = await Promise.all(storms);
    clearInterval(lagTimer);
    await Promise.all(publishes);

    // Every HTTPS client of a key ended with the same status and the same body bytes.
    for (const [i, k] of keys.entries()) {
      const finals = answers[i]!;
      const first = finals[0]!;
      expect(first.status, `${k.key}: ${first.body}\n${explain(site, k)}`).toBe(200);
      for (const answer of finals) {
        expect({ status: answer.status, body: answer.body }, k.key).toEqual({
          status: first.status,
          body: first.body,
        });
      }
      const result = JSON.parse(first.body) as ResultDoc;
      expect(result).toMatchObject({ key: k.key, state: 'confirmed', code: 'OK' });
      // Ground truth: this key's sequence number reached its controller exactly once.
      expect(result.seq, `${k.key} was a no-op`).not.toBeNull();
      expect(writesOf(site, k.device, result.seq)).toBe(1);
    }

    // MQTT: the outcome once on the result topic, the same bytes HTTPS answered.
    for (const [i, k] of keys.entries()) {
      const body = answers[i]![0]!.body;
      const original = await until(() => originals(k.key)[0], 30_000, `the result of ${k.key}`);
      expect(original.text).toBe(body);
    }
    // Every publisher retries every key after it settled: each retry is answered as a replay
    // with the stored result, and nothing is written.
    const replaysBefore = new Map(keys.map((k) => [k.key, replays(k.key).length]));
    await Promise.all(keys.flatMap((k) => publishers.map((p) => publishCommand(p, k))));
    for (const [i, k] of keys.entries()) {
      const stored = JSON.parse(answers[i]![0]!.body) as Record<string, unknown>;
      await until(
        () =>
          replays(k.key).length >= replaysBefore.get(k.key)! + MQTT_PUBLISHERS ? true : undefined,
        30_000,
        `${MQTT_PUBLISHERS} replays of ${k.key}`,
      );
      for (const replay of replays(k.key))
        expect(replay.doc).toEqual({ ...stored, replayed: true });
      expect(originals(k.key)).toHaveLength(1);
    }

    // The journal: one record per key; the plant: one write per key, nothing else.
    const records = site.records();
    for (const k of keys) expect(records.filter((r) => r.key === k.key)).toHaveLength(1);
    expect(plantWrites(site) - writesBefore).toBe(keys.length);
    assertInvariants(site);
    const counts = site.counts();
    const httpsRequests = answers.flat().reduce((n, a) => n + a.attempts, 0);
    const waited = answers.flat().reduce((n, a) => n + a.inFlight, 0);
    console.log(
      [
        `duplicate storm: ${keys.length} keys, ${WAVES} waves, ${HTTPS_CLIENTS} HTTPS clients and ${MQTT_PUBLISHERS} MQTT publishers per key`,
        `  HTTPS requests ${httpsRequests} (${waited} answered IN_PROGRESS or 202 and retried), MQTT publishes ${keys.length * MQTT_PUBLISHERS * 2}`,
        `  commands ${counts.commands}, controller writes ${plantWrites(site) - writesBefore}, duplicates absorbed ${counts.duplicates}`,
        `  violations 0 (I1, I2, I3, I5, attribution), ${Date.now() - started} ms (simulators' event-loop lag at most ${Math.round(maxLag)} ms)`,
      ].join('\n'),
    );
  }, 180_000);

  /** HTTPS_CLIENTS clients (in the worker) each POST the key until their answer is final. */
  async function httpsClients(k: StormKey): Promise<FinalAnswer[]> {
    const id = nextJob++;
    const job: StormJob = {
      id,
      key: k.key,
      body: JSON.stringify(k.body),
      clients: HTTPS_CLIENTS,
      deadlineMs: 60_000,
    };
    const reply = await new Promise<StormReply>((resolve) => {
      pending.set(id, resolve);
      clients.postMessage(job);
    });
    pending.delete(id);
    if ('error' in reply) throw new Error(`HTTPS clients of ${k.key}: ${reply.error}`);
    // Acknowledged over HTTPS (I5: it must be journaled).
    if (reply.answers.some((a) => a.status !== 503 && a.status !== 429)) {
      site.acknowledged.set(k.key, 'https');
    }
    return reply.answers;
  }

  async function publishCommand(publisher: TestClient, k: StormKey): Promise<void> {
    const { device, ...command } = k.body;
    await publisher.publish(`sluice/${GW}/cmd/${String(device)}`, { key: k.key, ...command });
  }
});

/** The ground truth about a key, for a failure message: its journal history, its writes. */
function explain(site: Site, k: StormKey): string {
  const record = site.records().find((r) => r.key === k.key);
  const history =
    record === undefined
      ? ['(not journaled)']
      : site.history(record).map((e) => `${new Date(e.at).toISOString()} ${e.to} ${e.detail}`);
  const writes = site.plant
    .device(k.device)
    .writeLog.map(
      (w) => `seq ${w.seq} code ${w.code} ${w.outcome ?? 'pending'} at ${w.receivedAt}`,
    );
  return [`history of ${k.key}:`, ...history, `write log of ${k.device}:`, ...writes].join('\n  ');
}

const TERMINAL = ['confirmed', 'rejected', 'failed'];
const JOURNALED = ['accepted', 'dispatched', 'confirmed', 'rejected', 'failed'];

/** A key whose command moves its device whatever the wave before it did. */
function stormKey(device: string, wave: number, issuedAt: string): StormKey {
  const key = `storm-${device}-${wave}`;
  const command =
    device === 'mb-actuator'
      ? { action: 'move', position: wave % 2 === 0 ? 80 : 20 }
      : { action: wave % 2 === 0 ? 'open' : 'close' };
  return { key, device, body: { device, ...command, issuedAt, ttlMs: 120_000 } };
}
