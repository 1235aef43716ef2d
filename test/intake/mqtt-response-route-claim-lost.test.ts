import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { commitFaults } from '../helpers/commit-faults.js';
import {
  mosquittoAvailable,
  timed,
  useMqttSite,
  type MqttSite,
  type Received,
  type TestClient,
} from '../helpers/mqtt-site.js';

/**
 * An MQTT 5 requester whose command's claim was lost with its batch (its COMMIT failed) is
 * sent nothing further on its Response Topic after its refusal (JOURNAL_UNAVAILABLE, QoS 0):
 * - not the result of another command claimed under the key since. The intake registers a
 *   message's Response Topic before the claim's barrier, and held it by key: when the key was
 *   claimed again for another command (a reuse sent at QoS 1 and redelivered, a client's own
 *   reuse), that command's result went to the lost command's Response Topic with the lost
 *   command's correlation data — an open's requester told "close confirmed". Routes are held
 *   by claim now (key and fingerprint).
 * - nor the result of the same command claimed again under the key by another message (the
 *   same payload, no Response Topic). Held by claim, the lost message's route was that
 *   command's too, and was sent its result with the lost message's correlation data; it stayed
 *   in the bounded map until evicted. The route of a claim found lost at its barrier is
 *   dropped now.
 *
 * Real Mosquitto, MQTT intake, pipeline, SQLite journal and sluice-sim. One double, for what no
 * filesystem here times on demand: the failure of exactly the COMMIT of the batch holding the
 * lost claim (test/helpers/commit-faults.ts: an I/O error that clears at once). Ground truth:
 * what a real MQTT client subscribed to the Response Topic received, the journal, and the
 * simulator's count of writes.
 */

const available = mosquittoAvailable();

interface LostClaim {
  readonly key: string;
  readonly prefix: string;
  readonly plant: TestClient;
  readonly observer: TestClient;
  readonly writes: () => number;
  readonly writesBefore: number;
  readonly replies: string;
  /** v1's action that does not move it (CLOSED: close), and the one that would. */
  readonly still: 'open' | 'close';
  readonly moving: 'open' | 'close';
  /** Whether a message came on the Response Topic with this correlation data. */
  readonly onReplies: (correlation: string) => (m: Received) => boolean;
  /** The lost command's message. */
  readonly command: Record<string, unknown>;
}

/**
 * An intake on `gatewayId`; `command` (under a new key, on v1) published at QoS 0 with Response
 * Topic `replies` and correlation data "lost", its claim's batch failing at its COMMIT: its
 * requester answered JOURNAL_UNAVAILABLE there, and the journal holds nothing of the key.
 */
async function lostClaim(
  site: MqttSite,
  gatewayId: string,
  command: (v1: Pick<LostClaim, 'key' | 'still' | 'moving'>) => Record<string, unknown>,
): Promise<LostClaim> {
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
  const writesBefore = writes();
  const still = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'close' : 'open';
  const moving = still === 'open' ? 'close' : 'open';
  const onReplies =
    (correlation: string) =>
    (m: Received): boolean =>
      m.topic === replies && m.packet.properties?.correlationData?.toString() === correlation;
  const lost = command({ key, still, moving });

  // The lost command's claim: its batch fails at its COMMIT. QoS 0 (never redelivered): its
  // requester is answered JOURNAL_UNAVAILABLE on its Response Topic.
  const faults = commitFaults(site.stack.journal);
  const failed = faults.failed;
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
  expect(faults.failed).toBe(failed + 1);
  expect(site.stack.journal.findByKey(key)).toEqual([]);
  return {
    key,
    prefix,
    plant,
    observer,
    writes,
    writesBefore,
    replies,
    still,
    moving,
    onReplies,
    command: lost,
  };
}

/**
 * `command` (claimed under the lost claim's key since, from a requester without a Response
 * Topic) settles, and a retry of it is answered on the lost claim's Response Topic with other
 * correlation data: published after the command's result went to every route it had, so
 * whatever the lost requester was sent of it has come by the time this replay does. Returns
 * what the lost requester received there, in order.
 */
async function answeredSince(
  lost: LostClaim,
  command: Record<string, unknown>,
  action: string,
): Promise<unknown[]> {
  const { key, prefix, plant, observer, replies, onReplies } = lost;
  await plant.publish(`${prefix}/cmd/v1`, command);
  const result = await observer.waitFor(
    (m) =>
      m.topic === `${prefix}/result/v1` && m.json().key === key && m.json().state === 'confirmed',
    15_000,
    'the result of the command claimed since',
  );
  expect(result.json()).toMatchObject({ action, replayed: false });
  await plant.publish(`${prefix}/cmd/v1`, command, {
    properties: { responseTopic: replies, correlationData: Buffer.from('retry') },
  });
  const replay = await observer.waitFor(onReplies('retry'), 10_000, 'the replay');
  expect(replay.json()).toMatchObject({ key, action, replayed: true });
  return observer.messages.filter(onReplies('lost')).map((m) => m.json().code ?? m.json().state);
}

describe.skipIf(!available)('MQTT intake: the Response Topic of a lost claim', () => {
  const site = useMqttSite({}, { opcua: false });

  it('is not sent the result of the command claimed under its key since', async () => {
    // The replacement does not move the valve: whatever v1 receives is the lost command's.
    const lost = await lostClaim(site, 'gwroutelost', ({ key, moving }) =>
      timed({ key, action: moving, ttlMs: 60_000 }),
    );
    const other = timed({ key: lost.key, action: lost.still, ttlMs: 60_000 });
    // The lost requester was answered once, with its own refusal.
    expect(await answeredSince(lost, other, lost.still)).toEqual(['JOURNAL_UNAVAILABLE']);
    expect(lost.writes()).toBe(lost.writesBefore);
  }, 60_000);

  it('is not sent the result of the same command claimed again by another message', async () => {
    // The same payload (a no-op on v1): the same claim, which another requester makes again.
    const lost = await lostClaim(site, 'gwroutesame', ({ key, still }) =>
      timed({ key, action: still, ttlMs: 60_000 }),
    );
    expect(await answeredSince(lost, lost.command, lost.still)).toEqual(['JOURNAL_UNAVAILABLE']);
    expect(lost.writes()).toBe(lost.writesBefore);
  }, 60_000);
});
