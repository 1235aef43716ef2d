import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import { MqttIntake } from '../../src/intake/mqtt.js';
import { intakeConfig } from '../helpers/mosquitto.js';
import { mosquittoAvailable, TestClient, until, useMqttSite } from '../helpers/mqtt-site.js';
import { TcpLink } from '../helpers/tcp-link.js';

/**
 * A command timed by its MQTT 5 Message Expiry Interval alone (no issuedAt) that the gateway
 * could not take at its first delivery (the journal locked: withheld, the connection dropped) is
 * redelivered by the broker with what is left of its interval. Mosquitto (2.0.11) sends one whose
 * interval runs out within the current second without the property, and drops it after that: the
 * gateway got a command with neither issuedAt nor message expiry, and refused it saying "no
 * issuedAt, no message expiry", which its issuer had sent. The real intake, Mosquitto, the
 * simulated plant, the journal locked by another connection to it; the gateway reaches the broker
 * through a TCP link the test cuts, so that the redelivery falls in the interval's last second.
 * Ground truth: the broker's log (a redelivery, DUP), the journal (nothing claimed) and the
 * simulator's write count.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: a command redelivered after its expiry', () => {
  const site = useMqttSite({}, { opcua: false });
  let locker: Database.Database | null = null;
  const unlockJournal = (): void => {
    locker?.exec('ROLLBACK');
    locker?.close();
    locker = null;
  };
  afterEach(unlockJournal);

  /**
   * Publishes a command with a 2 s interval at the start of a wall-clock second S (Mosquitto
   * counts whole seconds: it expires at S + 2), withholds it while the journal is locked, and
   * has the broker redeliver it in second S + 2, the interval's last. `between` runs while the
   * link is down (the gateway away). Returns the gateway's answer.
   */
  const redeliveredAtExpiry = async (
    gateway: string,
    between: (link: TcpLink, intake: MqttIntake) => Promise<MqttIntake>,
  ): Promise<{ key: string; answer: Record<string, unknown> }> => {
    const prefix = `sluice/${gateway}`;
    const clientId = `sluice-${gateway}`;
    const topic = `${prefix}/cmd/v1`;
    const link = await TcpLink.open({ host: '127.0.0.1', port: site.broker.port });
    site.cleanups.push(() => link.close());
    const intake = site.intake({
      gatewayId: gateway,
      config: { protocolVersion: 5, url: `mqtt://${link.address}` },
      reconnect: { minMs: 100, maxMs: 400 },
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const observer = await TestClient.connect(site.broker.url);
    site.cleanups.push(() => observer.end());
    await observer.subscribe(`${prefix}/result/#`);
    const writes = site.stack.plant.device('v1').counters.writesReceived;

    locker = new Database(site.stack.journalPath);
    locker.exec('BEGIN IMMEDIATE');
    await new Promise((r) => setTimeout(r, 1_000 - (Date.now() % 1_000) + 20));
    const second = Math.floor(Date.now() / 1_000);
    const key = randomUUID();
    const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
    await observer.publish(topic, JSON.stringify({ key, action, ttlMs: 30_000 }), {
      qos: 1,
      properties: { messageExpiryInterval: 2 },
    });
    // Delivered with its interval, not acknowledged (the claim found the journal locked).
    await until(
      () => (site.broker.deliveriesTo(clientId, topic).length > 0 ? true : undefined),
      5_000,
      'the first delivery',
    );
    await until(
      () => (site.broker.connectionsOf(clientId) >= 2 || !intake.connected() ? true : undefined),
      5_000,
      'the connection dropped',
    );
    link.down();
    const next = await between(link, intake);
    if (next !== intake) site.cleanups.push(() => next.stop());
    // The interval's last second: the journal free again, the link up, the redelivery.
    await new Promise((r) => setTimeout(r, (second + 2) * 1_000 - Date.now() + 50));
    unlockJournal();
    link.up();
    const answer = await observer.waitFor((m) => m.json().key === key, 10_000, 'the answer');
    expect(site.broker.deliveriesTo(clientId, topic).at(-1)?.dup).toBe(true);
    expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
    expect(site.stack.plant.device('v1').counters.writesReceived).toBe(writes);
    return { key, answer: answer.json() };
  };

  it('says that the interval ran out, not that there was none', async () => {
    // The same intake: it saw the command with its interval.
    const { answer } = await redeliveredAtExpiry('gwexp', (_link, intake) =>
      Promise.resolve(intake),
    );
    expect(answer).toMatchObject({ code: 'INVALID_COMMAND' });
    expect(String(answer.detail)).toMatch(
      /^Message Expiry Interval: ran out before the command could be taken\. It was delivered with 2 s left \d+ s ago/,
    );
    expect(String(answer.detail)).not.toContain('required over MQTT');
    const { values } = await site.stack.metrics.mqttMessages.get();
    expect(values.find((v) => v.labels.outcome === 'expired')?.value).toBe(1);
  }, 30_000);

  it('after a restart (the first delivery forgotten): says that it may have run out', async () => {
    const { answer } = await redeliveredAtExpiry('gwexprs', async (link, first) => {
      // The gateway restarts while away: a new intake, which never saw the command.
      await first.stop();
      const intake = new MqttIntake({
        config: intakeConfig(`mqtt://${link.address}`, { protocolVersion: 5 }),
        gatewayId: 'gwexprs',
        pipeline: site.stack.pipeline,
        identities: site.stack.identities,
        metrics: site.stack.metrics,
        logger: silentLogger,
        reconnect: { minMs: 100, maxMs: 400 },
        retentionHours: 48,
      });
      intake.start();
      return intake;
    });
    expect(answer).toMatchObject({ code: 'INVALID_COMMAND' });
    expect(String(answer.detail)).toContain(
      'a redelivery (DUP) without a Message Expiry Interval: if it was published with one, the interval ran out',
    );
  }, 30_000);
});
