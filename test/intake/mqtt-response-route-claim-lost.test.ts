import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { commitFaults } from '../helpers/commit-faults.js';
import { mosquittoAvailable, timed, useMqttSite, type Received } from '../helpers/mqtt-site.js';

/**
 * An MQTT 5 requester whose command's claim was lost with its batch (its COMMIT failed) is
 * never sent, on its Response Topic, the result of another command claimed under the key since.
 * The intake registers a message's Response Topic before the claim's barrier, and held it by key:
 * when the key was claimed again for another command (a reuse sent at QoS 1 and redelivered, a
 * client's own reuse), that command's result went to the lost command's Response Topic with the
 * lost command's correlation data — an open's requester told "close confirmed". Routes are held
 * by claim now (key and fingerprint).
 *
 * Real Mosquitto, MQTT intake, pipeline, SQLite journal and sluice-sim. One double, for what no
 * filesystem here times on demand: the failure of exactly the COMMIT of the batch holding the
 * lost claim (test/helpers/commit-faults.ts: an I/O error that clears at once). Ground truth:
 * what a real MQTT client subscribed to the Response Topic received, the journal, and the
 * simulator's count of writes.
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: the Response Topic of a lost claim', () => {
  const site = useMqttSite({}, { opcua: false });

  it('is not sent the result of the command claimed under its key since', async () => {
    const gatewayId = 'gwroutelost';
    const prefix = `sluice/${gatewayId}`;
    const intake = site.intake({
      gatewayId,
      config: { protocolVersion: 5, clientId: `sluice-${gatewayId}` },
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const { plant, observer, writes } = await site.plantSide(prefix);
    const replies = `replies/${randomUUID()}`;
    await observer.subscribe(replies);
    const key = randomUUID();
    const before = writes();
    // The replacement does not move the valve: whatever v1 receives is the lost command's.
    const lost = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
    const other = lost === 'open' ? 'close' : 'open';
    const onReplies =
      (correlation: string) =>
      (m: Received): boolean =>
        m.topic === replies && m.packet.properties?.correlationData?.toString() === correlation;

    // The lost command's claim: its batch fails at its COMMIT. QoS 0 (never redelivered): its
    // requester is answered JOURNAL_UNAVAILABLE on its Response Topic.
    const faults = commitFaults(site.stack.journal);
    const failed = faults.failed;
    const claim = site.stack.journal.claim.bind(site.stack.journal);
    site.stack.journal.claim = (...args) => {
      const outcome = claim(...args);
      if (args[0].key === key && outcome.kind === 'new' && args[0].action === lost) {
        faults.failNext();
      }
      return outcome;
    };
    try {
      await plant.publish(`${prefix}/cmd/v1`, timed({ key, action: lost, ttlMs: 60_000 }), {
        qos: 0,
        properties: { responseTopic: replies, correlationData: Buffer.from('lost') },
      });
      const refused = await observer.waitFor(onReplies('lost'), 10_000, 'the lost claim answered');
      expect(refused.json()).toMatchObject({ key, code: 'JOURNAL_UNAVAILABLE' });
    } finally {
      site.stack.journal.claim = claim;
    }
    expect(faults.failed).toBe(failed + 1);
    expect(site.stack.journal.findByKey(key)).toEqual([]);

    // The key again, for another command, from a requester without a Response Topic.
    const command = timed({ key, action: other, ttlMs: 60_000 });
    await plant.publish(`${prefix}/cmd/v1`, command);
    const result = await observer.waitFor(
      (m) =>
        m.topic === `${prefix}/result/v1` && m.json().key === key && m.json().state === 'confirmed',
      15_000,
      'the result of the command claimed since',
    );
    expect(result.json()).toMatchObject({ action: other, replayed: false });
    // A retry of that command, answered on the same Response Topic: published after the
    // command's result went to every route it had, so whatever the lost requester was sent of it
    // has come by the time this replay does.
    await plant.publish(`${prefix}/cmd/v1`, command, {
      properties: { responseTopic: replies, correlationData: Buffer.from('retry') },
    });
    const replay = await observer.waitFor(onReplies('retry'), 10_000, 'the replay');
    expect(replay.json()).toMatchObject({ key, action: other, replayed: true });
    // The lost requester was answered once, with its own refusal.
    const toLost = observer.messages.filter(onReplies('lost')).map((m) => m.json());
    expect(toLost.map((a) => a.code ?? a.state)).toEqual(['JOURNAL_UNAVAILABLE']);
    expect(writes()).toBe(before);
  }, 60_000);
});
