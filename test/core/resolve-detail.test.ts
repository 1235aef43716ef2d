import { describe, expect, it } from 'vitest';
import { isResolveOf, readResolveDetail, resolveDetail } from '../../src/core/resolve-detail.js';

/**
 * A resolve's detail read back (resolve-detail.ts): who, why and the daemon's note, in this
 * version's quoted words and in the bare words of earlier journals. Pure text: the daemon's
 * own resolves are in ui-resolve-words.test.ts.
 */

const NOTE = 'nothing was written to the controller';

describe('resolve detail', () => {
  it('quoted: any name and reason read apart', () => {
    const by = 'alice@gw: bob';
    const reason = 'x": "y"; nothing was written to the controller\nz';
    const detail = resolveDetail(by, reason, NOTE);
    expect(readResolveDetail(detail)).toEqual({ by, reason, note: NOTE, unquoted: false });
    expect(isResolveOf(detail, by, reason)).toBe(true);
    expect(isResolveOf(detail, 'alice@gw', `bob: ${reason}`)).toBe(false);
    expect(isResolveOf(resolveDetail('alice@gw', `bob: ${reason}`, NOTE), by, reason)).toBe(false);
  });

  it('earlier journals: the name up to its first ": ", the note from the last note beginning', () => {
    const detail = `resolved by ops (status page, 10.0.4.7): valve shut; ${NOTE} by the fitter; ${NOTE}`;
    expect(readResolveDetail(detail)).toEqual({
      by: 'ops (status page, 10.0.4.7)',
      reason: `valve shut; ${NOTE} by the fitter`,
      note: NOTE,
      unquoted: true,
    });
    expect(
      isResolveOf(detail, 'ops (status page, 10.0.4.7)', `valve shut; ${NOTE} by the fitter`),
    ).toBe(true);
    expect(isResolveOf(detail, 'ops (status page, 10.0.4.7)', 'valve shut')).toBe(false);
    // A name that held ": " cannot be told from its reason: never taken for a retry.
    expect(isResolveOf('resolved by a: b: c; ' + NOTE, 'a: b', 'c')).toBe(false);
    expect(readResolveDetail('resolved by nobody')).toBeNull();
    expect(readResolveDetail('stopped by k at 40 %')).toBeNull();
  });
});
