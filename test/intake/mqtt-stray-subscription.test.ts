import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { filtersMatching, topicMatches } from '../../src/intake/mqtt-topics.js';
import { mosquittoAvailable, TestClient, timed, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A subscription another client left in the gateway's persistent session: a `mosquitto_sub -c
 * -i <gateway's id> -t '#'`, run once to see what the gateway gets, takes the session over and
 * adds its filter to it, and the broker keeps that filter for the gateway when the tool has gone.
 * The gateway was then sent everything on the broker, and while it was away (a restart) the
 * broker queued that traffic for it until its queue limit, and dropped the commands published
 * then: never journaled, never run, never answered. The gateway must remove the filter it does
 * not own once a message shows it. The real intake, Mosquitto, the simulated plant; ground
 * truth: the broker's log (what it delivered to the gateway, and what it dropped), the journal
 * and the simulator's write count. The broker's queue limit is set to 20 (mosquitto
 * `max_queued_messages`, 1000 by default) so that a few messages fill it.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)(
  'MQTT intake: a subscription another client left in its session',
  () => {
    const site = useMqttSite({ settings: ['max_queued_messages 20'] }, { opcua: false });

    for (const version of [5, 4] as const) {
      it(`MQTT ${version === 5 ? '5' : '3.1.1'}: is unsubscribed at the first message it delivers, and the commands published while the gateway is away run`, async () => {
        const gateway = `gwstray${version}`;
        const prefix = `sluice/${gateway}`;
        const clientId = `sluice-${gateway}`;
        const telemetry = `plant/${gateway}/flow`;
        const { logger, lines } = recordingLogger();
        const newIntake = (): ReturnType<typeof site.intake> =>
          site.intake({
            gatewayId: gateway,
            config: { protocolVersion: version },
            logger,
            reconnect: { minMs: 100, maxMs: 400 },
          });
        let intake = newIntake();
        site.cleanups.push(() => intake.stop());
        await site.connect(intake);
        await intake.stop();

        // The tool: the gateway's client id, a persistent session, everything at QoS 1; it takes
        // the session over, adds `#` to it, and ends after a second.
        await site.leaveSubscriptions(clientId, ['#'], { version });
        expect(
          site.broker.log().includes(`${clientId} 1 #`),
          'the broker took the tool subscription on the session',
        ).toBe(true);

        const plant = await TestClient.connect(site.broker.url, { protocolVersion: 4 });
        site.cleanups.push(() => plant.end());
        const observer = await TestClient.connect(site.broker.url);
        site.cleanups.push(() => observer.end());
        await observer.subscribe(`${prefix}/result/#`);
        const moveOf = (): 'open' | 'close' =>
          site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
        const writes = (): number => site.stack.plant.device('v1').counters.writesReceived;
        const runs = async (key: string): Promise<void> => {
          const before = writes();
          await plant.publish(`${prefix}/cmd/v1`, timed({ action: moveOf(), key, ttlMs: 60_000 }));
          const result = await observer.waitFor(
            (m) => m.json().key === key,
            10_000,
            `${key}'s result`,
          );
          expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
          expect(writes()).toBe(before + 1);
        };

        // The gateway is back; the plant's traffic flows. The first message the tool's filter
        // delivers shows it; a command behind it runs. Its result follows, on the gateway's
        // connection, whatever the gateway sent the broker while handling the message before it.
        intake = newIntake();
        await site.connect(intake);
        await plant.publish(telemetry, { flow: 1 });
        await runs(randomUUID());

        // The gateway is away again (a restart): the plant's traffic goes on, more than the
        // broker queues for a client, and a command is published behind it.
        await intake.stop();
        const delivered = site.broker.deliveriesTo(clientId, telemetry).length;
        for (let i = 0; i < 30; i++) await plant.publish(telemetry, { flow: i });
        const key = randomUUID();
        intake = newIntake();
        const command = runs(key);
        await site.connect(intake);
        // Ground truth: the command was delivered and ran once (above), the journal has it, the
        // broker dropped nothing for the gateway and sent it none of that traffic.
        await command;
        expect(site.stack.pipeline.get({ scope: 'plant', key })?.state).toBe('confirmed');
        expect(site.broker.log()).not.toContain(
          `Outgoing messages are being dropped for client ${clientId}`,
        );
        expect(site.broker.deliveriesTo(clientId, telemetry)).toHaveLength(delivered);
        await intake.stop();
        // Said, with what was removed where the protocol tells it: over MQTT 5 the UNSUBACK said
        // which of the filters existed, the tool's alone.
        const said = lines.filter((l) =>
          String(l.msg).includes('another client with this client id left'),
        );
        expect(said.length).toBeGreaterThanOrEqual(1);
        if (version === 5) expect(said.map((l) => l.removed)).toEqual([['#']]);
      }, 60_000);
    }
  },
);

