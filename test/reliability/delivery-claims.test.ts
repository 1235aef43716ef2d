import { describe, expect, it } from 'vitest';
import type { JournalEvent } from '../../src/core/journal.js';
import { repeatDetail } from '../../src/core/journal.js';
import { unclaimedDeliveries } from './delivery-claims.js';
import { claimsOver } from './site.js';

/**
 * The crash campaign's I5 check over MQTT (delivery-claims.ts), on histories of the shapes the
 * campaign meets. Crash campaign seed 0x44366efc run 39 failed the check as it was (MQTT claims
 * at least the publishes the broker took): a command settled at its life's recovery, its queued
 * redeliveries acknowledged as replays of a settlement on disk (no barrier of their own, since
 * f43e5bc) and the life SIGKILLed before their duplicate events committed — the command intact,
 * an audit line lost, as docs/mqtt-api.md allows. A command acknowledged before its claim
 * committed must still be found.
 */

const accepted = (at: number): JournalEvent => ({
  at,
  from: null,
  to: 'accepted',
  intake: 'mqtt',
  detail: 'accepted',
});
const duplicates = (count: number, first: number, last: number): JournalEvent => ({
  at: last,
  from: 'rejected',
  to: 'rejected',
  intake: 'mqtt',
  detail: repeatDetail('duplicate', count, first),
});
const rejected = (at: number): JournalEvent => ({
  at,
  from: 'accepted',
  to: 'rejected',
  intake: 'pipeline',
  detail: 'STALE_COMMAND: deadline passed; nothing was written',
});
const times = (from: number, n: number, every: number): number[] =>
  Array.from({ length: n }, (_, i) => from + i * every);
const settled = { state: 'rejected' as const, settledAt: 5_000 };

describe('the campaign’s I5 check over MQTT (delivery-claims.ts)', () => {
  it('every publish the broker took has its claim: nothing to say', () => {
    const history = [accepted(1_000), rejected(5_000), duplicates(14, 2_000, 9_000)];
    expect(
      unclaimedDeliveries({ sentAt: times(900, 15, 500), record: settled, history }, [6_000]),
    ).toBeNull();
  });

  it('replays of a settled command lost with a kill after its settlement are excused (seed 0x44366efc run 39)', () => {
    // 15 publishes, the acceptance and 13 duplicates journaled: one redelivery was acknowledged
    // as a replay of the settlement and its duplicate event lost with the kill at 6 000.
    const history = [accepted(1_000), rejected(5_000), duplicates(13, 2_000, 9_000)];
    const key = { sentAt: times(900, 15, 500), record: settled, history };
    expect(unclaimedDeliveries(key, [800, 6_000])).toBeNull();
    // The rule as it was (claims at least the publishes) found an I5 violation here.
    expect(claimsOver(history, 'mqtt')).toBe(14);
  });

  it('a delivery acknowledged before its claim committed is found: no kill after the settlement', () => {
    // The first publish was acknowledged and its claim lost with the kill at 1 000; a retry
    // claimed the command in the next life, which was not killed after its settlement.
    const history = [accepted(3_000), rejected(5_000), duplicates(2, 3_500, 4_000)];
    expect(
      unclaimedDeliveries(
        { sentAt: [900, 3_000, 3_400, 3_900], record: settled, history },
        [1_000],
      ),
    ).toEqual({ published: 4, claims: 3, excused: 0 });
  });

  it('no more are excused than were sent before that kill', () => {
    const history = [accepted(1_000), rejected(5_000)];
    expect(
      unclaimedDeliveries(
        { sentAt: [900, 4_000, 7_000, 8_000], record: settled, history },
        [6_000],
      ),
    ).toEqual({ published: 4, claims: 1, excused: 2 });
  });

  it('a command still open, or never journaled, has nothing excused', () => {
    const open = { state: 'accepted' as const, settledAt: null };
    expect(
      unclaimedDeliveries(
        { sentAt: [900, 1_400], record: open, history: [accepted(1_000)] },
        [6_000],
      ),
    ).toEqual({ published: 2, claims: 1, excused: 0 });
    expect(unclaimedDeliveries({ sentAt: [900], record: undefined, history: [] }, [6_000])).toEqual(
      { published: 1, claims: 0, excused: 0 },
    );
  });
});
