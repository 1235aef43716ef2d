import { describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { summarizeOpen } from '../../src/core/open-commands.js';

/**
 * The stuck rule (src/core/open-commands.ts) reads a command's history only where it can matter:
 * for a device with a command past its deadline plus confirm timeout. /readyz and /metrics run it
 * over every open command, so a journal with nothing overdue must cost no history read.
 */

const NOW = 1_000_000;

function open(key: string, device: string, deadline: number): CommandRecord {
  return {
    scope: 'plant',
    key,
    fingerprint: key,
    device,
    action: 'open',
    position: null,
    issuedAt: deadline - 30_000,
    issuedAtSource: 'issuer',
    ttlMs: 30_000,
    deadline,
    intake: 'https',
    acceptedAt: deadline - 30_000,
    state: 'dispatched',
    code: null,
    faultCode: null,
    seq: 1,
    attempts: 1,
  } as unknown as CommandRecord;
}

describe('summarizeOpen', () => {
  const timeouts = new Map([
    ['v1', 10_000],
    ['v2', 10_000],
  ]);

  it('reads no take-up while nothing is past its bound', () => {
    const asked: string[] = [];
    const summary = summarizeOpen(
      [open('a', 'v1', NOW), open('b', 'v2', NOW - 5_000)],
      NOW,
      timeouts,
      {
        takenUpAt: (r) => {
          asked.push(r.key);
          return null;
        },
      },
    );
    expect(summary.stuck).toEqual([]);
    expect(asked).toEqual([]);
  });

  it("counts an overdue command from its device's take-up window, asked for that device only", () => {
    const asked: string[] = [];
    const records = [open('late', 'v1', NOW - 60_000), open('fresh', 'v2', NOW)];
    const takenUp = (at: number | null) =>
      summarizeOpen(records, NOW, timeouts, {
        graceMs: 15_000,
        takenUpAt: (r) => {
          asked.push(r.key);
          return at;
        },
      });
    // Taken up 5 s ago: within the window (the longest of 10 s and the 15 s grace).
    expect(takenUp(NOW - 5_000).stuck).toEqual([]);
    expect(asked).toEqual(['late']);
    // Taken up 20 s ago: the window ended 5 s ago.
    expect(takenUp(NOW - 20_000).stuck.map((s) => [s.key, s.overdueMs])).toEqual([['late', 5_000]]);
    // Never taken up: from its deadline plus confirm timeout.
    expect(takenUp(null).stuck.map((s) => [s.key, s.overdueMs])).toEqual([['late', 50_000]]);
  });
});
