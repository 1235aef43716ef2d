import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * A broker that limits the size of the packets it takes (mosquitto `max_packet_size`, told the
 * client in the MQTT 5 CONNACK) and closes the connection of a client that sends a larger one.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: the broker’s Maximum Packet Size', () => {
  const GATEWAY = 'gwp';
  const PREFIX = `sluice/${GATEWAY}`;
  const CLIENT_ID = `sluice-${GATEWAY}`;
  // Commands (about 150 bytes) fit; a result document (about 700 bytes) does not.
  // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
  const site = useMqttSite({ settings: ['max_packet_size 400'] }, { opcua: false });
  const { cleanups } = site;

  it('does not publish a result larger than the broker takes, and keeps its connection and taking commands', async () => {
    const intake = site.intake({
      gatewayId: GATEWAY,
      config: { protocolVersion: 5 },
      reconnect: { minMs: 100, maxMs: 400 },
    });
    cleanups.push(() => intake.stop());
    await site.connect(intake);
    const issuer = await TestClient.connect(site.broker.url);
    cleanups.push(() => issuer.end());
    const connections = site.broker.connectionsOf(CLIENT_ID);

    const v1 = site.stack.plant.device('v1');
    const writes = v1.counters.writesReceived;
    const keys = [randomUUID(), randomUUID()];
    for (const key of keys) {
      const action = v1.published.state === 'CLOSED' ? 'open' : 'close';
      await issuer.publish(`${PREFIX}/cmd/v1`, timed({ key, action }));
      // Taken, run and settled: its result (too large for the broker) is due now.
      const settled = await until(
        () => {
          const record = site.stack.pipeline.get({ scope: 'plant', key });
          return record?.state === 'confirmed' ? record : undefined;
        },
        10_000,
        'command confirmed',
      );
      expect(settled.state).toBe('confirmed');
    }
    // Both commands ran, each written once; the second was taken after the first's result was
    // due, on the same connection: the broker never had reason to close it.
    expect(v1.counters.writesReceived).toBe(writes + 2);
    expect(site.broker.connectionsOf(CLIENT_ID)).toBe(connections);
    expect(intake.connected()).toBe(true);
    await intake.stop();
  });
});
