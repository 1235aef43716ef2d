import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, useMqttSite, type Received } from '../helpers/mqtt-site.js';

/**
 * A retry over MQTT 5, without issuedAt and with a Message Expiry Interval longer than the
 * journal keeps a settled key (journal.retentionHours), of a command the journal holds: its key
 * can start no new command, so it is answered as the retry it is (its result replayed), as an
 * untimed retry is. It was refused INVALID_COMMAND "… nothing was written", though the command
 * had run: an issuer believing it would send the command again under a new key. The same
 * message for a key the journal does not hold is still refused (test/intake/mqtt.test.ts).
 *
 * Real Mosquitto, MQTT intake, pipeline, SQLite journal and sluice-sim; no double. Ground truth:
 * what a real MQTT client received, and the simulator's write log.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)(
  'MQTT intake: a retry timed past the retention, of a journaled key',
  () => {
    const site = useMqttSite({}, { opcua: false });

    it('is answered with the command\'s result, not "nothing was written"', async () => {
      const gatewayId = 'gwexpiryretry';
      const prefix = `sluice/${gatewayId}`;
      const intake = site.intake({
        gatewayId,
        config: { protocolVersion: 5, clientId: `sluice-${gatewayId}` },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      const { plant, observer } = await site.plantSide(prefix);
      const valve = site.stack.plant.device('v1');
      const action = valve.published.state === 'CLOSED' ? 'open' : 'close';
      const key = `expiry-${randomUUID()}`;
      const ofKey = (m: Received): boolean =>
        m.topic === `${prefix}/result/v1` && m.json().key === key;
      const log = valve.writeLog.length;

      // Timed by an interval within the retention (48 h): taken, confirmed, written once.
      await plant.publish(
        `${prefix}/cmd/v1`,
        { action, key },
        { properties: { messageExpiryInterval: 600 } },
      );
      const result = await observer.waitFor(
        (m) => ofKey(m) && m.json().state !== undefined,
        15_000,
        'the result',
      );
      expect(result.json()).toMatchObject({ action, state: 'confirmed', replayed: false });
      expect(valve.writeLog).toHaveLength(log + 1);

      // The same command again, its interval past the retention: the key is journaled.
      await plant.publish(
        `${prefix}/cmd/v1`,
        { action, key },
        { properties: { messageExpiryInterval: 172_800 + 3_600 } },
      );
      const answer = await observer.waitFor(
        (m) => ofKey(m) && m !== result,
        10_000,
        'the answer to the retry',
      );
      expect(answer.json()).toMatchObject({ action, state: 'confirmed', replayed: true });
      expect(answer.json().code).toBe(result.json().code);
      expect(valve.writeLog).toHaveLength(log + 1);
      expect(site.stack.journal.findByKey(key)).toHaveLength(1);
    }, 60_000);
  },
);
