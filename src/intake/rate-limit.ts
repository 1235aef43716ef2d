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

/**
 * Failed authentications per client address, on `/v1` and the status page's login together: a
 * token cannot be guessed, but the gateway must not be a free oracle either, answering guesses
 * as fast as a client sends them. After `maxFailures` failures within `windowMs` the address
 * waits until the oldest of them leaves the window, a correct token refused as a wrong one (a
 * guess learns nothing), unless the token's identity was accepted from that address before it
 * was held: every other address is untouched. One count for both routes, so that a client cannot
 * double its guesses by alternating them.
 *
 * The exception keeps the plant running. A plant system shares its address with whatever else
 * runs on its host or behind its NAT: one client left with a token that was since rotated
 * retries for as long as it runs, and would hold the address, and with it every correct client
 * there, for as long as it retries — the commands of a SCADA host refused because a historian
 * beside it is misconfigured. A guesser from a new address has no identity known there; one
 * sharing the address of a client it would impersonate gains only the identities known there,
 * and only by guessing right, which the hold still slows for every other identity.
 *
 * An IPv6 address counts as its /64: a host is given a /64 and takes any address in it, so
 * that per address it could rotate past the bound for free. The memory is bounded: at most
 * `maxAddresses` addresses (the least recently failing is forgotten first), `maxFailures`
 * instants each, and as many addresses with the identities accepted there (the first known is
 * forgotten first; only a correct token adds one). An address that has never failed costs one
 * map lookup.
 */
export class FailedAuthentications {
  private readonly failures = new Map<string, number[]>();
  /** The identities whose token was accepted from each address (its group). */
  private readonly accepted = new Map<string, Set<string>>();

  constructor(
    private readonly clock: { elapsed(): number },
    readonly maxFailures = 5,
    readonly windowMs = 60_000,
    private readonly maxAddresses = 1_024,
  ) {}

  /** Seconds to wait before the next attempt from this address; 0 when it may try now. */
  waitS(address: string): number {
    const failed = this.failures.get(addressGroup(address));
    // The path of every client that has not failed lately: one lookup.
    if (failed === undefined || failed.length < this.maxFailures) return 0;
    const oldest = failed[failed.length - this.maxFailures] ?? 0;
    const waitMs = oldest + this.windowMs - this.clock.elapsed();
    return waitMs > 0 ? Math.max(1, Math.ceil(waitMs / 1000)) : 0;
  }

  /** Counts a failure; true when it is the one that makes the address wait. */
  failed(address: string): boolean {
    const group = addressGroup(address);
    const since = this.clock.elapsed() - this.windowMs;
    const recent = (this.failures.get(group) ?? []).filter((t) => t > since);
    recent.push(this.clock.elapsed());
    // Re-inserted, so that the map's order is the order of the last failures.
    this.failures.delete(group);
    this.failures.set(group, recent.slice(-this.maxFailures));
    while (this.failures.size > this.maxAddresses) {
      const first = this.failures.keys().next();
      if (first.done === true) break;
      this.failures.delete(first.value);
    }
    return recent.length === this.maxFailures;
  }

  /** A token of `identity` was accepted from this address. */
  succeeded(address: string, identity: string): void {
    const group = addressGroup(address);
    const known = this.accepted.get(group);
    if (known !== undefined) {
      known.add(identity);
      return;
    }
    this.accepted.set(group, new Set([identity]));
    while (this.accepted.size > this.maxAddresses) {
      const first = this.accepted.keys().next();
      if (first.done === true) break;
      this.accepted.delete(first.value);
    }
  }

  /**
   * Whether a correct token of `identity` is served from this address although the address is
   * held: its identity was accepted from there before (see the class).
   */
  knows(address: string, identity: string): boolean {
    return this.accepted.get(addressGroup(address))?.has(identity) === true;
  }

  /** Addresses remembered now (at most maxAddresses). */
  get addresses(): number {
    return this.failures.size;
  }
}

/**
 * Says once, when an address has just reached the bound, that its authentications are refused
 * for a while: a client guessing tokens, or one whose token is wrong (its operator's fix). The
 * address and the route only: never a token.
 */
export function warnThrottled(
  logger: { warn(obj: object, msg: string): void },
  failures: FailedAuthentications,
  address: string,
  route: string,
): void {
  logger.warn(
    {
      ip: address,
      counted: addressGroup(address),
      route,
      failures: failures.maxFailures,
      windowS: failures.windowMs / 1000,
      retryAfterS: failures.waitS(address),
    },
    'authentication refused: too many failed from this address; its requests with credentials are answered 429 until the oldest failure is a window old',
  );
}

/**
 * The address a failure counts against: an IPv4 address as it is (also when written
 * IPv4-mapped, `::ffff:10.0.0.7`, as a dual-stack listener gives it), an IPv6 address as its /64.
 */
export function addressGroup(address: string): string {
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (mapped?.[1] !== undefined) return mapped[1];
  if (!address.includes(':')) return address;
  const [head = '', tail] = (address.split('%')[0] ?? address).toLowerCase().split('::');
  const left = head === '' ? [] : head.split(':');
  const right = tail === undefined || tail === '' ? [] : tail.split(':');
  const groups = [
    ...left,
    ...Array<string>(Math.max(0, 8 - left.length - right.length)).fill('0'),
    ...right,
  ];
  return `${groups
    .slice(0, 4)
    .map((g) => parseInt(g, 16).toString(16))
    .join(':')}::/64`;
}