describe.skipIf(!available)('MQTT intake: the traffic of a left subscription, in a burst', () => {
  const site = useMqttSite({}, { opcua: false });

  it('is answered with an UNSUBSCRIBE at a time, not one per topic', async () => {
    const gateway = 'gwburst';
    const clientId = `sluice-${gateway}`;
    const newIntake = (): ReturnType<typeof site.intake> =>
      site.intake({
        gatewayId: gateway,
        config: { protocolVersion: 5 },
        reconnect: { minMs: 100, maxMs: 400 },
      });
    let intake = newIntake();
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    await intake.stop();
    await site.leaveSubscriptions(clientId, ['#']);
    // Queued for the gateway on 40 topics: the broker sends them together when it connects,
    // before it has read the gateway's first UNSUBSCRIBE.
    const plant = await TestClient.connect(site.broker.url, { protocolVersion: 4 });
    site.cleanups.push(() => plant.end());
    for (let i = 0; i < 40; i++) await plant.publish(`plant/${gateway}/t${i}`, { v: i });
    // The gateway's UNSUBSCRIBEs of left filters: not the one that ends its probe of
    // Subscription Identifiers (its status topic, mqtt-identifier-probe.ts).
    const unsubscribes = (): number => {
      const lines = site.broker.log().split('\n');
      return lines.filter(
        (l, i) =>
          l.includes(`Received UNSUBSCRIBE from ${clientId}`) &&
          !(lines[i + 1] ?? '').endsWith(`\tsluice/${gateway}/status`),
      ).length;
    };
    const before = unsubscribes();
    intake = newIntake();
    await site.connect(intake);
    // Ground truth (the broker's log): all 40 delivered, and `#` taken away.
    const delivered = (): number =>
      Array.from({ length: 40 }, (_, i) =>
        site.broker.deliveriesTo(clientId, `plant/${gateway}/t${i}`),
      ).filter((d) => d.length > 0).length;
    const end = Date.now() + 10_000;
    while ((delivered() < 40 || unsubscribes() === before) && Date.now() < end) {
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(delivered()).toBe(40);
    // A message published now reaches no one: a subscriber on its topic shows it was sent.
    const watcher = await TestClient.connect(site.broker.url);
    site.cleanups.push(() => watcher.end());
    await watcher.subscribe(`plant/${gateway}/after`);
    await plant.publish(`plant/${gateway}/after`, { v: 'after' });
    await watcher.waitFor((m) => m.topic === `plant/${gateway}/after`, 5_000, 'the later message');
    expect(site.broker.deliveriesTo(clientId, `plant/${gateway}/after`)).toEqual([]);
    // One per window of messages the broker had sent before it read one (it sends those it
    // queued 20 at a time, mosquitto's max_inflight_messages): not one per topic.
    expect(unsubscribes() - before).toBeLessThanOrEqual(2);
    await intake.stop();
  }, 60_000);
});

describe('filtersMatching', () => {
  const everyFilter = (topic: string): string[] => {
    // By brute force: each level literal or `+`, then `#` after any number of them, or not.
    const levels = topic.split('/');
    const out: string[] = [];
    const walk = (i: number, parts: string[]): void => {
      out.push([...parts, '#'].join('/'));
      if (i === levels.length) {
        out.push(parts.join('/'));
        return;
      }
      walk(i + 1, [...parts, levels[i]!]);
      walk(i + 1, [...parts, '+']);
    };
    walk(0, []);
    return out.filter((f) => topicMatches(f, topic));
  };

  it('gives every filter that matches a short topic, the most general first, and only those', () => {
    for (const topic of ['a', 'plant/line-1/flow', 'sluice/gw/result/v1', 'a//b', 'x/y/z/w/v/u']) {
      const filters = filtersMatching(topic);
      expect(new Set(filters).size).toBe(filters.length);
      expect([...filters].sort()).toEqual([...new Set(everyFilter(topic))].sort());
      expect(filters[0]).toBe('#');
    }
    expect(filtersMatching('$SYS/broker/uptime')).not.toContain('#');
    expect(
      filtersMatching('$SYS/broker/uptime').every((f) => topicMatches(f, '$SYS/broker/uptime')),
    ).toBe(true);
  });

  it('is bounded for long and deep topics, and keeps the filters with the fewest `+`', () => {
    const deep = Array.from({ length: 40 }, (_, i) => `l${i}`).join('/');
    const filters = filtersMatching(deep);
    expect(filters.length).toBeLessThanOrEqual(256);
    expect(filters).toContain('#');
    expect(filters).toContain('l0/l1/#');
    expect(filters).toContain(deep);
    expect(filters.every((f) => topicMatches(f, deep))).toBe(true);
    const long = 'x'.repeat(60_000);
    const few = filtersMatching(`${long}/y`);
    expect(few.reduce((sum, f) => sum + Buffer.byteLength(f) + 2, 0)).toBeLessThanOrEqual(
      64 * 1024,
    );
    expect(few[0]).toBe('#');
  });
});
