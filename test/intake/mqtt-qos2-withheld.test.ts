import { randomUUID } from 'node:crypto';
import Database from 'better-sqlite3';
import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * A command that comes at QoS 2 (through a filter another client left in the gateway's session at
 * QoS 2; over MQTT 3.1.1 Mosquitto sends that one copy, and it runs) and is withheld because the
 * journal refuses its claim: mqtt.js answered its PUBLISH with PUBREC and stored it, and hands the
 * same stored packet again, without DUP, at the PUBREL the broker sends on the next connection. A
 * command timed by its receipt (no issuedAt; `mqtt.acceptUntimedCommands`) must be timed from
 * when it first came, as a withheld QoS 1 redelivery is (mqtt-withheld-redelivery.test.ts): it
 * was timed from each hand-over, and written once the journal could take it, past its ttlMs from
 * its first coming (I3). Real Mosquitto (its log: the PUBREL sent again on a later connection),
 * the intake, the SQLite journal (its write lock held by a second connection, as a stalled or
 * busy disk holds it), the simulated plant (ground truth: its write count, the journal).
 */
describe.skipIf(!mosquittoAvailable())(
  'a QoS 2 command withheld while the journal is unavailable',
  () => {
    const GATEWAY = 'gwqos2withheld';
    const PREFIX = `sluice/${GATEWAY}`;
    const CLIENT_ID = `sluice-${GATEWAY}`;
    const site = useMqttSite({}, { opcua: false });

    it('is timed from when it first came when mqtt.js hands it again at the PUBREL', async () => {
      const topic = `${PREFIX}/cmd/v1`;
      const newIntake = (): ReturnType<typeof site.intake> =>
        site.intake({
          gatewayId: GATEWAY,
          config: { protocolVersion: 4, acceptUntimedCommands: true },
          reconnect: { minMs: 100, maxMs: 300 },
        });
      let intake = newIntake();
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      await intake.stop();
      await site.leaveSubscriptions(CLIENT_ID, [topic], { version: 4, qos: 2 });
      expect(site.broker.log()).toContain(`${CLIENT_ID} 2 ${topic}`);
      intake = newIntake();
      await site.connect(intake);

      const { plant, observer, writes } = await site.plantSide(PREFIX);
      const key = randomUUID();
      const valve = site.stack.plant.device('v1');
      const action = valve.published.state === 'CLOSED' ? 'open' : 'close';
      const before = writes();
      const pubrels = (): number =>
        site.broker
          .log()
          .split('\n')
          .filter((l) => l.includes(`Sending PUBREL to ${CLIENT_ID} (`)).length;
      const connections = site.broker.connectionsOf(CLIENT_ID);

      const locker = new Database(site.stack.journalPath);
      locker.exec('BEGIN IMMEDIATE');
      const sent = Date.now();
      try {
        await plant.publish(topic, { action, key, ttlMs: 2_000 }, { qos: 2 });
        // Refused, left unacknowledged (no PUBCOMP); the broker sends the PUBREL again on the next
        // connection, and mqtt.js hands the stored command again: refused again.
        await until(
          () =>
            pubrels() >= 2 && site.broker.connectionsOf(CLIENT_ID) > connections ? true : undefined,
          10_000,
          'the PUBREL sent again on a later connection',
        );
        // Sent once: on the later connection the broker sent the PUBREL again, not the message.
        expect(site.broker.deliveriesTo(CLIENT_ID, topic).map((d) => d.dup)).toEqual([false]);
        // The journal stays unavailable past the command's ttlMs from its first coming: the fault
        // lasts that long (not an assertion after a sleep; the result below is awaited).
        await new Promise((r) => setTimeout(r, Math.max(0, sent + 3_000 - Date.now())));
      } finally {
        locker.exec('ROLLBACK');
        locker.close();
      }

      const result = await observer.waitFor((m) => m.json().key === key, 15_000, 'result');
      expect(result.json()).toMatchObject({
        state: 'rejected',
        code: 'STALE_COMMAND',
        issuedAtSource: 'gateway',
      });
      expect(site.stack.pipeline.get({ scope: 'plant', key })?.dispatchedAt).toBeNull();
      expect(writes() - before).toBe(0);
      // The message the broker sent once at QoS 2 was completed once its claim was on disk.
      const mid = site.broker.deliveriesTo(CLIENT_ID, topic)[0]?.mid;
      expect(site.broker.log()).toContain(
        `Received PUBCOMP from ${CLIENT_ID} (Mid: ${String(mid)},`,
      );
      await intake.stop();
    }, 40_000);
  },
);
