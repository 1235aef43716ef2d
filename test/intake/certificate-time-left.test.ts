import { describe, expect, it } from 'vitest';
import { certificateVerdict } from '../../src/intake/https-certificate.js';

/**
 * How long the HTTPS certificate has left, as /readyz, `sluicectl health` and the status page
 * say it once it is within 30 days of its end: counted in whole days, one with 20 hours left
 * said "in 0 days" (read as already over, or as nothing to be done today) and one with a day
 * and a half "in 1 days". The verdict is a function of the certificate's dates and the time.
 */

const NOW = Date.parse('2026-12-06T17:00:00.000Z');
const HOUR = 3_600_000;

function left(ms: number): string {
  const verdict = certificateVerdict(
    { name: 'gw-7.plant', validFrom: NOW - 300 * 24 * HOUR, validTo: NOW + ms },
    NOW,
  );
  expect(verdict.state).toBe('expiring');
  expect(verdict.ok).toBe(true);
  const found = /\(in ([^)]*)\): replace it before then$/.exec(verdict.detail)?.[1];
  if (found === undefined) throw new Error(`no time left in: ${verdict.detail}`);
  return found;
}

describe('the time an HTTPS certificate has left', () => {
  it('is said in the largest whole unit, singular for one', () => {
    expect(left(9 * 24 * HOUR + 5 * HOUR)).toBe('9 days');
    expect(left(36 * HOUR)).toBe('1 day');
    expect(left(20 * HOUR + 59 * 60_000)).toBe('20 hours');
    expect(left(HOUR + 1)).toBe('1 hour');
    expect(left(45 * 60_000 + 30_000)).toBe('45 minutes');
    expect(left(20_000)).toBe('1 minute');
  });
});
