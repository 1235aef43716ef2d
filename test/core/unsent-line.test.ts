import { describe, expect, it } from 'vitest';
import type { JournalEvent } from '../../src/core/journal.js';
import { ADMIN, PIPELINE, RECOVERY } from '../../src/core/lane.js';
import { latestWriteUnsent, unsentLine } from '../../src/core/redispatch.js';

/**
 * The history line that says a write was withdrawn before it was sent is proof that the
 * command's latest write never left the daemon (recovery writes it then, once: execution.ts).
 * Only the daemon's own line counts, only for the command's sequence number, and only while no
 * write was journaled after it: a wrong "yes" here is a second write (I1).
 */

const T = 1_800_000_000_000;
const dispatched: JournalEvent = {
  at: T,
  from: 'accepted',
  to: 'dispatched',
  intake: PIPELINE,
  detail: 'seq 7',
};
const unsent = (seq: number, intake = RECOVERY): JournalEvent => ({
  at: T + 1,
  from: 'dispatched',
  to: 'dispatched',
  intake,
  detail: unsentLine(seq, 'as the daemon stopped', 'mb: write 10+3: not sent: withdrawn'),
});
const redispatched: JournalEvent = {
  at: T + 2,
  from: 'dispatched',
  to: 'dispatched',
  intake: PIPELINE,
  detail: 'redispatch: the first write was not applied',
};

describe('latestWriteUnsent', () => {
  it("takes the daemon's line for the command's sequence number", () => {
    expect(latestWriteUnsent([dispatched, unsent(7)], 7)).toBe(true);
    // The line journaled before this rule existed reads the same.
    expect(
      latestWriteUnsent(
        [
          dispatched,
          {
            ...unsent(7),
            detail:
              'the write (sequence number 7) was not sent: withdrawn as the daemon stopped (x); the command is settled by reading the controller',
          },
        ],
        7,
      ),
    ).toBe(true);
  });

  it('not after a dispatch journaled later: that write may have gone out', () => {
    expect(latestWriteUnsent([dispatched, unsent(7), redispatched], 7)).toBe(false);
    expect(latestWriteUnsent([dispatched, unsent(7), redispatched, unsent(7)], 7)).toBe(true);
  });

  it('not for another sequence number, another hand, or without the line', () => {
    expect(latestWriteUnsent([dispatched, unsent(17)], 7)).toBe(false);
    expect(latestWriteUnsent([dispatched, unsent(7, ADMIN)], 7)).toBe(false);
    expect(latestWriteUnsent([dispatched], 7)).toBe(false);
    expect(latestWriteUnsent([], 7)).toBe(false);
  });
});
