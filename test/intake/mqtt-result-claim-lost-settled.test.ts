import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { commitFaults } from '../helpers/commit-faults.js';
import { until, useMqttSite, mosquittoAvailable, type Received } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A command settled in the batch of its own claim (refused at the door: rejected in the claim's
 * commit), the batch lost at its COMMIT, is never announced: not its requester's, not the
 * result topic's. Its settlement's barrier failed, so it is asked for again a second later
 * (Outcomes.announceOnceSynced) and announced if the journal still holds it. That was read by
 * key: the key claimed again meanwhile for another command (another payload), settled alike
 * (rejected, at the same wall-clock millisecond), was taken for the lost settlement, and the
 * lost command's result was published on the result topic after the new command's, as the
 * key's last word. It is read by claim now (key and fingerprint).
 *
 * Real Mosquitto, MQTT intake, pipeline, SQLite journal and sluice-sim. Two doubles, for what
 * no part here does on demand: the failure of exactly the COMMIT of the batch holding the lost
 * claim (test/helpers/commit-faults.ts), and the gateway's wall clock held still across both
 * claims (a step back, as NTP makes, or two claims in one millisecond) so that both settle at
 * the same millisecond. Ground truth: what a real MQTT client subscribed to the result topic
 * received, and the journal.
 */

const available = mosquittoAvailable();

/** The pipeline's wall clock, held at `frozen` while it is set. */
let frozen: number | null = null;
const clock: Clock = { ...systemClock, now: () => frozen ?? systemClock.now() };
const recorded = recordingLogger();

/** The log line of a settlement whose re-read found it gone (outcomes.ts). */
const FOUND_GONE = 'the settlement was lost with its batch: not published; the command goes on';

describe.skipIf(!available)('MQTT intake: a command settled in the batch of its lost claim', () => {
  const site = useMqttSite({}, { opcua: false, clock, logger: recorded.logger });

  it('is not published as the command claimed under its key since', async () => {
    const gatewayId = 'gwsettledlost';
    const prefix = `sluice/${gatewayId}`;
    const intake = site.intake({
      gatewayId,
      config: { protocolVersion: 5, clientId: `sluice-${gatewayId}` },
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const { plant, observer } = await site.plantSide(prefix);
    const replies = `replies/${randomUUID()}`;
    await observer.subscribe(replies);
    const key = randomUUID();
    const onReplies =
      (correlation: string) =>
      (m: Received): boolean =>
        m.topic === replies && m.packet.properties?.correlationData?.toString() === correlation;
    const results = (): Received[] =>
      observer.messages.filter((m) => m.topic === `${prefix}/result/v1` && m.json().key === key);

    frozen = systemClock.now();
    // Stale (issued ten minutes ago, 60 s to live): each is rejected in its claim's commit.
    const issuedAt = new Date(frozen - 600_000).toISOString();
    const lost = { key, action: 'open', ttlMs: 60_000, issuedAt };
    const since = { key, action: 'close', ttlMs: 60_000, issuedAt };

    const faults = commitFaults(site.stack.journal);
    const claim = site.stack.journal.claim.bind(site.stack.journal);
    let armed = true;
    site.stack.journal.claim = (...args) => {
      const outcome = claim(...args);
      if (armed && args[0].key === key && outcome.kind === 'new') {
        armed = false;
        faults.failNext();
      }
      return outcome;
    };
    try {
      await plant.publish(`${prefix}/cmd/v1`, lost, {
        qos: 0,
        properties: { responseTopic: replies, correlationData: Buffer.from('lost') },
      });
      const refused = await observer.waitFor(onReplies('lost'), 10_000, 'the lost claim answered');
      expect(refused.json()).toMatchObject({ key, code: 'JOURNAL_UNAVAILABLE' });
    } finally {
      site.stack.journal.claim = claim;
    }
    expect(faults.failed).toBe(1);
    expect(site.stack.journal.findByKey(key)).toEqual([]);
    // The refusal is published on the result topic too: waited for, so that the wait below is
    // for the new claim's result, not this copy arriving late.
    await until(() => results().length > 0 || undefined, 10_000, 'the refusal on the result topic');

    // Claimed again at once, for another command, settled as the lost one was, at its
    // millisecond: before the lost settlement is asked for again.
    await plant.publish(`${prefix}/cmd/v1`, since);
    await until(() => results().length > 1 || undefined, 10_000, 'the result of the new claim');
    frozen = null;
    const [settled] = site.stack.journal.findByKey(key);
    expect(settled).toMatchObject({ action: 'close', state: 'rejected', code: 'STALE_COMMAND' });

    // The lost settlement asked for again: found gone (fixed), or published (the defect).
    await until(
      () =>
        recorded.lines.some((l) => l.msg === FOUND_GONE) ||
        results().some((m) => m.json().action === 'open') ||
        undefined,
      10_000,
      'the lost settlement asked for again',
    );
    // A replay published after it: whatever the lost settlement was published as has come.
    await plant.publish(`${prefix}/cmd/v1`, since, {
      properties: { responseTopic: replies, correlationData: Buffer.from('retry') },
    });
    const replay = await observer.waitFor(onReplies('retry'), 10_000, 'the replay');
    expect(replay.json()).toMatchObject({ key, action: 'close', replayed: true });

    // The lost claim's refusal, the new command's result, its replay: nothing of the lost one's.
    expect(results().map((m) => [m.json().code, m.json().action, m.json().replayed])).toEqual([
      ['JOURNAL_UNAVAILABLE', undefined, undefined],
      ['STALE_COMMAND', 'close', false],
      ['STALE_COMMAND', 'close', true],
    ]);
    expect(observer.messages.filter(onReplies('lost')).map((m) => m.json().code)).toEqual([
      'JOURNAL_UNAVAILABLE',
    ]);
  }, 60_000);
});
