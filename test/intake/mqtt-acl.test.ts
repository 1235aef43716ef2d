import { randomUUID } from 'node:crypto';
import { rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { connectAsync } from 'mqtt';
import { MqttPublisher } from '../../src/intake/mqtt-publisher.js';
import { GatewayTopics } from '../../src/intake/mqtt-topics.js';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A plant's broker whose ACL does not let the gateway publish its results or state (Mosquitto
 * `acl_file` with read but no write on those topics). Over MQTT 5 the broker answers each such
 * PUBLISH with PUBACK reason 0x87 Not authorized, and drops it. The command must still have
 * exactly one effect (the simulator's write log) and its outcome stay in the journal; the
 * publication is not sent again; the operator is told, with the key, device, topic and reason,
 * once per topic rather than at every state change of a travelling valve; each is counted.
 * The broker's log ("Denied PUBLISH") is the ground truth for what it refused.
 */

const available = mosquittoAvailable();
const GATEWAY = 'gwacl';
const PREFIX = `sluice/${GATEWAY}`;
const CLIENT_ID = 'sluice-gwacl';
const ACL = [
  // Anonymous clients (the test's issuer and observer) may do anything.
  'topic readwrite #',
  // The gateway: its commands and status, but only read on its result and state topics.
  'user gateway',
  `topic read ${PREFIX}/cmd/#`,
  `topic write ${PREFIX}/status`,
  `topic read ${PREFIX}/result/#`,
  `topic read ${PREFIX}/state/#`,
  // A gateway whose user may not write its status: its `online` at connect is refused.
  'user gateway-nostatus',
  `topic read ${PREFIX}/cmd/#`,
  `topic write ${PREFIX}/result/#`,
  `topic write ${PREFIX}/state/#`,
  '',
].join('\n');

describe.skipIf(!available)(
  'MQTT intake: a broker ACL refuses the gateway its result topic',
  () => {
    // The broker reads its ACL at start: written before the site's beforeAll, registered next.
    const aclFile = join(tmpdir(), `sluice-acl-${randomUUID()}`);
    beforeAll(() => {
      writeFileSync(aclFile, ACL);
    });
    afterAll(() => {
      rmSync(aclFile, { force: true });
    });
    const site = useMqttSite({ settings: [`acl_file ${aclFile}`] }, { opcua: false });

    /** Lines of the broker's log: the PUBLISH packets of the gateway it denied, on `topic`. */
    const denied = (topic: string): number =>
      site.broker
        .log()
        .split('\n')
        .filter((l) => l.includes(`Denied PUBLISH from ${CLIENT_ID} (`) && l.includes(`'${topic}'`))
        .length;
    const refusedCount = async (kind: string): Promise<number> => {
      const { values } = await site.stack.metrics.mqttPublicationsRefused.get();
      return values
        .filter((v) => v.labels.kind === kind && v.labels.reason === '0x87')
        .reduce((sum, v) => sum + v.value, 0);
    };

    it('MQTT 5: runs the command once, keeps its outcome in the journal, does not send it again, and says so once per topic with key, device and reason', async () => {
      const { logger, lines } = recordingLogger();
      const intake = site.intake({
        config: { protocolVersion: 5, username: 'gateway', clientId: CLIENT_ID },
        gatewayId: GATEWAY,
        logger,
        reconnect: { minMs: 100, maxMs: 500 },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      const client = await TestClient.connect(site.broker.url);
      site.cleanups.push(() => client.end());
      await client.subscribe(`${PREFIX}/result/#`);

      const key = randomUUID();
      const device = site.stack.plant.device('v1');
      const before = device.counters.writesReceived;
      const command = timed({
        key,
        action: device.published.state === 'CLOSED' ? 'open' : 'close',
      });
      await client.publish(`${PREFIX}/cmd/v1`, command);
      const resultTopic = `${PREFIX}/result/v1`;
      const refusals = (): Record<string, unknown>[] =>
        lines.filter((l) => String(l.msg).startsWith('not published: the MQTT broker refused'));
      const resultRefusals = (): Record<string, unknown>[] =>
        refusals().filter((l) => l.topic === resultTopic);
      await until(() => (resultRefusals().length === 1 ? true : undefined), 10_000, 'the refusal');

      // Ground truth: one write, the outcome in the journal, and the broker denied the result.
      expect(device.counters.writesReceived).toBe(before + 1);
      const records = site.stack.journal.findByKey(key);
      expect(records.map((r) => r.state)).toEqual(['confirmed']);
      expect(denied(resultTopic)).toBe(1);
      expect(resultRefusals()[0]).toMatchObject({
        level: 40,
        key,
        device: 'v1',
        topic: resultTopic,
        kind: 'result',
        reasonCode: '0x87',
        reason: 'Not authorized',
        hint: expect.stringContaining('ACL') as unknown,
      });
      expect(await refusedCount('result')).toBe(1);

      // The valve's state changed several times on its way, each state publication denied: one
      // warning, the rest at debug, every one counted.
      const stateTopic = `${PREFIX}/state/v1`;
      const states = denied(stateTopic);
      expect(states).toBeGreaterThan(1);
      await until(
        async () => ((await refusedCount('state')) >= states ? true : undefined),
        5_000,
        'every state refusal counted',
      );
      const stateRefusals = refusals().filter((l) => l.topic === stateTopic);
      expect(stateRefusals.filter((l) => l.level === 40)).toHaveLength(1);
      expect(stateRefusals.length).toBeGreaterThanOrEqual(states);

      // The requester retries: the replay is refused too (at debug: the topic's refusal was
      // said), nothing is written, and neither publication was sent again by the gateway.
      await client.publish(`${PREFIX}/cmd/v1`, command);
      await until(() => (resultRefusals().length === 2 ? true : undefined), 10_000, 'the replay');
      expect(resultRefusals()[1]).toMatchObject({ level: 20, key, reasonCode: '0x87' });
      expect(denied(resultTopic)).toBe(2);
      expect(site.broker.log()).not.toMatch(
        new RegExp(`Received PUBLISH from ${CLIENT_ID} \\(d1, [^)]*'${resultTopic}'`),
      );
      expect(device.counters.writesReceived).toBe(before + 1);
      expect(site.stack.journal.findByKey(key)).toHaveLength(1);
      expect(client.on(resultTopic)).toEqual([]);
      expect(await refusedCount('result')).toBe(2);
    });

    it("MQTT 5: the refusal of the gateway's `online` says the topic, reason code and reason, once per connection", async () => {
      const { logger, lines } = recordingLogger();
      const clientId = `${CLIENT_ID}-nostatus`;
      const intake = site.intake({
        config: { protocolVersion: 5, username: 'gateway-nostatus', clientId },
        gatewayId: GATEWAY,
        logger,
        reconnect: { minMs: 100, maxMs: 500 },
      });
      site.cleanups.push(() => intake.stop());
      const statusTopic = `${PREFIX}/status`;
      const deniedStatus = (): number =>
        site.broker
          .log()
          .split('\n')
          .filter(
            (l) =>
              l.includes(`Denied PUBLISH from ${clientId} (`) && l.includes(`'${statusTopic}'`),
          ).length;
      const refusals = (): Record<string, unknown>[] =>
        lines.filter(
          (l) =>
            String(l.msg).startsWith('not published: the MQTT broker refused') &&
            l.topic === statusTopic,
        );
      const before = await refusedCount('status');
      await site.connect(intake);
      await until(() => (refusals().length === 1 ? true : undefined), 10_000, 'the refusal');
      // Ground truth: the broker denied it.
      expect(deniedStatus()).toBe(1);
      expect(refusals()[0]).toMatchObject({
        level: 40,
        topic: statusTopic,
        kind: 'status',
        reasonCode: '0x87',
        reason: 'Not authorized',
        hint: expect.stringContaining('ACL') as unknown,
      });
      expect(String(refusals()[0]?.msg)).toContain('published again at the next connection');
      expect(lines.filter((l) => l.msg === '`online` not published')).toEqual([]);
      expect(await refusedCount('status')).toBe(before + 1);

      // A new connection (the broker restarted) publishes `online` again: refused again, and
      // said again at warn (one line per connection, not one per run).
      // The broker's log survives its restart (appended to).
      expect(site.broker.connectionsOf(clientId)).toBe(1);
      await site.broker.restart();
      await until(() => (deniedStatus() === 2 ? true : undefined), 10_000, 'denied again');
      await until(() => (refusals().length === 2 ? true : undefined), 10_000, 'said again');
      expect(site.broker.connectionsOf(clientId)).toBe(2);
      expect(refusals()[1]).toMatchObject({ level: 40, kind: 'status', reasonCode: '0x87' });
      expect(await refusedCount('status')).toBe(before + 2);
    });

    it('says the refusal of a new topic even after as many other topics were refused as it remembers', async () => {
      // A requester with a new Response Topic per command fills the topics remembered as
      // refused; a device's result topic refused after them must still be said (warn).
      const { logger, lines } = recordingLogger();
      const client = await connectAsync(site.broker.url, {
        protocolVersion: 5,
        username: 'gateway',
        clientId: `${CLIENT_ID}-publisher`,
        reconnectPeriod: 0,
      });
      site.cleanups.push(() => client.endAsync(true));
      const publisher = new MqttPublisher({
        link: { client, protocolLevel: 5 },
        topics: new GatewayTopics(GATEWAY),
        responseTopics: [],
        metrics: site.stack.metrics,
        logger,
        maxRefusedTopics: 2,
      });
      for (const device of ['a', 'b', 'c', 'a']) {
        publisher.error({ key: `k-${device}`, device }, undefined, Date.now(), {
          code: 'UNKNOWN_DEVICE',
          detail: 'no such device',
        });
        await publisher.flush();
      }
      const said = lines.filter((l) =>
        String(l.msg).startsWith('not published: the MQTT broker refused'),
      );
      expect(said.map((l) => [l.device, l.level])).toEqual([
        ['a', 40],
        ['b', 40],
        ['c', 40],
        ['a', 40],
      ]);
    });
  },
);
