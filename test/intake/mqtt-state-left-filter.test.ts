import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import type { MqttIntake } from '../../src/intake/mqtt.js';
import { mosquittoAvailable, timed, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * A filter on the gateway's own state topics that another client with the gateway's client id
 * left in its persistent session at QoS 1 (`mosquitto_sub -c -i sluice-gw-1 -t
 * 'sluice/gw-1/state/#'`, run to watch the states) is unsubscribed, as a filter on any other topic
 * not the gateway's is: the broker sent the gateway back every state it published, at QoS 1, to
 * be acknowledged and queued with the commands for the gateway (against mosquitto
 * `max_queued_messages`, past which the broker drops commands). The gateway's own reading of its
 * state topics is QoS 0, so a copy at QoS 1 shows such a filter. It was never removed. Real
 * Mosquitto (its log: the UNSUBSCRIBE, and which state publications it sent the gateway), the
 * intake, the SQLite journal, the simulated plant.
 */
describe.skipIf(!mosquittoAvailable())('a filter left on the gateway’s state topics', () => {
  const GATEWAY = 'gwstateleft';
  const site = useMqttSite({}, { opcua: false });

  it.each([5, 4] as const)(
    'is unsubscribed once the broker sends the gateway its own state at QoS 1 (MQTT %i)',
    async (version) => {
      const gatewayId = `${GATEWAY}${String(version)}`;
      const clientId = `sluice-${gatewayId}`;
      const prefix = `sluice/${gatewayId}`;
      const state = `${prefix}/state/v1`;
      const newIntake = (): MqttIntake =>
        site.intake({ gatewayId, config: { protocolVersion: version } });
      let intake = newIntake();
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      await intake.stop();
      await site.leaveSubscriptions(clientId, [`${prefix}/state/#`], { version, qos: 1 });
      intake = newIntake();
      await site.connect(intake);
      const { plant, observer } = await site.plantSide(prefix);
      await observer.subscribe(state);
      const valve = site.stack.plant.device('v1');
      /** Moves v1, and resolves once its new state is published (seen by the observer). */
      const move = async (): Promise<void> => {
        const key = randomUUID();
        const action = valve.published.state === 'CLOSED' ? 'open' : 'close';
        const target = action === 'open' ? 'OPEN' : 'CLOSED';
        await plant.publish(`${prefix}/cmd/v1`, timed({ action, key }));
        const result = await observer.waitFor((m) => m.json().key === key, 15_000, 'result');
        expect(result.json()).toMatchObject({ state: 'confirmed' });
        await observer.waitFor(
          (m) => m.topic === state && m.json().state === target,
          15_000,
          'the new state',
        );
      };
      const echoed = (): number =>
        site.broker
          .log()
          .split('\n')
          .filter(
            (l) =>
              l.includes(`Sending PUBLISH to ${clientId} (`) &&
              l.includes(', q1,') &&
              l.includes(`'${state}'`),
          ).length;

      // Its states come back through the left filter, at QoS 1: the gateway unsubscribes it
      // (Mosquitto logs each filter of an UNSUBSCRIBE as "{client id} {filter}"), and has the
      // broker's UNSUBACK.
      await move();
      expect(echoed()).toBeGreaterThan(0);
      await until(
        () => {
          const lines = site.broker.log().split('\n');
          const at = lines.findIndex((l) => l.endsWith(`: ${clientId} ${prefix}/state/#`));
          if (at < 0) return undefined;
          return lines.slice(at).some((l) => l.includes(`Sending UNSUBACK to ${clientId}`))
            ? true
            : undefined;
        },
        10_000,
        'the left filter unsubscribed',
      );
      // The states published after it are no longer sent to the gateway: the broker sends each to
      // every subscriber in one pass, the observer's copy among them.
      const before = echoed();
      await move();
      expect(echoed()).toBe(before);
      await intake.stop();
    },
    40_000,
  );
});
