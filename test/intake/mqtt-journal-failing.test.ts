import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { MqttIntake } from '../../src/intake/mqtt.js';
import { failFdatasync, type FailingFdatasync } from '../helpers/failing-fdatasync.js';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * While the journal fails closed (an fdatasync failed; fs.fdatasync is the one double here,
 * for a disk error no real part produces on demand), a message that is not a command — one
 * that writes nothing to the journal — is still acknowledged and answered once (SPEC §5:
 * acknowledged so that it does not redeliver). It used to wait for the failing barrier, be
 * withheld, and have the connection dropped for it: redelivered and answered again at every
 * reconnection for as long as the journal failed.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)(
  'MQTT intake: messages that are not commands while the journal fails',
  () => {
    const GATEWAY = 'gwf';
    const PREFIX = `sluice/${GATEWAY}`;
    const CLIENT_ID = `sluice-${GATEWAY}`;
    // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
    const site = useMqttSite({}, { opcua: false });
    let intake: MqttIntake;
    let observer: TestClient;
    let failing: FailingFdatasync | null = null;

    beforeAll(async () => {
      intake = await site.connect(
        site.intake({
          gatewayId: GATEWAY,
          config: { protocolVersion: 5 },
          reconnect: { minMs: 100, maxMs: 400 },
        }),
      );
      site.cleanups.push(() => intake.stop());
      observer = await TestClient.connect(site.broker.url, { clientId: 'observer-f' });
      site.cleanups.push(() => observer.end());
      await observer.subscribe(`${PREFIX}/result/#`);
    }, 60_000);

    afterAll(() => {
      failing?.restore();
    });

    const pubackOf = (mid: number): boolean =>
      site.broker
        .log()
        .split('\n')
        .some((line) => line.includes(`Received PUBACK from ${CLIENT_ID} (Mid: ${mid},`));

    it('acknowledges and answers once a malformed message and one for an unknown device; the connection stays', async () => {
      const connections = site.broker.connectionsOf(CLIENT_ID);
      failing = failFdatasync();
      // A QoS 0 command makes the journal write and sync: the sync fails, and the journal fails
      // closed until it recovers (it cannot while every fdatasync fails).
      const first = randomUUID();
      await observer.publish(`${PREFIX}/cmd/v1`, timed({ action: 'open', key: first }), { qos: 0 });
      await until(
        () => (failing !== null && failing.failures > 0 ? true : undefined),
        10_000,
        'a sync failed',
      );
      expect(site.stack.journal.syncPending).toBe(true);

      const cases = [
        { topic: `${PREFIX}/cmd/v1`, key: randomUUID(), action: 'fly', code: 'INVALID_COMMAND' },
        {
          topic: `${PREFIX}/cmd/nowhere`,
          key: randomUUID(),
          action: 'open',
          code: 'UNKNOWN_DEVICE',
        },
      ];
      for (const c of cases) {
        const delivered = site.broker.deliveriesTo(CLIENT_ID, c.topic).length;
        await observer.publish(c.topic, timed({ action: c.action, key: c.key }));
        const answer = await observer.waitFor((m) => m.json().key === c.key, 10_000, 'answer');
        expect(answer.json()).toMatchObject({ key: c.key, code: c.code });
        const deliveries = await until(
          () => {
            const now = site.broker.deliveriesTo(CLIENT_ID, c.topic).slice(delivered);
            return now.length > 0 ? now : undefined;
          },
          5_000,
          'delivery',
        );
        // Acknowledged on the connection it came on: the broker will not deliver it again.
        const mid = deliveries[0]!.mid;
        await until(() => (pubackOf(mid) ? true : undefined), 10_000, `PUBACK of ${mid}`);
        expect(site.broker.deliveriesTo(CLIENT_ID, c.topic).slice(delivered)).toEqual([
          { mid, dup: false },
        ]);
        expect(observer.messages.filter((m) => m.json().key === c.key)).toHaveLength(1);
        expect(site.stack.journal.findByKey(c.key)).toHaveLength(0);
      }
      // Nothing was dropped for them: still the same connection.
      expect(site.broker.connectionsOf(CLIENT_ID)).toBe(connections);
      expect(site.stack.journal.syncPending).toBe(true);
      failing.restore();
      failing = null;
    });
  },
);
