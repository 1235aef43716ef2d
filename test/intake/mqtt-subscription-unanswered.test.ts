import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MqttIntake } from '../../src/intake/mqtt.js';
import { startAedes, type AedesBroker } from '../helpers/aedes.js';
import { intakeConfig, TestClient, until } from '../helpers/mosquitto.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { startStack, type Stack } from '../helpers/stack.js';

/**
 * A broker that takes the gateway's connection and never answers its command SUBSCRIBE: aedes
 * whose authorizer does not call back for the command filter on the first connection (a plugin
 * waiting on a backend that hangs), while it answers PINGREQs and everything else. The gateway
 * stayed connected, deaf and unready for as long as the connection lasted, with nothing in the
 * log past 'connected to the MQTT broker' and /readyz saying only "not connected". Now it says
 * why (the log, health's lastError) and drops the connection, and the next one subscribes again.
 * Ground truth: the broker's own view (SUBSCRIBEs it was asked to authorize, the gateway's
 * connections closed) and what a subscriber of the status topic receives.
 */

const PREFIX = 'sluice/unanswered';

describe('MQTT intake: a broker that never answers the command SUBSCRIBE', () => {
  let stack: Stack;
  let broker: AedesBroker;
  /** The command SUBSCRIBEs the broker was asked to authorize, in order. */
  let asked = 0;
  /** The gateway's connections the broker saw end. */
  let closed = 0;

  beforeAll(async () => {
    stack = await startStack({ opcua: false });
    broker = await startAedes({
      authorizeSubscribe: (_client, subscription, callback) => {
        if (subscription.topic.startsWith(`${PREFIX}/cmd/`)) {
          asked += 1;
          // The first is never answered; the next one is granted.
          if (asked === 1) return;
        }
        callback(null, subscription);
      },
    });
    broker.aedes.on('clientDisconnect', (client) => {
      if (client.id === 'sluice-unanswered') closed += 1;
    });
  }, 60_000);

  afterAll(async () => {
    await broker.close();
    await stack.stop();
  });

  it('says why it is not ready, drops the connection, and subscribes again on the next one', async () => {
    const watcher = await TestClient.connect(broker.url, { protocolVersion: 4 });
    try {
      await watcher.subscribe(`${PREFIX}/status`);
      const { logger, lines } = recordingLogger();
      const intake = new MqttIntake({
        config: intakeConfig(broker.url, { protocolVersion: 4, clientId: 'sluice-unanswered' }),
        gatewayId: 'unanswered',
        pipeline: stack.pipeline,
        identities: stack.identities,
        metrics: stack.metrics,
        logger,
        reconnect: { minMs: 200, maxMs: 200 },
        subackTimeoutMs: 1_000,
      });
      try {
        intake.start();
        await until(() => asked >= 1 || undefined, 10_000, 'the first SUBSCRIBE at the broker');
        const said = await until(
          () =>
            lines.find(
              (l) =>
                l.msg ===
                'the broker did not answer the command subscription (no SUBACK); reconnecting to try again',
            ),
          10_000,
          'the unanswered subscription logged',
        );
        expect(said.level).toBe(50);
        expect(said.topic).toBe(`${PREFIX}/cmd/+`);
        const health = intake.health();
        expect(health.connected).toBe(false);
        expect(health.lastError).toContain(
          `the broker did not answer the command subscription ${PREFIX}/cmd/+ within 1000 ms (no SUBACK)`,
        );
        // The broker saw the connection end, and was asked again on the next one, which it
        // grants: only then is `online` published.
        await until(() => closed >= 1 || undefined, 10_000, 'the connection closed at the broker');
        await until(() => asked >= 2 || undefined, 10_000, 'a second SUBSCRIBE at the broker');
        await watcher.waitFor((m) => m.text === 'online', 10_000, '`online`');
        expect(watcher.messages.filter((m) => m.text === 'online')).toHaveLength(1);
        await until(() => intake.connected() || undefined, 10_000, 'the intake ready');
        expect(asked).toBe(2);
      } finally {
        await intake.stop();
      }
    } finally {
      await watcher.client.endAsync();
    }
  }, 30_000);
});
