import { randomUUID } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { commitFaults } from '../helpers/commit-faults.js';
import {
  mosquittoAvailable,
  timed,
  until,
  useMqttSite,
  type Received,
} from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { holdThreadPool } from '../helpers/thread-pool.js';

/**
 * The IDEMPOTENCY_KEY_REUSED answer names the command that holds the key ("… was used for a
 * different command (open on v1)"): like any answer about the journal, it is published only
 * once that command's claim is on disk (HTTPS answers 422 after the same barrier). It was
 * published at once: with the claim still in the batch a stalled fsync kept open, and kept
 * after the batch's COMMIT failed and took the claim with it, so that the requester was told
 * its key named a command the journal never held, and then saw the key run its own command.
 *
 * Real Mosquitto, intake, SQLite journal and sluice-sim. Doubles, for what no real part here
 * does on demand: libuv's thread pool held (a stalled flush: the next batch stays open) and
 * one failed COMMIT (test/helpers/commit-faults.ts: an I/O error that clears at once).
 */

const available = mosquittoAvailable();

describe.skipIf(!available)('MQTT intake: the answer to a reused key', () => {
  const site = useMqttSite({}, { opcua: false });

  /**
   * The scenario: a command on v2 stalls its fsync (the thread pool held), so the next batch
   * stays open; the key's command (QoS 0: never redelivered) and the same key for another
   * command (at `reuseQos`) are claimed in it; its COMMIT fails, taking the key's claim along.
   * Each answer about the key is recorded with whether the journal on disk (another connection,
   * as sluicectl reads it) held the key when it reached the subscriber.
   */
  async function lostClaim(gatewayId: string, reuseQos: 0 | 1) {
    const prefix = `sluice/${gatewayId}`;
    const { logger, lines } = recordingLogger();
    const intake = site.intake({
      gatewayId,
      config: { protocolVersion: 5, clientId: `sluice-${gatewayId}` },
      reconnect: { minMs: 100, maxMs: 400 },
      logger,
    });
    site.cleanups.push(() => intake.stop());
    await site.connect(intake);
    const { plant, observer, writes } = await site.plantSide(prefix);
    const key = randomUUID();
    const journalHolds = (): boolean => {
      const reader = SqliteJournal.open({ path: site.stack.journalPath, readonly: true });
      try {
        return reader.get({ scope: 'plant', key }) !== undefined;
      } finally {
        reader.close();
      }
    };
    const heldWhenAnswered = new Map<Received, boolean>();
    observer.client.on('message', () => {
      for (const m of observer.messages) {
        if (!heldWhenAnswered.has(m) && m.json().key === key)
          heldWhenAnswered.set(m, journalHolds());
      }
    });
    const ofKey = (m: Received): boolean => m.json().key === key;
    const before = writes();
    // The second command moves the valve (the first, lost, would not have).
    const second = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
    const first = second === 'open' ? 'close' : 'open';

    // The batch that takes the key's claim fails at its COMMIT, as an I/O error would.
    const faults = commitFaults(site.stack.journal);
    const failed = faults.failed;
    const claim = site.stack.journal.claim.bind(site.stack.journal);
    site.stack.journal.claim = (...args) => {
      const outcome = claim(...args);
      if (args[0].key === key && outcome.kind === 'new' && args[0].action === first) {
        faults.failNext();
      }
      return outcome;
    };
    const pool = holdThreadPool();
    try {
      await plant.publish(
        `${prefix}/cmd/v2`,
        timed({ key: randomUUID(), action: 'open', ttlMs: 60_000 }),
      );
      await plant.publish(`${prefix}/cmd/v1`, timed({ key, action: first, ttlMs: 60_000 }), {
        qos: 0,
      });
      await plant.publish(`${prefix}/cmd/v1`, timed({ key, action: second, ttlMs: 60_000 }), {
        qos: reuseQos,
      });
      await until(
        () =>
          lines.some((l) => l.key === key && String(l.msg).startsWith('idempotency key reused'))
            ? true
            : undefined,
        10_000,
        'the reuse handled',
      );
      // Time for an answer published at once to reach the subscriber before the flush returns.
      await new Promise((resolve) => setTimeout(resolve, 300));
    } finally {
      await pool.release();
      site.stack.journal.claim = claim;
    }
    // The COMMIT that fails is the batch's holding the key's claim: at the first barrier after
    // it on a quiet machine (the three messages claimed in one batch, before any fdatasync ran);
    // on a loaded one the command on v2 may have two fdatasyncs held by then (its claim's and its
    // dispatch's), and that batch stays open until one of them returns, after the release.
    await until(
      () => (faults.failed > failed ? true : undefined),
      10_000,
      "the batch holding the key's claim lost at its COMMIT",
    );
    expect(faults.failed).toBe(failed + 1);
    return { key, first, second, plant, observer, writes, before, ofKey, heldWhenAnswered };
  }

  it('is published once the command holding the key is on disk, never for a claim its batch lost', async () => {
    const { key, first, second, plant, observer, writes, before, ofKey, heldWhenAnswered } =
      await lostClaim('gwreuse1', 1);
    const prefix = 'sluice/gwreuse1';
    // The claim went with its batch; the QoS 0 command is answered so; the second message,
    // never acknowledged, comes again and is the key's command now: written once.
    const result = await observer.waitFor(
      (m) => ofKey(m) && m.json().state === 'confirmed',
      15_000,
      'the result of the second command',
    );
    expect(result.json()).toMatchObject({ action: second, replayed: false });
    expect(writes()).toBe(before + 1);
    expect(site.stack.journal.findByKey(key).map((r) => [r.action, r.state])).toEqual([
      [second, 'confirmed'],
    ]);
    // Published in order on one connection: every answer about the key before the result
    // has come. None told the requester that the key named the command the journal lost.
    const answers = observer.messages.filter(ofKey);
    expect(answers.map((m) => m.json().code)).not.toContain('IDEMPOTENCY_KEY_REUSED');
    expect(answers.map((m) => m.json().code)).toContain('JOURNAL_UNAVAILABLE');
    for (const m of answers.filter((a) => a.json().code !== 'JOURNAL_UNAVAILABLE')) {
      expect(heldWhenAnswered.get(m), m.text).toBe(true);
    }

    // The key now names the second command: the first, sent again, is a reuse and told so.
    await plant.publish(`${prefix}/cmd/v1`, timed({ key, action: first, ttlMs: 60_000 }));
    const reused = await observer.waitFor(
      (m) => ofKey(m) && m.json().code === 'IDEMPOTENCY_KEY_REUSED',
      10_000,
      'the reuse answer',
    );
    expect(reused.json().detail).toContain(`(${second} on v1)`);
    expect(heldWhenAnswered.get(reused)).toBe(true);
    expect(writes()).toBe(before + 1);
  }, 60_000);

  it('sent at QoS 0 (never redelivered), is answered JOURNAL_UNAVAILABLE when that claim was lost', async () => {
    const { key, observer, writes, before, ofKey } = await lostClaim('gwreuse0', 0);
    // Both messages are answered so (neither comes again); nothing is journaled nor written.
    await until(
      () =>
        observer.messages.filter((m) => ofKey(m) && m.json().code === 'JOURNAL_UNAVAILABLE')
          .length >= 2
          ? true
          : undefined,
      10_000,
      'both answered JOURNAL_UNAVAILABLE',
    );
    const answers = observer.messages.filter(ofKey).map((m) => m.json());
    expect(answers.map((a) => a.code)).toEqual(['JOURNAL_UNAVAILABLE', 'JOURNAL_UNAVAILABLE']);
    expect(answers.map((a) => a.detail)).toContain(
      'the journal could not make the command holding this key durable; nothing was written for this message: publish it again with the same key, at QoS 1, to learn what the key names',
    );
    expect(site.stack.journal.findByKey(key)).toEqual([]);
    expect(writes()).toBe(before);
  }, 60_000);
});
