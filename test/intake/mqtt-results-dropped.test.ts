import { describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { mosquittoAvailable, TestClient, until, useMqttSite } from '../helpers/mqtt-site.js';

/**
 * Results not held through a broker outage (past the most held: 10,000 in the daemon, 150 here)
 * are published again from the journal once the gateway is connected again. They were left to
 * the next start of the daemon: a plant system waiting on the result topic heard nothing of
 * them for as long as the daemon ran (days, on a gateway).
 *
 * Real Mosquitto (stopped and started again, its persistence kept), the intake with the SQLite
 * journal of the stack, sluice-sim; the commands settle at their claim (FORBIDDEN_DEVICE), all
 * while the broker is away. Ground truth: what a subscriber with a persistent session receives
 * on the result topic, against the journal's stored results.
 */

const available = mosquittoAvailable();
const GATEWAY = 'gwdropped';
const PREFIX = `sluice/${GATEWAY}`;
// Above the re-sending's page (100 results, each page once the publisher has acknowledged all it
// held), as the daemon's 10,000 is.
const MAX_HELD = 150;
const DROPPED = 50;

describe.skipIf(!available)('MQTT intake: results not held through an outage', () => {
  const site = useMqttSite({}, { opcua: false });

  it('publishes them from the journal once connected again, in settlement order, without a restart', async () => {
    const intake = site.intake({
      gatewayId: GATEWAY,
      config: { protocolVersion: 5 },
      reconnect: { minMs: 100, maxMs: 400 },
      maxHeldPublications: MAX_HELD,
      journal: true,
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const observer = await TestClient.connect(site.broker.url, {
      clientId: 'dropped-observer',
      clean: false,
      properties: { sessionExpiryInterval: 600 },
    });
    site.cleanups.push(() => observer.end());
    await observer.subscribe(`${PREFIX}/result/#`);
    const delivered = (records: readonly CommandRecord[]): string[] => {
      const keys = new Set(records.map((r) => r.key));
      return observer.messages
        .filter((m) => m.topic === `${PREFIX}/result/v1` && keys.has(m.json().key as string))
        .map((m) => m.json().key as string);
    };

    await site.broker.stop();
    await until(() => (intake.connected() ? undefined : true), 5_000, 'the intake disconnected');
    const during = site.forbiddenResults(MAX_HELD + DROPPED);
    await site.stack.pipeline.durable();
    await site.broker.restart();
    const all = new Set(during.map((r) => r.key));
    await until(
      () => (new Set(delivered(during)).size === all.size ? true : undefined),
      15_000,
      `all ${during.length} results, ${MAX_HELD} held and ${DROPPED} from the journal`,
    );
    const keys = delivered(during);
    // The held first, in order; then those from the journal, in settlement order. At least once:
    // the journal's re-sending begins at the earliest given up, and may send again results
    // settled in the same millisecond before it.
    expect(keys.slice(0, MAX_HELD)).toEqual(during.slice(0, MAX_HELD).map((r) => r.key));
    const dropped = new Set(during.slice(MAX_HELD).map((r) => r.key));
    expect(keys.slice(MAX_HELD).filter((k) => dropped.has(k))).toEqual([...dropped]);
    // As the journal has them.
    for (const record of during) {
      const stored = site.stack.journal.get(record)?.response;
      const texts = observer.messages
        .filter((m) => m.topic === `${PREFIX}/result/v1` && m.json().key === record.key)
        .map((m) => m.text);
      expect(texts.length).toBeGreaterThan(0);
      for (const text of texts) expect(text).toBe(stored);
    }

    // Connected: a result settled now is published (by the re-sending if it still runs, in
    // the same millisecond as its last page perhaps as well: at least once).
    const after = site.forbiddenResults(1);
    await until(() => (delivered(after).length >= 1 ? true : undefined), 10_000, 'a new result');
    expect(intake.connected()).toBe(true);
  }, 60_000);
});
