import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { Logger } from '../../src/core/logger.js';
import type { MqttIntake } from '../../src/intake/mqtt.js';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { TcpLink } from '../helpers/tcp-link.js';

/**
 * Two gateways given the same mqtt.clientId (a copied site file) with different gateway ids
 * share one persistent session on the broker. The second throws the first off; while it holds
 * the session it receives the first's commands (the session still has the first's filter) and
 * unsubscribes that filter as one left by an earlier configuration. Once the second has gone,
 * the first reconnects to a present session without its filter: it must subscribe again, not
 * trust the session, or it stays connected, ready and deaf. Real Mosquitto, the stack's real
 * pipeline and journal; ground truth: the journal and the simulator's write log.
 */

const available = mosquittoAvailable();
const CLIENT_ID = 'sluice-shared-id';

describe.skipIf(!available)('MQTT intake: two gateways given one client id', () => {
  const site = useMqttSite({}, { opcua: false });

  it('hears its commands again once the other gateway has gone, though the other unsubscribed its filter', async () => {
    /** A gateway on the shared client id, on the stack's pipeline. */
    const gateway = (gatewayId: string, logger: Logger, url = site.broker.url): MqttIntake => {
      const intake = site.intake({
        config: { protocolVersion: 5, clientId: CLIENT_ID, url },
        gatewayId,
        logger,
        // A backoff (3–6 s, jittered) long enough for the other gateway's whole visit: nothing
        // flaps meanwhile.
        reconnect: { minMs: 6_000, maxMs: 6_000 },
      });
      site.cleanups.push(() => intake.stop());
      return intake;
    };
    // The first gateway's uplink is slow: what it sends after its CONNECT (its SUBSCRIBE)
    // reaches the broker 300 ms later. Ready before the broker has its subscription, the
    // gateway said so while a command published meanwhile found no subscriber and was dropped.
    // Its `online` is still on that uplink when the other takes the session over: at the
    // reconnection mqtt.js sends it again before it says 'connect', and the last connection's
    // subscription must not say ready meanwhile.
    const uplink = await TcpLink.open(
      { host: '127.0.0.1', port: site.broker.port },
      { holdUpstreamMs: 300 },
    );
    site.cleanups.push(() => uplink.close());
    const a = await site.connect(
      gateway('gwa', recordingLogger().logger, `mqtt://${uplink.address}`),
    );
    const issuer = await TestClient.connect(site.broker.url);
    site.cleanups.push(() => issuer.end());

    // The other gateway connects with the same client id: the broker closes the first's
    // connection and hands the session (the first's filter in it) to the second.
    const second = recordingLogger();
    const b = gateway('gwb', second.logger);
    b.start();
    await until(() => (b.connected() && !a.connected() ? true : undefined), 10_000, 'b holds it');

    // A command for the first gateway reaches the second, which unsubscribes the first's filter.
    const lostKey = randomUUID();
    await issuer.publish('sluice/gwa/cmd/v1', timed({ key: lostKey, action: 'open' }));
    await until(
      () =>
        second.lines.some(
          (l) =>
            String(l.msg).startsWith('unsubscribed a command filter left in the persistent') &&
            l.filter === 'sluice/gwa/cmd/+',
        ) || undefined,
      10_000,
      "the second gateway unsubscribed the first's filter",
    );
    await b.stop();

    // The first gateway comes back to the session: it must hear its commands again.
    await until(() => (a.connected() ? true : undefined), 15_000, 'the first gateway back');
    const device = site.stack.plant.device('v1');
    const action = device.published.state === 'OPEN' ? 'close' : 'open';
    const before = device.counters.writesReceived;
    const key = randomUUID();
    await issuer.publish('sluice/gwa/cmd/v1', timed({ key, action }));
    await until(
      () => site.stack.journal.findByKey(key).find((r) => r.settledAt !== null),
      10_000,
      'the command after the return journaled and settled (the gateway hears it)',
    );
    const [record] = site.stack.journal.findByKey(key);
    expect(record?.state).toBe('confirmed');
    expect(device.writesWithSeq(record?.seq ?? -1)).toBe(1);
    expect(device.counters.writesReceived - before).toBe(1);
    // The one the second gateway took was acknowledged there and never run (the price of the
    // shared id while both ran).
    expect(site.stack.journal.findByKey(lostKey)).toHaveLength(0);
  }, 60_000);
});
