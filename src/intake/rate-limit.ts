/**
 * Per-identity token buckets for the HTTPS intake: a client may burst up to `burst` requests,
 * then `perSecond` sustained. One bucket per identity (identities come from the configuration,
 * so the map is bounded). Time comes from an injected clock so tests need no sleeps: a
 * monotonic one (`Clock.elapsed()`), since the refill is a duration (SPEC §6).
 */

export interface RateLimitPolicy {
  readonly perSecond: number;
  readonly burst: number;
}

export type RateDecision =
  | { readonly allowed: true }
  | {
      readonly allowed: false;
      /** Whole seconds until a request would be allowed, ≥ 1. */ readonly retryAfterS: number;
    };

interface Bucket {
  tokens: number;
  at: number;
}

export class RateLimiter {
  private readonly buckets = new Map<string, Bucket>();

  constructor(
    private readonly policy: RateLimitPolicy,
    private readonly now: () => number,
  ) {}

  /** Takes one token from the identity's bucket, or says how long to wait for one. */
  take(identity: string): RateDecision {
    const now = this.now();
    const bucket = this.buckets.get(identity) ?? { tokens: this.policy.burst, at: now };
    // Monotonic, so never negative; kept as a guard should a caller pass another clock.
    const elapsedMs = Math.max(0, now - bucket.at);
    bucket.tokens = Math.min(
      this.policy.burst,
      bucket.tokens + (elapsedMs * this.policy.perSecond) / 1000,
    );
    bucket.at = now;
    this.buckets.set(identity, bucket);
    if (bucket.tokens >= 1) {
      bucket.tokens -= 1;
      return { allowed: true };
    }
    const retryAfterS = Math.max(1, Math.ceil((1 - bucket.tokens) / this.policy.perSecond));
    return { allowed: false, retryAfterS };
  }
}
