import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, TestClient, timed, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A subscription another client left in the gateway's persistent session that overlaps the
 * command filter: a `mosquitto_sub -c -i <gateway's id> -t 'sluice/<gw>/cmd/#'` (or
 * `sluice/+/cmd/+`), run once to watch the commands. It delivers only the gateway's own command
 * topics, so the removal of foreign subscriptions never saw it. Over MQTT 5 Mosquitto 2.0 sends a
 * message once per matching subscription of a session (MQTT 5 §3.3.4 allows it; its
 * `allow_duplicate_messages` is deprecated and without effect): every command reached the gateway
 * once per filter, each copy after the first claimed, journaled and counted again as a duplicate.
 * Over MQTT 3.1.1 the same Mosquitto sends one copy. The real intake, Mosquitto, the simulated
 * plant; ground truth: the broker's log (what it sent the gateway), the journal's history and the
 * simulator's write count.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: a left subscription beside the command filter', () => {
  const site = useMqttSite({}, { opcua: false });

  it('MQTT 5: is unsubscribed at the first copy it delivers; later commands come once', async () => {
    const gateway = 'gwoverlap';
    const prefix = `sluice/${gateway}`;
    const clientId = `sluice-${gateway}`;
    const topic = `${prefix}/cmd/v1`;
    const { logger, lines } = recordingLogger();
    const newIntake = (): ReturnType<typeof site.intake> =>
      site.intake({
        gatewayId: gateway,
        config: { protocolVersion: 5 },
        logger,
        reconnect: { minMs: 100, maxMs: 400 },
      });
    let intake = newIntake();
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    await intake.stop();

    // The tool: the gateway's client id, a persistent session, two filters that overlap the
    // gateway's `cmd/+`; it takes the session over, adds them, and ends after a second.
    await site.leaveSubscriptions(clientId, [`${prefix}/cmd/#`, 'sluice/+/cmd/+'], {
      expirySeconds: 600,
    });
    expect(site.broker.log()).toContain(`${clientId} 1 sluice/+/cmd/+`);

    const plant = await TestClient.connect(site.broker.url, { protocolVersion: 4 });
    site.cleanups.push(() => plant.end());
    const observer = await TestClient.connect(site.broker.url);
    site.cleanups.push(() => observer.end());
    await observer.subscribe(`${prefix}/result/#`);
    const moveOf = (): 'open' | 'close' =>
      site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
    const writes = (): number => site.stack.plant.device('v1').counters.writesReceived;
    /** Runs a command; returns how many copies the broker sent the gateway, and its history. */
    const run = async (): Promise<{ copies: number; duplicates: number }> => {
      const key = randomUUID();
      const before = writes();
      const sent = site.broker.deliveriesTo(clientId, topic).length;
      await plant.publish(topic, timed({ action: moveOf(), key, ttlMs: 60_000 }));
      const result = await observer.waitFor((m) => m.json().key === key, 10_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
      expect(writes()).toBe(before + 1);
      // Results are published once, whatever the copies.
      expect(observer.messages.filter((m) => m.json().key === key)).toHaveLength(1);
      const history = site.stack.pipeline.history({ scope: 'plant', key });
      return {
        // The broker sends the copies of a message together, before the gateway has read the
        // first: all of them are in its log by the time the result comes back.
        copies: site.broker.deliveriesTo(clientId, topic).length - sent,
        duplicates: history.filter((e) => e.detail.startsWith('duplicate')).length,
      };
    };

    intake = newIntake();
    await site.connect(intake);
    // The first command comes three times (the command filter and both left ones): the copies
    // show the left filters, which are unsubscribed. It runs once; the copies the left filters
    // delivered are never claimed (mqtt-stray-copies.ts): no duplicate in its history.
    expect(await run()).toEqual({ copies: 3, duplicates: 0 });
    // The UNSUBSCRIBE went out on the gateway's connection as the copies came, before the
    // command's result: the broker had read it by the time the observer had the result.
    // From then on one copy each, and no duplicate in the command's history.
    for (let i = 0; i < 2; i++) {
      expect(await run()).toEqual({ copies: 1, duplicates: 0 });
    }
    // The removal holds across a reconnection (it is the session's).
    await intake.stop();
    intake = newIntake();
    await site.connect(intake);
    expect(await run()).toEqual({ copies: 1, duplicates: 0 });
    await intake.stop();
    // Said once, with what the MQTT 5 UNSUBACK said existed: the two left filters.
    const said = lines.filter((l) => String(l.msg).includes('beside the command filter'));
    expect(said.map((l) => [...(l.removed as string[])].sort())).toEqual([
      ['sluice/+/cmd/+', `${prefix}/cmd/#`],
    ]);
  }, 60_000);
});
