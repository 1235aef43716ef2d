import { describe, expect, it } from 'vitest';
import { clockNote } from '../../src/core/clock-policy.js';
import type { ClockPolicy, Lane } from '../../src/core/lane.js';
import type { SkewEstimate } from '../../src/core/skew.js';

/**
 * The clock line journaled with every dispatch (`sluicectl show`, the history): the controller
 * skew is signed after rounding, so a skew within half a millisecond of zero reads "+0 ms"
 * whichever side it fell on.
 */
const policy: ClockPolicy = { onUnsynced: 'warn', maxControllerSkewMs: () => null, gateway: null };
const skew = (offsetMs: number): SkewEstimate => ({
  offsetMs,
  monoOffsetMs: 0,
  uncertaintyMs: 0.4,
  measuredAt: 0,
  measuredMono: 0,
  epoch: 1,
  stamp: { monoOffsetMs: 0, uncertaintyMs: 0.9 },
});
// clockNote reads only the lane's skew.
const lane = (s: SkewEstimate | null): Lane => ({ skew: s }) as unknown as Lane;

describe('clockNote', () => {
  it('signs the rounded controller skew', () => {
    expect(clockNote(policy, lane(skew(-0.3)))).toBe(
      'gateway clock not checked; controller skew +0 ms ± 1 ms',
    );
    expect(clockNote(policy, lane(skew(0.4)))).toMatch(/controller skew \+0 ms/);
    expect(clockNote(policy, lane(skew(-2.6)))).toMatch(/controller skew -3 ms/);
    expect(clockNote(policy, lane(skew(3.2)))).toMatch(/controller skew \+3 ms/);
    expect(clockNote(policy, lane(null))).toBe(
      'gateway clock not checked; controller skew unknown',
    );
  });
});
