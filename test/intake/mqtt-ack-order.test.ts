import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { MqttIntake } from '../../src/intake/mqtt.js';
import { AckOrderRelay } from '../helpers/ack-order-relay.js';
import { mosquittoAvailable, timed, until, useMqttSite } from '../helpers/mqtt-site.js';
import { slowFdatasync } from '../helpers/slow-fdatasync.js';

/**
 * The gateway sends its PUBACKs in the order the PUBLISH packets came (MQTT 5 §4.6 and MQTT 3.1.1
 * §4.6, [MQTT-4.6.0-2]), that of a message that is no command included: a copy on the gateway's
 * own state topics, delivered at QoS 1 through a filter another client with the gateway's client id
 * left in its session (`mosquitto_sub -c -i sluice-gw-1 -t 'sluice/gw-1/state/v9'`), came right
 * after a command whose PUBACK waited for its claim's fsync, and was acknowledged at once, before
 * the command. Now its PUBACK follows the command's, as soon as that one is sent.
 *
 * Real Mosquitto, the intake, the SQLite journal, the simulated plant. Ground truth: the packets
 * themselves, recorded by a TCP relay between the intake and Mosquitto that passes every byte
 * unchanged (test/helpers/ack-order-relay.ts): the broker's PUBLISHes in the order they reached
 * the intake, and the PUBACKs in the order the intake sent them. Doubles: a slowed fdatasync
 * (test/helpers/slow-fdatasync.ts) holds the command's claim barrier open for a second, so that
 * the second message surely comes while its PUBACK waits (a flush of a gateway's flash, which the
 * test's disk does not make on demand); the copy on the state topic is published by the test's
 * plant client, standing in for the gateway's own state coming back, whose moment cannot be set.
 */
describe.skipIf(!mosquittoAvailable())('MQTT intake: the order of its PUBACKs', () => {
  const site = useMqttSite({}, { opcua: false });

  it.each([5, 4] as const)(
    'acknowledges a state copy that came after a command held for its fsync after the command (MQTT %i)',
    async (version) => {
      const gatewayId = `gwackorder${String(version)}`;
      const clientId = `sluice-${gatewayId}`;
      const prefix = `sluice/${gatewayId}`;
      const command = `${prefix}/cmd/v1`;
      // A state topic of no device the gateway drives: its own state publications (the mirror it
      // publishes at each connection) do not come back through the filter first, unsubscribing it.
      const state = `${prefix}/state/v9`;
      const relay = await AckOrderRelay.open(site.broker.port);
      site.cleanups.push(() => relay.close());
      // A first run makes the gateway's session (its command subscription); the filter on its
      // state topics is left in it while the gateway is away.
      let intake: MqttIntake = site.intake({ gatewayId, config: { protocolVersion: version } });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      await intake.stop();
      await site.leaveSubscriptions(clientId, [state], { version, qos: 1 });
      intake = site.intake({
        gatewayId,
        config: { protocolVersion: version, url: relay.url },
      });
      await site.connect(intake);
      const { plant, observer } = await site.plantSide(prefix);
      const valve = site.stack.plant.device('v1');
      const key = randomUUID();
      const action = valve.published.state === 'CLOSED' ? 'open' : 'close';

      const disk = slowFdatasync(1_000);
      try {
        await plant.publish(command, timed({ action, key }));
        await plant.publish(state, { state: 'MOVING' });
        await until(
          () => {
            const ours = relay.current.filter((p) => p.topic === command || p.topic === state);
            return ours.length === 2 && ours.every((p) => p.acked !== null) ? true : undefined;
          },
          15_000,
          'the command and the state copy acknowledged',
        );
      } finally {
        disk.restore();
      }
      const received = relay.current.filter((p) => p.topic === command || p.topic === state);
      // The premise: both came at QoS 1, the command first, and its claim waited for a delayed flush.
      expect(received.map((p) => [p.topic, p.qos])).toEqual([
        [command, 1],
        [state, 1],
      ]);
      expect(disk.delayed).toBeGreaterThan(0);
      // Every PUBACK of the connection in the order of its PUBLISH.
      const acked = relay.current.filter((p) => p.qos === 1 && p.acked !== null);
      const inAckOrder = [...acked].sort((a, b) => (a.acked ?? 0) - (b.acked ?? 0));
      expect(inAckOrder.map((p) => p.topic)).toEqual(acked.map((p) => p.topic));

      const result = await observer.waitFor((m) => m.json().key === key, 15_000, 'the result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      await intake.stop();
    },
    40_000,
  );
});
