import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MqttIntake } from '../../src/intake/mqtt.js';
import { startAedes, type AedesBroker } from '../helpers/aedes.js';
import { intakeConfig, TestClient, until } from '../helpers/mosquitto.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { startStack, type Stack } from '../helpers/stack.js';

/**
 * A broker that refuses the gateway's command subscription (an ACL without read on the
 * command topics; aedes answers the SUBSCRIBE with 0x80): the gateway hears no command, so it
 * must not say `online` on its status topic. It said so at every CONNACK, before the SUBACK
 * refused the subscription, and then the Will's `offline` as it dropped the connection to try
 * again: a status that flapped while no command could be heard. The real intake on the
 * stack's pipeline, aedes (the demo's broker) with an authorizer; ground truth: what a
 * subscriber of the status topic receives.
 */

const PREFIX = 'sluice/refused';

describe('MQTT intake: a broker that refuses the command subscription', () => {
  let stack: Stack;
  let broker: AedesBroker;

  beforeAll(async () => {
    stack = await startStack({ opcua: false });
    broker = await startAedes({
      authorizeSubscribe: (_client, subscription, callback) => {
        // The gateway's command filter is refused; anything else (the test's status
        // subscription) is granted.
        if (subscription.topic.startsWith(`${PREFIX}/cmd/`)) callback(null, null);
        else callback(null, subscription);
      },
    });
  }, 60_000);

  afterAll(async () => {
    await broker.close();
    await stack.stop();
  });

  it('publishes no `online`: the refusal is logged, and the Will says offline', async () => {
    const watcher = await TestClient.connect(broker.url, { protocolVersion: 4 });
    try {
      // The status as an earlier stop of the gateway left it.
      await watcher.publish(`${PREFIX}/status`, 'offline', { retain: true });
      await watcher.subscribe(`${PREFIX}/status`);
      await watcher.waitFor((m) => m.text === 'offline', 5_000, 'the retained offline');

      const { logger, lines } = recordingLogger();
      const intake = new MqttIntake({
        config: intakeConfig(broker.url, { protocolVersion: 4, clientId: 'sluice-refused' }),
        gatewayId: 'refused',
        pipeline: stack.pipeline,
        identities: stack.identities,
        metrics: stack.metrics,
        logger,
        // One attempt within the test: the next is a minute away.
        reconnect: { minMs: 60_000, maxMs: 60_000 },
      });
      try {
        intake.start();
        await until(
          () =>
            lines.some(
              (l) =>
                l.msg === 'the broker refused the command subscription; reconnecting to try again',
            ) || undefined,
          10_000,
          'the refusal logged',
        );
        // The connection dropped: the broker publishes the Will. Anything the gateway published
        // on that connection (an `online` before its SUBSCRIBE) reached the watcher before it.
        await until(
          () => watcher.messages.filter((m) => m.text === 'offline').length >= 2 || undefined,
          10_000,
          "the Will's offline",
        );
        expect(watcher.messages.map((m) => m.text)).toEqual(['offline', 'offline']);
        expect(intake.connected()).toBe(false);
      } finally {
        await intake.stop();
      }
    } finally {
      await watcher.client.endAsync();
    }
  }, 30_000);
});
