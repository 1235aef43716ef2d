import { describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { mosquittoAvailable, TestClient, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * Results not held while the gateway is connected (a burst faster than the broker acknowledges
 * them, past the most held: 10,000 in the daemon, 150 here) are published again from the
 * journal on the same connection, once those held are acknowledged. They were left to the next
 * reconnection: a plant system waiting on the result topic heard nothing of them for as long as
 * the connection stayed up (days, on a gateway).
 *
 * Real Mosquitto (announcing its default Receive Maximum, 20: the rest of a burst waits in the
 * gateway's memory), the intake with the SQLite journal of the stack, sluice-sim; the commands
 * settle at their claim (FORBIDDEN_DEVICE), all in one turn. A file of its own: the journal's
 * row of results acknowledged is shared by the intakes on one journal, and another intake's
 * left the burst to a re-sending from the start. Ground truth: what a subscriber receives on
 * the result topic, against the journal's stored results, and the gateway's `online` on its
 * status topic (one per connection).
 */

const available = mosquittoAvailable();
const GATEWAY = 'gwburst';
const PREFIX = `sluice/${GATEWAY}`;
// Above the re-sending's page (100 results), as the daemon's 10,000 is.
const MAX_HELD = 150;
const DROPPED = 50;

describe.skipIf(!available)(
  'MQTT intake: a burst of results past the most held while connected',
  () => {
    const site = useMqttSite({}, { opcua: false });

    it('publishes every one without a reconnection, those not held in settlement order after the held', async () => {
      const intake = site.intake({
        gatewayId: GATEWAY,
        config: { protocolVersion: 5 },
        reconnect: { minMs: 100, maxMs: 400 },
        maxHeldPublications: MAX_HELD,
        journal: true,
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      const observer = await TestClient.connect(site.broker.url, { clientId: 'burst-observer' });
      site.cleanups.push(() => observer.end());
      await observer.subscribe(`${PREFIX}/result/#`);
      await observer.subscribe(`${PREFIX}/status`);
      const onlines = (): number =>
        observer.on(`${PREFIX}/status`).filter((m) => m.text === 'online').length;
      // The retained `online` of the connection the burst goes out on.
      await until(() => (onlines() === 1 ? true : undefined), 5_000, 'the retained `online`');
      const delivered = (records: readonly CommandRecord[]): string[] => {
        const keys = new Set(records.map((r) => r.key));
        return observer
          .on(`${PREFIX}/result/v1`)
          .filter((m) => keys.has(m.json().key as string))
          .map((m) => m.json().key as string);
      };

      // In one turn: 20 handed to mqtt.js, 130 held, 50 not held.
      const burst = site.forbiddenResults(MAX_HELD + DROPPED);
      const all = new Set(burst.map((r) => r.key));
      await until(
        () => (new Set(delivered(burst)).size === all.size ? true : undefined),
        15_000,
        `all ${burst.length} results, ${MAX_HELD} held and ${DROPPED} from the journal`,
      );
      // On the same connection: no `online` of another.
      expect(onlines()).toBe(1);
      expect(intake.connected()).toBe(true);
      // The held first, in order; then those from the journal, in settlement order. At least
      // once: the re-sending begins at the earliest not held, and may send again results settled
      // in the same millisecond before it.
      const keys = delivered(burst);
      expect(keys.slice(0, MAX_HELD)).toEqual(burst.slice(0, MAX_HELD).map((r) => r.key));
      const dropped = new Set(burst.slice(MAX_HELD).map((r) => r.key));
      expect(keys.slice(MAX_HELD).filter((k) => dropped.has(k))).toEqual([...dropped]);
      // As the journal has them.
      for (const record of burst) {
        const stored = site.stack.journal.get(record)?.response;
        for (const m of observer.on(`${PREFIX}/result/v1`)) {
          if (m.json().key === record.key) expect(m.text).toBe(stored);
        }
      }

      // A result settled now is published too, on the same connection.
      const after = site.forbiddenResults(1);
      await until(() => (delivered(after).length >= 1 ? true : undefined), 10_000, 'a new result');
      expect(onlines()).toBe(1);
    }, 60_000);
  },
);
