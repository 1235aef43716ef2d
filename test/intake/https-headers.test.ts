import { describe, expect, it } from 'vitest';
import { InvalidKeyError } from '../../src/core/errors.js';
import { readIdempotencyKey } from '../../src/intake/idempotency-key.js';
import { parsePrefer, planWait } from '../../src/intake/prefer.js';
import { RateLimiter } from '../../src/intake/rate-limit.js';

/** The HTTPS intake's header rules and rate limiter, one case at a time (no sockets). */

const policy = { defaultWaitS: 10, maxWaitS: 60 };

describe('Prefer (RFC 7240)', () => {
  it('reads wait and respond-async, case-insensitively, across repeated headers', () => {
    expect(parsePrefer(undefined)).toEqual({ wait: null, respondAsync: false });
    expect(parsePrefer('wait=5')).toEqual({ wait: 5, respondAsync: false });
    expect(parsePrefer('Respond-Async')).toEqual({ wait: null, respondAsync: true });
    expect(parsePrefer('respond-async, wait=3')).toEqual({ wait: 3, respondAsync: true });
    expect(parsePrefer(['handling=lenient', 'WAIT="7"; x=y'])).toEqual({
      wait: 7,
      respondAsync: false,
    });
  });

  it('counts only the first wait and ignores a malformed one', () => {
    expect(parsePrefer('wait=2, wait=9').wait).toBe(2);
    expect(parsePrefer('wait=-1').wait).toBeNull();
    expect(parsePrefer('wait=1.5').wait).toBeNull();
    expect(parsePrefer('wait=abc, wait=4').wait).toBeNull();
  });

  it('plans the wait: default, capped, async, async after a wait', () => {
    expect(planWait(parsePrefer(undefined), policy)).toEqual({ waitMs: 10_000, applied: null });
    expect(planWait(parsePrefer('wait=3'), policy)).toEqual({ waitMs: 3_000, applied: 'wait=3' });
    expect(planWait(parsePrefer('wait=600'), policy)).toEqual({
      waitMs: 60_000,
      applied: 'wait=60',
    });
    expect(planWait(parsePrefer('respond-async'), policy)).toEqual({
      waitMs: 0,
      applied: 'respond-async',
    });
    expect(planWait(parsePrefer('respond-async, wait=2'), policy)).toEqual({
      waitMs: 2_000,
      applied: 'respond-async, wait=2',
    });
    // delta-seconds has no length limit: a longer wait than can be kept is the longest allowed.
    for (const huge of ['wait=9999999999', `wait=${'9'.repeat(400)}`]) {
      expect(planWait(parsePrefer(huge), policy)).toEqual({ waitMs: 60_000, applied: 'wait=60' });
    }
    expect(planWait(parsePrefer('unknown'), { defaultWaitS: 90, maxWaitS: 30 }).waitMs).toBe(
      30_000,
    );
  });
});

describe('Idempotency-Key', () => {
  it('takes a bare or a quoted (Structured Field string) key as the same key', () => {
    expect(readIdempotencyKey('abc-123')).toBe('abc-123');
    expect(readIdempotencyKey('"abc-123"')).toBe('abc-123');
    expect(readIdempotencyKey('"a\\\\c"')).toBe('a\\c');
    // Node's headersDistinct: one header is an array of one.
    expect(readIdempotencyKey(['abc-123'])).toBe('abc-123');
  });

  it('refuses a missing, empty, repeated or malformed key', () => {
    for (const bad of [
      undefined,
      '',
      '""',
      'a b',
      '"a\\nb"',
      '"a"b"',
      // A quote is never a key character: over MQTT `"k"` would be another key than `k`.
      'a"b',
      '"a\\"b"',
      '"',
      '"abc',
      'é',
      ['a', 'b'],
      ['a', ''],
    ]) {
      expect(() => readIdempotencyKey(bad)).toThrow(InvalidKeyError);
    }
  });
});

describe('RateLimiter (token bucket)', () => {
  it('allows a burst, then the sustained rate, per identity', () => {
    let now = 0;
    const limiter = new RateLimiter({ perSecond: 2, burst: 3 }, () => now);
    expect([1, 2, 3].map(() => limiter.take('a').allowed)).toEqual([true, true, true]);
    expect(limiter.take('a')).toEqual({ allowed: false, retryAfterS: 1 });
    expect(limiter.take('b').allowed).toBe(true);
    now += 500;
    expect(limiter.take('a').allowed).toBe(true);
    expect(limiter.take('a').allowed).toBe(false);
    now += 10_000;
    expect([1, 2, 3, 4].map(() => limiter.take('a').allowed)).toEqual([true, true, true, false]);
  });

  it('says how long to wait in whole seconds, at least one', () => {
    let now = 0;
    const limiter = new RateLimiter({ perSecond: 0.1, burst: 1 }, () => now);
    expect(limiter.take('a').allowed).toBe(true);
    expect(limiter.take('a')).toEqual({ allowed: false, retryAfterS: 10 });
    now += 9_500;
    expect(limiter.take('a')).toEqual({ allowed: false, retryAfterS: 1 });
  });

  it('survives a clock stepping backwards', () => {
    let now = 10_000;
    const limiter = new RateLimiter({ perSecond: 1, burst: 1 }, () => now);
    expect(limiter.take('a').allowed).toBe(true);
    now -= 5_000;
    expect(limiter.take('a').allowed).toBe(false);
    now += 1_000;
    expect(limiter.take('a').allowed).toBe(true);
  });
});
