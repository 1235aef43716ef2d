import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { CommandPipeline } from '../../src/core/pipeline.js';
import type { MqttConfig, MqttIntake } from '../../src/intake/mqtt.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  mosquittoAvailable,
  TestClient,
  timed,
  until,
  useMqttSite,
  type Received,
} from '../helpers/mqtt-site.js';
import { FAST_TIMING } from '../helpers/stack.js';

/**
 * The MQTT intake across a change of the site's configuration, against a real mosquitto with
 * persistence: a device removed from the site (its retained state cleared, no other), and a
 * topic root changed under a persistent session.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: the site changed between two runs', () => {
  // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
  const site = useMqttSite({}, { opcua: false });
  const { cleanups } = site;

  const intakeOn = (
    pipeline: CommandPipeline,
    gatewayId: string,
    config: Partial<MqttConfig> = {},
    topicRootsFile?: string,
  ): MqttIntake =>
    site.intake({
      gatewayId,
      pipeline,
      config,
      reconnect: { minMs: 100, maxMs: 800 },
      topicRootsFile,
    });

  const started = (intake: MqttIntake): Promise<MqttIntake> => site.connect(intake);

  /** The site again, without `removed`: a pipeline of the other devices, on a journal of its own. */
  const siteWithout = (removed: string): CommandPipeline => {
    const { dir, cleanup } = tempDir('sluice-site-');
    const journal = SqliteJournal.open({ path: join(dir, 'journal.db'), groupCommit: true });
    const pipeline = new CommandPipeline({
      journal,
      devices: site.stack.drivers.bindings
        .filter((b) => b.id !== removed)
        .map((b) => ({ ...b, profile: { ...b.profile, timing: FAST_TIMING } })),
      clock: systemClock,
      logger: silentLogger,
      freshness: { maxIssuerSkewMs: 5_000 },
    });
    cleanups.push(async () => {
      await pipeline.stop(0);
      journal.close();
      cleanup();
    });
    return pipeline;
  };

  /**
   * The retained messages a new subscriber to `filters` is given. A fence makes the wait
   * complete: the broker queues a subscription's retained messages as it takes the SUBSCRIBE,
   * so they reach the subscriber before a message it published afterwards.
   */
  const retainedOf = async (filters: readonly string[], version: 4 | 5): Promise<Received[]> => {
    const reader = await TestClient.connect(site.broker.url, { protocolVersion: version });
    try {
      for (const filter of filters) await reader.subscribe(filter);
      const fence = `test/fence/${randomUUID()}`;
      await reader.subscribe(fence);
      await reader.publish(fence, 'fence');
      await reader.waitFor((m) => m.topic === fence, 10_000, 'fence');
      return reader.messages.filter((m) => m.packet.retain && m.topic !== fence);
    } finally {
      await reader.end();
    }
  };

  it('answers the commands on a topic root the site no longer uses, never runs them, and drops that subscription from the session', async () => {
    const gateway = 'gw-root';
    const clientId = `sluice-${gateway}`;
    const issuer = await TestClient.connect(site.broker.url);
    cleanups.push(() => issuer.end());
    await issuer.subscribe(`old/${gateway}/result/#`);
    await issuer.subscribe(`plant/new/${gateway}/result/#`);
    await issuer.subscribe('test/replies/#');
    // A run under the topic root `old`, then the site moves to `plant/new`; the session, which
    // is persistent, keeps the subscription `old/gw-root/cmd/+`.
    await (await started(intakeOn(site.stack.pipeline, gateway, { topicRoot: 'old' }))).stop();
    // Commands published under the old root while the gateway is away wait in its session:
    // more than the broker sends at once (mosquitto: 20 in flight), one with a Response Topic.
    const oldTopic = `old/${gateway}/cmd/v2`;
    const writes = site.stack.plant.device('v2').counters.writesReceived;
    const action = site.stack.plant.device('v2').published.state === 'CLOSED' ? 'open' : 'close';
    const queued = Array.from({ length: 30 }, () => randomUUID());
    for (const [i, key] of queued.entries()) {
      await issuer.publish(
        oldTopic,
        timed({ action, key }),
        i === 0
          ? {
              properties: { responseTopic: 'test/replies/old', correlationData: Buffer.from('c1') },
            }
          : {},
      );
    }
    const intake = await started(
      intakeOn(site.stack.pipeline, gateway, { topicRoot: 'plant/new' }),
    );
    cleanups.push(() => intake.stop());

    // Each is answered under the old root, where its requester listens.
    for (const key of queued) {
      const answer = await issuer.waitFor(
        (m) => m.topic === `old/${gateway}/result/v2` && m.json().key === key,
        10_000,
        'answer under the old root',
      );
      expect(answer.json()).toMatchObject({ key, device: 'v2', code: 'INVALID_COMMAND' });
      expect(answer.json().detail).toContain(`plant/new/${gateway}/cmd/v2`);
    }
    const reply = await issuer.waitFor((m) => m.topic === 'test/replies/old', 10_000, 'reply');
    expect(reply.json()).toMatchObject({ key: queued[0], code: 'INVALID_COMMAND' });
    expect(reply.packet.properties?.correlationData?.toString()).toBe('c1');
    // Ground truth: none journaled, none written.
    expect(queued.flatMap((key) => site.stack.journal.findByKey(key))).toEqual([]);
    expect(site.stack.plant.device('v2').counters.writesReceived).toBe(writes);
    await until(() => (site.broker.pubacksFrom(clientId) >= queued.length ? true : undefined));

    // The broker no longer delivers the old root's commands to the gateway. A command on the
    // current root, published after one on the old root, fences the wait: the broker sends a
    // client its messages in the order it took them.
    await issuer.publish(oldTopic, timed({ action, key: randomUUID() }));
    const fence = randomUUID();
    await issuer.publish(`plant/new/${gateway}/cmd/v2`, timed({ action, key: fence }));
    const result = await issuer.waitFor(
      (m) => m.topic === `plant/new/${gateway}/result/v2` && m.json().key === fence,
      10_000,
      'result under the new root',
    );
    expect(result.json()).toMatchObject({ state: 'confirmed' });
    expect(site.broker.deliveriesTo(clientId, oldTopic)).toHaveLength(queued.length);
    expect(site.stack.plant.device('v2').counters.writesReceived).toBe(writes + 1);
    await intake.stop();
  });

  for (const version of [5, 4] as const) {
    it(`MQTT ${version === 5 ? '5' : '3.1.1'}: clears the retained state and status left under a topic root the site no longer uses, and nothing else`, async () => {
      const gateway = `gw-moved-${version}`;
      const oldPrefix = `old/${gateway}`;
      const { dir, cleanup } = tempDir('sluice-roots-');
      cleanups.push(cleanup);
      const rootsFile = join(dir, 'mqtt-topic-roots.json');
      const watcher = await TestClient.connect(site.broker.url);
      cleanups.push(() => watcher.end());
      await watcher.subscribe(`${oldPrefix}/#`);
      // Another gateway's topics under the old root, and a topic below the gateway's state.
      await watcher.publish(`old/gw-other-${version}/state/v1`, { device: 'v1' }, { retain: true });
      await watcher.publish(`old/gw-other-${version}/status`, 'online', { retain: true });
      await watcher.publish(`${oldPrefix}/state/v1/note`, { note: 'not ours' }, { retain: true });

      // A run under the root `old` drives v1: its state and status are retained there.
      const first = await started(
        intakeOn(
          site.stack.pipeline,
          gateway,
          { topicRoot: 'old', protocolVersion: version },
          rootsFile,
        ),
      );
      const key = randomUUID();
      const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
      await watcher.publish(`${oldPrefix}/cmd/v1`, timed({ action, key }));
      await watcher.waitFor(
        (m) => m.topic === `${oldPrefix}/result/v1` && m.json().key === key,
        10_000,
        'result under the old root',
      );
      await first.stop();
      const before = await retainedOf([`${oldPrefix}/#`], version);
      // The run published the mirror of every device it had one for, v1 among them.
      const beforeTopics = before.map((m) => m.topic);
      expect(beforeTopics).toEqual(
        expect.arrayContaining([
          `${oldPrefix}/state/v1`,
          `${oldPrefix}/state/v1/note`,
          `${oldPrefix}/status`,
        ]),
      );
      const ours = beforeTopics.filter((t) => t !== `${oldPrefix}/state/v1/note`);

      // The site moves to `plant/new`.
      const seen = watcher.messages.length;
      const second = await started(
        intakeOn(
          site.stack.pipeline,
          gateway,
          { topicRoot: 'plant/new', protocolVersion: version },
          rootsFile,
        ),
      );
      cleanups.push(() => second.stop());
      // The old root is struck from the record once the broker took every clearing.
      await until(
        () => (readFileSync(rootsFile, 'utf8').includes('"old"') ? undefined : true),
        10_000,
        'old root struck from the record',
      );
      expect(JSON.parse(readFileSync(rootsFile, 'utf8'))).toEqual({
        gatewayId: gateway,
        topicRoots: ['plant/new'],
      });
      // Each of the gateway's retained topics there was cleared: an empty message to subscribers.
      const clearings = watcher.messages
        .slice(seen)
        .filter((m) => m.packet.payload.length === 0)
        .map((m) => m.topic);
      expect(clearings.sort()).toEqual([...ours].sort());
      // A subscriber to the old root now gets only what was never the gateway's own.
      const after = await retainedOf([`${oldPrefix}/#`, `old/gw-other-${version}/#`], version);
      expect(after.map((m) => m.topic).sort()).toEqual(
        [
          `${oldPrefix}/state/v1/note`,
          `old/gw-other-${version}/state/v1`,
          `old/gw-other-${version}/status`,
        ].sort(),
      );
      const current = await retainedOf([`plant/new/${gateway}/status`], version);
      expect(current.map((m) => m.text)).toEqual(['online']);
      await second.stop();
    });
  }

  it('drops the command subscription of a former gateway id kept under a fixed client id, and never runs its commands', async () => {
    const clientId = 'sluice-fixed-id';
    const issuer = await TestClient.connect(site.broker.url);
    cleanups.push(() => issuer.end());
    await issuer.subscribe('sluice/gw-new/result/#');
    // The gateway was `gw-old`; renamed `gw-new`, it keeps its client id, and with it the
    // session and the subscription `sluice/gw-old/cmd/+`.
    await (await started(intakeOn(site.stack.pipeline, 'gw-old', { clientId }))).stop();
    const intake = await started(intakeOn(site.stack.pipeline, 'gw-new', { clientId }));
    cleanups.push(() => intake.stop());

    const oldTopic = 'sluice/gw-old/cmd/v1';
    const v1 = site.stack.plant.device('v1');
    const writes = v1.counters.writesReceived;
    const action = (): 'open' | 'close' => (v1.published.state === 'CLOSED' ? 'open' : 'close');
    const pubacks = site.broker.pubacksFrom(clientId);
    const first = randomUUID();
    await issuer.publish(oldTopic, timed({ action: action(), key: first }));
    // Handled: acknowledged (the UNSUBSCRIBE left before the PUBACK, on the same connection).
    await until(() => (site.broker.pubacksFrom(clientId) > pubacks ? true : undefined));
    expect(site.stack.journal.findByKey(first)).toEqual([]);

    // A command on the old gateway's topic, then one on the new: only the new one is delivered.
    await issuer.publish(oldTopic, timed({ action: action(), key: randomUUID() }));
    const fence = randomUUID();
    await issuer.publish('sluice/gw-new/cmd/v1', timed({ action: action(), key: fence }));
    const result = await issuer.waitFor(
      (m) => m.topic === 'sluice/gw-new/result/v1' && m.json().key === fence,
      10_000,
      'result of the new gateway id',
    );
    expect(result.json()).toMatchObject({ state: 'confirmed' });
    expect(site.broker.deliveriesTo(clientId, oldTopic)).toHaveLength(1);
    expect(v1.counters.writesReceived).toBe(writes + 1);
    await intake.stop();
  });

  for (const version of [5, 4] as const) {
    it(`MQTT ${version === 5 ? '5' : '3.1.1'}: clears at connect the retained state of a device removed from the site, and no other`, async () => {
      const gateway = `gw-removed-${version}`;
      const prefix = `sluice/${gateway}`;
      const watcher = await TestClient.connect(site.broker.url);
      cleanups.push(() => watcher.end());
      await watcher.subscribe(`${prefix}/state/#`);
      // Another gateway's state for a device of the same name, and a topic below ours.
      const other = await TestClient.connect(site.broker.url);
      cleanups.push(() => other.end());
      await other.publish(
        `sluice/gw-other-${version}/state/v2`,
        { device: 'v2' },
        { retain: true },
      );
      await other.publish(
        `${prefix}/state/v2/note`,
        { note: 'not a state topic' },
        { retain: true },
      );

      // The first run drives v1 and v2: both get a retained state.
      const first = await started(
        intakeOn(site.stack.pipeline, gateway, { protocolVersion: version }),
      );
      for (const device of ['v1', 'v2']) {
        const action =
          site.stack.plant.device(device).published.state === 'CLOSED' ? 'open' : 'close';
        const key = randomUUID();
        await watcher.subscribe(`${prefix}/result/${device}`);
        await watcher.publish(`${prefix}/cmd/${device}`, timed({ action, key }));
        await watcher.waitFor(
          (m) => m.topic === `${prefix}/result/${device}` && m.json().key === key,
          10_000,
          `result on ${device}`,
        );
      }
      await first.stop();
      const before = await retainedOf([`${prefix}/state/#`], version);
      expect(before.map((m) => m.topic).sort()).toEqual(
        [`${prefix}/state/v1`, `${prefix}/state/v2`, `${prefix}/state/v2/note`].sort(),
      );

      // The second run's site has no v2.
      const cleared = watcher.messages.length;
      const second = await started(
        intakeOn(siteWithout('v2'), gateway, { protocolVersion: version }),
      );
      cleanups.push(() => second.stop());
      // The clearing reaches a subscriber as an empty message on v2's state topic.
      await watcher.waitFor(
        (m) =>
          watcher.messages.indexOf(m) >= cleared &&
          m.topic === `${prefix}/state/v2` &&
          m.packet.payload.length === 0,
        10_000,
        'clearing of v2',
      );
      const after = await retainedOf(
        [`${prefix}/state/#`, `sluice/gw-other-${version}/state/#`],
        version,
      );
      expect(after.map((m) => m.topic).sort()).toEqual(
        [
          `${prefix}/state/v1`,
          `${prefix}/state/v2/note`,
          `sluice/gw-other-${version}/state/v2`,
        ].sort(),
      );
      // v1's state is the one the first run left, untouched.
      const v1 = (m: Received): boolean => m.topic === `${prefix}/state/v1`;
      expect(after.find(v1)?.text).toBe(before.find(v1)?.text);
      await second.stop();
    });
  }
});
