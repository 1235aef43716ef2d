import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { mosquittoAvailable, TestClient, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * The retained state a broker keeps is a device's latest, after the broker was slow to
 * acknowledge the gateway's publications. States waiting for the broker's PUBACKs (past its
 * Receive Maximum, 20 on Mosquitto) were held one per reading and counted towards the most
 * held: a valve travelling meanwhile filled it, its final state (`OPEN`) was dropped, and the
 * broker kept `OPENING …` until the valve next changed (days, for a valve left open). After an
 * outage the mirror published at the reconnection was dropped the same way, behind the results
 * held. Each dropped state was counted as a result not published. A device's state now waits
 * once, the latest in place of the one before it, never dropped and not counted.
 *
 * Real Mosquitto (frozen with SIGSTOP: the connection stays up and nothing is acknowledged;
 * stopped and started again, its persistence kept), the intake, the stack's pipeline and
 * sluice-sim (valve v1 travelling two seconds, read every 20 ms). The most held is 25 here
 * (10,000 in the daemon): past the broker's 20. Ground truth: what a subscriber with a
 * persistent session receives on v1's state topic, and the retained state a fresh subscriber
 * gets.
 */

const available = mosquittoAvailable();
const MAX_HELD = 25;
const RECEIVE_MAXIMUM = 20;

describe.skipIf(!available)('MQTT intake: the retained state after a slow broker', () => {
  const site = useMqttSite({}, { opcua: false, travelMs: 2_000 });

  /** Commands v1 to the state its mirror is not in; resolves with the state once confirmed. */
  async function moveV1(): Promise<'OPEN' | 'CLOSED'> {
    const plant = site.stack.identities.get('plant');
    if (plant === undefined) throw new Error('no identity plant');
    const now = site.stack.pipeline.devices().find((d) => d.id === 'v1')?.mirror?.state;
    const action = now === 'OPEN' ? 'close' : 'open';
    const claim = site.stack.pipeline.submit({
      key: randomUUID(),
      identity: plant,
      intake: 'https',
      request: {
        device: 'v1',
        action,
        position: null,
        issuedAt: new Date().toISOString(),
        ttlMs: 30_000,
      },
    });
    const record: CommandRecord = claim.record;
    await until(
      () => (site.stack.journal.get(record)?.state === 'confirmed' ? true : undefined),
      15_000,
      `v1's ${action} confirmed`,
    );
    return action === 'open' ? 'OPEN' : 'CLOSED';
  }

  async function notPublished(): Promise<number> {
    const metric = await site.stack.metrics.mqttResultsNotPublished.get();
    return metric.values.reduce((sum, v) => sum + v.value, 0);
  }

  /** The retained state of v1 a new subscriber gets. */
  async function retained(prefix: string): Promise<Record<string, unknown>> {
    const fresh = await TestClient.connect(site.broker.url, { clientId: `fresh-${randomUUID()}` });
    try {
      await fresh.subscribe(`${prefix}/state/v1`);
      const m = await fresh.waitFor((r) => r.packet.retain, 5_000, 'the retained state of v1');
      return m.json();
    } finally {
      await fresh.end();
    }
  }

  async function observe(prefix: string, clientId: string): Promise<TestClient> {
    const observer = await TestClient.connect(site.broker.url, {
      clientId,
      clean: false,
      properties: { sessionExpiryInterval: 600 },
    });
    site.cleanups.push(() => observer.end());
    await observer.subscribe(`${prefix}/state/v1`);
    return observer;
  }

  it('while connected to a broker that does not acknowledge, the broker ends with the final state of a travelling valve', async () => {
    const prefix = 'sluice/gwslow';
    const intake = site.intake({
      gatewayId: 'gwslow',
      config: { protocolVersion: 5 },
      reconnect: { minMs: 100, maxMs: 400 },
      maxHeldPublications: MAX_HELD,
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const observer = await observe(prefix, 'slow-observer');
    const before = observer.messages.length;
    const droppedBefore = await notPublished();

    const pid = site.broker.pid();
    if (pid === null) throw new Error('the broker is not running');
    process.kill(pid, 'SIGSTOP');
    site.cleanups.push(() => {
      // Gone by then once the other test has restarted the broker.
      if (site.broker.pid() === pid) process.kill(pid, 'SIGCONT');
    });
    const final = await moveV1();
    process.kill(pid, 'SIGCONT');

    // Published since (the retained one the subscription brought is flagged retained).
    const live = (): Record<string, unknown>[] =>
      observer.messages
        .slice(before)
        .filter((m) => !m.packet.retain)
        .map((m) => m.json());
    await until(
      () => (live().some((s) => s.state === final) ? true : undefined),
      15_000,
      `v1's ${final} state`,
    );
    const since = live();
    // The last received is the final state; those published while the broker was frozen: as
    // many as it takes unacknowledged, then the latest alone.
    expect(since.at(-1)?.state).toBe(final);
    expect(since.length).toBeLessThanOrEqual(RECEIVE_MAXIMUM + 1);
    expect(intake.connected()).toBe(true);
    expect((await retained(prefix)).state).toBe(final);
    // No state counted as a result not published.
    expect(await notPublished()).toBe(droppedBefore);
  }, 60_000);

  it('after an outage with the most results held, the broker ends with the mirror published at the reconnection', async () => {
    const prefix = 'sluice/gwoutage';
    const intake = site.intake({
      gatewayId: 'gwoutage',
      config: { protocolVersion: 5 },
      reconnect: { minMs: 100, maxMs: 400 },
      maxHeldPublications: MAX_HELD,
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const observer = await observe(prefix, 'outage-observer');
    const before = observer.messages.length;

    await site.broker.stop();
    await until(() => (intake.connected() ? undefined : true), 5_000, 'the intake disconnected');
    // While disconnected: v1 moves (no state is published), and more results settle than are
    // held.
    const final = await moveV1();
    site.forbiddenResults(MAX_HELD + 10);
    await site.stack.pipeline.durable();
    await site.broker.restart();

    await observer.waitFor(
      (m) => observer.messages.indexOf(m) >= before && m.json().state === final,
      15_000,
      `v1's ${final} state`,
    );
    expect(observer.messages.at(-1)?.json().state).toBe(final);
    expect((await retained(prefix)).state).toBe(final);
  }, 60_000);
});
