import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  mosquittoAvailable,
  startMosquitto,
  TestClient,
  timed,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * Issue 9, "no relay between gateways", reproduced with two daemons (gateways `demo` and
 * `gw2`) on one real mosquitto in front of one simulated plant. A client that may command only
 * through gw2 sends `sluice/gw2/cmd/inlet-valve` with the MQTT 5 Response Topic
 * `sluice/demo/cmd/inlet-valve`: gw2 refuses the command (FORBIDDEN_DEVICE) and must not
 * publish its answer there, where gateway `demo` would take it as a command. And a result
 * document published to a command topic directly is not a command.
 */

const real = mosquittoAvailable();

describe.runIf(real)('two gateways on one broker', () => {
  let broker: Mosquitto;
  let plant: Plant;
  let demo: Daemon;
  let gw2: Daemon;
  let gw2Log: Record<string, unknown>[];
  const cleanups: (() => Promise<void> | void)[] = [];

  beforeAll(async () => {
    broker = await startMosquitto();
    cleanups.push(() => broker.close());
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          mb: {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            devices: {
              'inlet-valve': { profile: 'valve', base: 0, travelMs: 200 },
              'other-valve': { profile: 'valve', base: 100, travelMs: 200 },
            },
          },
        },
      },
      { ephemeralPorts: true, control: false },
    );
    cleanups.push(() => plant.stop());
    const { dir, cleanup } = tempDir('sluice-relay-');
    cleanups.push(cleanup);
    const inventory = inventoryFor(plant);
    // Both gateways know both valves; gw2's MQTT identity may command only other-valve.
    const site = (gatewayId: string, devices: string[]): string => {
      const path = join(dir, `${gatewayId}.yaml`);
      writeFileSync(
        path,
        stringify({
          gatewayId,
          stateDir: `state-${gatewayId}`,
          mqtt: { url: broker.url, identity: `${gatewayId}-mqtt` },
          identities: { [`${gatewayId}-mqtt`]: { devices } },
          plcs: inventory.plcs,
          devices: inventory.devices,
        }),
      );
      return path;
    };
    demo = await Daemon.start(loadConfig(site('demo', ['*']), { env: {} }), {
      logger: pino({ level: 'silent' }),
      monitorIntervalMs: 200,
    });
    cleanups.push(() => demo.stop());
    const recorded = recordingLogger();
    gw2Log = recorded.lines;
    gw2 = await Daemon.start(loadConfig(site('gw2', ['other-valve']), { env: {} }), {
      logger: recorded.logger,
      monitorIntervalMs: 200,
    });
    cleanups.push(() => gw2.stop());
    for (const daemon of [demo, gw2]) {
      await until(
        () => (daemon.readiness().checks.mqtt?.ok === true ? true : undefined),
        20_000,
        'gateway connected',
      );
    }
  }, 90_000);

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  it('gw2 never answers into a command topic: the relay to gateway demo does not move its valve', async () => {
    const valve = plant.device('inlet-valve');
    const before = valve.counters.writesReceived;
    const spy = await TestClient.connect(broker.url, { clientId: 'relay-spy' });
    const attacker = await TestClient.connect(broker.url, { clientId: 'relay-attacker' });
    try {
      await spy.subscribe('#');
      await attacker.publish(
        'sluice/gw2/cmd/inlet-valve',
        timed({ key: 'relay-1', action: valve.published.state === 'CLOSED' ? 'open' : 'close' }),
        { properties: { responseTopic: 'sluice/demo/cmd/inlet-valve' } },
      );
      const rejected = await spy.waitFor(
        (m) => m.topic === 'sluice/gw2/result/inlet-valve' && m.json().key === 'relay-1',
        10_000,
        "gw2's result",
      );
      expect(rejected.json()).toMatchObject({ state: 'rejected', code: 'FORBIDDEN_DEVICE' });
      // A fence: gw2 answers a later message on an allowed Response Topic. Its publications
      // leave in order on one connection, so the refused answer, had it been sent, would have
      // reached the spy (and gateway demo) before this one.
      await attacker.publish('sluice/gw2/cmd/other-valve', timed({ key: 'fence', action: 'fly' }), {
        properties: { responseTopic: 'replies/relay-fence' },
      });
      await spy.waitFor((m) => m.topic === 'replies/relay-fence', 10_000, 'the fence reply');

      // Nothing but the attacker's own messages went to a command topic.
      const onCommandTopics = spy.messages.filter((m) => /^sluice\/[^/]*\/cmd(\/|$)/.test(m.topic));
      expect(onCommandTopics.map((m) => m.topic)).toEqual([
        'sluice/gw2/cmd/inlet-valve',
        'sluice/gw2/cmd/other-valve',
      ]);
      expect(broker.deliveriesTo('sluice-demo', 'sluice/demo/cmd/inlet-valve')).toEqual([]);
      // Ground truth: gateway demo took nothing, the valve received no write.
      expect(demo.pipeline.get({ scope: 'demo-mqtt', key: 'relay-1' })).toBeUndefined();
      expect(valve.counters.writesReceived).toBe(before);
      // Counted by reason, and logged with key and device, without the payload.
      const metrics = await gw2.metrics.registry.getSingleMetricAsString(
        'sluice_mqtt_response_topics_refused_total',
      );
      expect(metrics).toMatch(
        /^sluice_mqtt_response_topics_refused_total\{reason="command_topic"\} 1$/m,
      );
      const warning = gw2Log.find(
        (l) => l.msg === 'response topic refused; answered on the result topic only',
      );
      expect(warning).toMatchObject({
        level: 40,
        key: 'relay-1',
        device: 'inlet-valve',
        reason: 'command_topic',
        responseTopic: 'sluice/demo/cmd/inlet-valve',
      });
      expect(JSON.stringify(warning)).not.toContain('"action"');
    } finally {
      await attacker.end();
      await spy.end();
    }
  });

  it('a result document published to a command topic is refused as INVALID_COMMAND and never written', async () => {
    const valve = plant.device('inlet-valve');
    const before = valve.counters.writesReceived;
    const observer = await TestClient.connect(broker.url);
    try {
      await observer.subscribe('sluice/demo/result/#');
      // gw2's stored FORBIDDEN_DEVICE result for relay-1, sent on as if relayed.
      const record = gw2.pipeline.get({ scope: 'gw2-mqtt', key: 'relay-1' });
      expect(record?.response).toBeDefined();
      await observer.publish('sluice/demo/cmd/inlet-valve', record?.response ?? '');
      const answer = await observer.waitFor(
        (m) => m.topic === 'sluice/demo/result/inlet-valve' && m.json().key === 'relay-1',
        10_000,
        "demo's answer",
      );
      expect(answer.json()).toMatchObject({ code: 'INVALID_COMMAND', device: 'inlet-valve' });
      expect(answer.json().errors).toEqual(
        expect.arrayContaining([expect.stringContaining('result document')]),
      );
      expect(demo.pipeline.get({ scope: 'demo-mqtt', key: 'relay-1' })).toBeUndefined();
      expect(valve.counters.writesReceived).toBe(before);
    } finally {
      await observer.end();
    }
  });
  it("the daemon bounds a Message Expiry Interval by its journal's retention (48 h): longer is refused, never written", async () => {
    const valve = plant.device('inlet-valve');
    const before = valve.counters.writesReceived;
    const observer = await TestClient.connect(broker.url);
    try {
      await observer.subscribe('sluice/demo/result/#');
      await observer.publish(
        'sluice/demo/cmd/inlet-valve',
        { action: 'open', key: 'expiry-past-retention' },
        { properties: { messageExpiryInterval: 172_800 + 600 } },
      );
      const answer = await observer.waitFor(
        (m) =>
          m.topic === 'sluice/demo/result/inlet-valve' && m.json().key === 'expiry-past-retention',
        10_000,
        "demo's answer",
      );
      expect(answer.json()).toMatchObject({ code: 'INVALID_COMMAND', device: 'inlet-valve' });
      expect(String(answer.json().detail)).toContain('journal.retentionHours, 172800 s');
      expect(
        demo.pipeline.get({ scope: 'demo-mqtt', key: 'expiry-past-retention' }),
      ).toBeUndefined();
      expect(valve.counters.writesReceived).toBe(before);
    } finally {
      await observer.end();
    }
  });
  it('logs whether a malformed message was answered: with no key and no Response Topic it was not', async () => {
    const client = await TestClient.connect(broker.url);
    try {
      await client.publish('sluice/gw2/cmd/other-valve', 'not json at all');
      await client.publish('sluice/gw2/cmd/other-valve', '{"action":"open","key":"mal-1"}');
      const line = (msg: string, key: unknown): Promise<Record<string, unknown>> =>
        until(() => gw2Log.find((l) => l.msg === msg && l.key === key), 10_000, msg);
      // Nothing could be sent for the first: no key for the result topic, no Response Topic.
      expect(
        await line(
          'malformed command message acknowledged, not answered (no key for the result topic, no Response Topic)',
          null,
        ),
      ).toMatchObject({ level: 40, device: 'other-valve', code: 'INVALID_COMMAND' });
      // The second (untimed: no issuedAt) has a key: answered on the result topic.
      expect(
        await line(
          'untimed command refused (no issuedAt, no message expiry): acknowledged and answered, nothing written',
          'mal-1',
        ),
      ).toMatchObject({ level: 40, device: 'other-valve' });
    } finally {
      await client.end();
    }
  });
});
