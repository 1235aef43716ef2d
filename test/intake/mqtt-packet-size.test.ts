import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/core/logger.js';
import { MqttIntake } from '../../src/intake/mqtt.js';
import {
  intakeConfig,
  mosquittoAvailable,
  startMosquitto,
  TestClient,
  timed,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { startStack, type Stack } from '../helpers/stack.js';

/**
 * A broker that limits the size of the packets it takes (mosquitto `max_packet_size`, told the
 * client in the MQTT 5 CONNACK) and closes the connection of a client that sends a larger one.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: the broker’s Maximum Packet Size', () => {
  const GATEWAY = 'gwp';
  const PREFIX = `sluice/${GATEWAY}`;
  const CLIENT_ID = `sluice-${GATEWAY}`;
  let broker: Mosquitto;
  let stack: Stack;
  const cleanups: (() => Promise<void>)[] = [];

  beforeAll(async () => {
    // Commands (about 150 bytes) fit; a result document (about 700 bytes) does not.
    broker = await startMosquitto({ settings: ['max_packet_size 400'] });
    cleanups.push(() => broker.close());
    stack = await startStack();
    cleanups.push(() => stack.stop());
  }, 60_000);

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  it('does not publish a result larger than the broker takes, and keeps its connection and taking commands', async () => {
    const intake = new MqttIntake({
      config: intakeConfig(broker.url, { protocolVersion: 5 }),
      gatewayId: GATEWAY,
      pipeline: stack.pipeline,
      identities: stack.identities,
      metrics: stack.metrics,
      logger: silentLogger,
      reconnect: { minMs: 100, maxMs: 400 },
    });
    intake.start();
    cleanups.push(() => intake.stop());
    await until(() => intake.connected() || undefined, 10_000, 'intake connected');
    const issuer = await TestClient.connect(broker.url);
    cleanups.push(() => issuer.end());
    const connections = broker.connectionsOf(CLIENT_ID);

    const v1 = stack.plant.device('v1');
    const writes = v1.counters.writesReceived;
    const keys = [randomUUID(), randomUUID()];
    for (const key of keys) {
      const action = v1.published.state === 'CLOSED' ? 'open' : 'close';
      await issuer.publish(`${PREFIX}/cmd/v1`, timed({ key, action }));
      // Taken, run and settled: its result (too large for the broker) is due now.
      const settled = await until(
        () => {
          const record = stack.pipeline.get({ scope: 'plant', key });
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
    expect(broker.connectionsOf(CLIENT_ID)).toBe(connections);
    expect(intake.connected()).toBe(true);
    await intake.stop();
  });
});
