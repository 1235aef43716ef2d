import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Logger } from '../../src/core/logger.js';
import { mosquittoAvailable, TestClient, timed, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A command copy that comes at QoS 2: the command subscription is QoS 1, but a filter another
 * client left in the gateway's persistent session at QoS 2 (`mosquitto_sub -c -i <gateway's id>
 * -q 2 -t 'sluice/<gw>/cmd/v1'`) delivers a command published at QoS 2 at QoS 2. mqtt.js answers
 * its PUBLISH with PUBREC, stores it, and hands it to the intake at the broker's PUBREL; the
 * intake must complete it with PUBCOMP. It answered PUBACK (the acknowledgement it holds for a
 * claim's barrier, or for the check of Subscription Identifiers), which Mosquitto takes for a
 * protocol error: it closed the connection, sent the PUBREL again on the next, and so on for as
 * long as the gateway ran. Over MQTT 5 that copy is another subscription's (never run), beside
 * the command subscription's QoS 1 copy; over MQTT 3.1.1 Mosquitto sends one copy, at the QoS of
 * the filter it matched first (the exact topic, QoS 2), and that copy runs. A copy at QoS 2 shows
 * that filter (the command subscription is QoS 1), and over MQTT 3.1.1 it is the one sign of it:
 * the filter must be unsubscribed, as a left filter is over MQTT 5 by the copy without the command
 * subscription's identifier; it stayed, and every later command came at QoS 2, its PUBREC sent
 * before its claim was durable. The real intake, Mosquitto 2.0, the simulated plant; ground
 * truth: the broker's log (the QoS of each copy it sent the gateway, the PUBCOMPs it received, the
 * filters the gateway unsubscribed, the gateway's connections and the connections it closed for a
 * protocol error), the journal's history, and the simulator's write count. That the link stayed
 * up is read once a later command's result has come: whatever the gateway sent the broker for the
 * QoS 2 copies went before that result on the same connection.
 */

const available = mosquittoAvailable();

/** What the broker's log says of `clientId` from line `from` on. */
function brokerSaw(
  log: string,
  clientId: string,
  from: number,
): {
  readonly connections: number;
  readonly protocolErrors: number;
  readonly qos2Copies: number;
  readonly pubcomps: number;
  readonly pubacksOfQos2: number;
} {
  const lines = log.split('\n').slice(from);
  const qos2Mids = new Set<string>();
  for (const line of lines) {
    // "Sending PUBLISH to sluice-gw (d0, q2, r0, m1, 'sluice/gw/cmd/v1', ... (114 bytes))"
    const m = /Sending PUBLISH to (\S+) \(d\d, q2, r\d, m(\d+), '[^']*\/cmd\//.exec(line);
    if (m?.[1] === clientId && m[2] !== undefined) qos2Mids.add(m[2]);
  }
  const pubackOf = (line: string): string | undefined =>
    new RegExp(`Received PUBACK from ${clientId} \\(Mid: (\\d+)`).exec(line)?.[1];
  return {
    connections: lines.filter((l) => l.includes(` as ${clientId} (`)).length,
    protocolErrors: lines.filter((l) =>
      l.includes(`${clientId} disconnected due to protocol error`),
    ).length,
    qos2Copies: qos2Mids.size,
    pubcomps: lines.filter((l) => l.includes(`Received PUBCOMP from ${clientId} (`)).length,
    pubacksOfQos2: lines.filter((l) => {
      const mid = pubackOf(l);
      return mid !== undefined && qos2Mids.has(mid);
    }).length,
  };
}

/**
 * The filters `clientId` unsubscribed, as the broker's log from line `from` on names them: an
 * UNSUBSCRIBE is logged "Received UNSUBSCRIBE from ID", then a line "ID filter" for each of its
 * filters (a SUBSCRIBE's filter lines carry the QoS, "ID 1 filter"), among lines of a tab and a
 * topic that are skipped.
 */
function unsubscribedBy(log: string, clientId: string, from: number): string[] {
  const filters: string[] = [];
  let inUnsubscribe = false;
  for (const line of log.split('\n').slice(from)) {
    const text = line.replace(/^[\d:]+: /, '');
    if (text.startsWith('\t')) continue;
    if (text.startsWith('Received UNSUBSCRIBE from ')) {
      inUnsubscribe = text === `Received UNSUBSCRIBE from ${clientId}`;
      continue;
    }
    const m = /^(\S+) (\S+)$/.exec(text);
    if (inUnsubscribe && m?.[1] === clientId && m[2] !== undefined) filters.push(m[2]);
    else inUnsubscribe = false;
  }
  return filters;
}

describe.skipIf(!available)('MQTT intake: a command copy at QoS 2', () => {
  const site = useMqttSite({}, { opcua: false });

  /** The gateway, the plant system and the observer of results; the intake stopped. */
  const setUp = async (
    gateway: string,
    version: 4 | 5,
  ): Promise<{
    readonly newIntake: (logger?: Logger) => ReturnType<typeof site.intake>;
    readonly plant: TestClient;
    readonly observer: TestClient;
  }> => {
    const newIntake = (logger?: Logger): ReturnType<typeof site.intake> =>
      site.intake({
        gatewayId: gateway,
        ...(logger === undefined ? {} : { logger }),
        // A Receive Maximum of 1 (MQTT 5): mqtt.js counts the QoS 2 messages it has stored and
        // not released against it, and ends the connection when a second one comes.
        config: { protocolVersion: version, receiveMaximum: 1 },
        reconnect: { minMs: 100, maxMs: 400 },
      });
    const intake = newIntake();
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    await intake.stop();
    // The tool: the gateway's client id, its persistent session, the exact command topic at QoS 2.
    await site.leaveSubscriptions(clientId(gateway), [`sluice/${gateway}/cmd/v1`], {
      version,
      qos: 2,
      ...(version === 5 ? { expirySeconds: 600 } : {}),
    });
    expect(site.broker.log()).toContain(`${clientId(gateway)} 2 sluice/${gateway}/cmd/v1`);
    const plant = await TestClient.connect(site.broker.url);
    site.cleanups.push(() => plant.end());
    const observer = await TestClient.connect(site.broker.url);
    site.cleanups.push(() => observer.end());
    await observer.subscribe(`sluice/${gateway}/result/#`);
    return { newIntake, plant, observer };
  };

  const clientId = (gateway: string): string => `sluice-${gateway}`;
  const moveOf = (): 'open' | 'close' =>
    site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
  const writes = (): number => site.stack.plant.device('v1').counters.writesReceived;
  const duplicates = (key: string): number =>
    site.stack.pipeline
      .history({ scope: 'plant', key })
      .filter((e) => e.detail.startsWith('duplicate')).length;

  it("MQTT 5: another subscription's QoS 2 copies, held for the identifier check, are completed; the link stays up", async () => {
    const gateway = 'gwqos2v5';
    const topic = `sluice/${gateway}/cmd/v1`;
    const { newIntake, plant, observer } = await setUp(gateway, 5);
    // Two commands published at QoS 2 while the gateway is away: the broker queues two copies
    // of each (the command filter's at QoS 1, the left filter's at QoS 2), and sends them first
    // on the next connection, before its check of Subscription Identifiers has answered: the
    // QoS 2 copies, without the command subscription's identifier, are held until it does.
    const first = moveOf();
    const queued = [
      { key: randomUUID(), action: first },
      { key: randomUUID(), action: first === 'open' ? 'close' : 'open' },
    ];
    for (const c of queued) {
      await plant.publish(topic, timed({ action: c.action, key: c.key, ttlMs: 60_000 }), {
        qos: 2,
      });
    }
    const before = writes();
    const from = site.broker.log().split('\n').length;
    const intake = newIntake();
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    for (const c of queued) {
      const result = await observer.waitFor((m) => m.json().key === c.key, 15_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
    }
    // A later command, published once the left filter is gone: it comes once, at QoS 1.
    const later = randomUUID();
    await plant.publish(topic, timed({ action: moveOf(), key: later, ttlMs: 60_000 }), { qos: 2 });
    const result = await observer.waitFor((m) => m.json().key === later, 15_000, 'result');
    expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });

    expect(brokerSaw(site.broker.log(), clientId(gateway), from)).toEqual({
      connections: 1,
      protocolErrors: 0,
      qos2Copies: 2,
      pubcomps: 2,
      pubacksOfQos2: 0,
    });
    // Each command ran once; the QoS 2 copies were never claimed.
    expect(writes()).toBe(before + 3);
    for (const key of [...queued.map((c) => c.key), later]) expect(duplicates(key)).toBe(0);
    await intake.stop();
  }, 60_000);

  it('MQTT 3.1.1: the one copy, at QoS 2, runs and is completed once its claim is durable, and its filter is unsubscribed; the link stays up', async () => {
    const gateway = 'gwqos2v4';
    const topic = `sluice/${gateway}/cmd/v1`;
    const { newIntake, plant, observer } = await setUp(gateway, 4);
    const before = writes();
    const from = site.broker.log().split('\n').length;
    const { logger, lines } = recordingLogger();
    const intake = newIntake(logger);
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    // Two commands in turn, each published at QoS 2. The first comes once, at QoS 2 (the left
    // filter matched first), runs, and has that filter unsubscribed; the second comes once, at
    // QoS 1, through the command filter, and runs.
    const keys: string[] = [];
    for (let i = 0; i < 2; i++) {
      const key = randomUUID();
      keys.push(key);
      await plant.publish(topic, timed({ action: moveOf(), key, ttlMs: 60_000 }), { qos: 2 });
      const result = await observer.waitFor((m) => m.json().key === key, 15_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed', replayed: false });
    }
    expect(brokerSaw(site.broker.log(), clientId(gateway), from)).toEqual({
      connections: 1,
      protocolErrors: 0,
      qos2Copies: 1,
      pubcomps: 1,
      pubacksOfQos2: 0,
    });
    // The broker's log of the gateway's UNSUBSCRIBE names the left filter, never the command
    // filter (which delivered the second command).
    const unsubscribed = unsubscribedBy(site.broker.log(), clientId(gateway), from);
    expect(unsubscribed).toContain(topic);
    expect(unsubscribed).not.toContain(`sluice/${gateway}/cmd/+`);
    expect(
      lines.filter((l) => String(l.msg).startsWith('command delivered at QoS 2')),
    ).toHaveLength(1);
    expect(writes()).toBe(before + 2);
    for (const key of keys) {
      expect(site.stack.pipeline.get({ scope: 'plant', key })?.state).toBe('confirmed');
      expect(duplicates(key)).toBe(0);
    }
    await intake.stop();
  }, 60_000);
});
