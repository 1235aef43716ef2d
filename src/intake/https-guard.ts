import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { authenticate } from './credentials.js';
import { makeProblem, sendProblem } from './https-problems.js';
import type { Reply, Request } from './https-types.js';
import type { IdentityRegistry, NamedIdentity } from './identities.js';
import {
  RateLimiter,
  warnThrottled,
  type FailedAuthentications,
  type RateLimitPolicy,
} from './rate-limit.js';
import { clientAddress } from './client-address.js';

/**
 * Who may use the `/v1` routes: the caller is authenticated (bearer token or client
 * certificate, credentials.ts), then held to its identity's rate limit. An address whose tokens
 * keep failing is answered 429 for a while (FailedAuthentications): without it a client could
 * guess tokens as fast as the gateway answers. Handlers ask the guard
 * who the caller is; a handler that runs without the guard is a wiring bug, not an anonymous
 * caller.
 *
 * A stop is never refused by the rate limit (SPEC §2: it is the reason stop exists). A client
 * that polls its commands as their 202 says (Retry-After: 1) spends its identity's tokens, and
 * its stop would otherwise be answered 429 and have to race its own polls. A POST of a command
 * takes its token at the door as every request does; one that finds the bucket empty is refused
 * only once its body is read (commandHooks), and not when the body is a stop.
 */

export interface CallerGuardOptions {
  readonly identities: IdentityRegistry;
  readonly rateLimit: RateLimitPolicy;
  /** Client certificates are asked for (https.clientCaFile is set). */
  readonly mutualTls: boolean;
  /** Wall time for client certificates' validity; monotonic `elapsed()` for the rate limit. */
  readonly clock: Clock;
  readonly logger: Logger;
  /** Failed authentications per address, shared with the status page's login. */
  readonly failedAuthentications: FailedAuthentications;
}

export class CallerGuard {
  private readonly identities: IdentityRegistry;
  private readonly rateLimit: RateLimitPolicy;
  private readonly mutualTls: boolean;
  private readonly limiter: RateLimiter;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly failures: FailedAuthentications;
  /** Connections whose lapsed certificate was already logged: one warning per connection. */
  private readonly lapsedWarned = new WeakSet<object>();
  /** Who each authenticated request is; keyed by the raw request so nothing outlives it. */
  private readonly callers = new WeakMap<object, NamedIdentity>();
  /**
   * The command requests that found their identity's bucket empty, with the wait a refusal
   * states: refused once the body shows they are not a stop (commandHooks).
   */
  private readonly owing = new WeakMap<object, number>();

  constructor(options: CallerGuardOptions) {
    this.identities = options.identities;
    this.rateLimit = options.rateLimit;
    this.mutualTls = options.mutualTls;
    const clock = options.clock;
    this.clock = clock;
    this.logger = options.logger;
    this.failures = options.failedAuthentications;
    // Refill is a duration (SPEC §6): on the wall clock, a gateway clock stepped forward an hour
    // refilled every bucket to its burst, and one stepped back withheld the refill due.
    this.limiter = new RateLimiter(options.rateLimit, () => clock.elapsed());
  }

  /** The route option that puts a route behind the guard. */
  readonly hooks = {
    onRequest: async (request: Request, reply: Reply): Promise<Reply | undefined> =>
      this.check(request, reply, 'refuse'),
  };

  /**
   * The option for `POST /v1/commands`: as `hooks`, but a request over the rate limit is
   * refused only after its body is parsed, and a stop is not refused (see the class).
   */
  readonly commandHooks = {
    onRequest: async (request: Request, reply: Reply): Promise<Reply | undefined> =>
      this.check(request, reply, 'after-body'),
    preHandler: async (request: Request, reply: Reply): Promise<Reply | undefined> => {
      const retryAfterS = this.owing.get(request.raw);
      if (retryAfterS === undefined || isStop(request.body)) return undefined;
      return this.rateLimited(reply, retryAfterS);
    },
  };

  /** The authenticated caller of a guarded request. */
  caller(request: Request): NamedIdentity {
    const identity = this.callers.get(request.raw);
    if (identity === undefined) throw new Error('request reached a /v1 handler unauthenticated');
    return identity;
  }

  private check(
    request: Request,
    reply: Reply,
    overLimit: 'refuse' | 'after-body',
  ): Reply | undefined {
    const authorization = request.raw.headersDistinct.authorization;
    // Only a request that presents a token is held (a client certificate cannot be guessed, and
    // a request without credentials guesses nothing).
    const waitS = authorization === undefined ? 0 : this.failures.waitS(clientAddress(request));
    const auth = authenticate(
      authorization,
      request.raw.socket,
      this.identities,
      this.mutualTls,
      this.clock.now(),
    );
    // A held address is answered alike for a wrong token and a right one, so that a guess learns
    // nothing, except for an identity accepted from there before the hold: the correct clients
    // beside one with a wrong token (FailedAuthentications).
    if (
      waitS > 0 &&
      !(auth.ok && this.failures.knows(clientAddress(request), auth.identity.name))
    ) {
      return sendProblem(
        reply,
        makeProblem(
          429,
          'RATE_LIMITED',
          `more than ${String(this.failures.maxFailures)} failed authentications from this address within ${String(this.failures.windowMs / 1000)} s; retry after ${String(waitS)} s`,
        ),
        { 'retry-after': String(waitS) },
      );
    }
    if (auth.ok && authorization !== undefined) {
      this.failures.succeeded(clientAddress(request), auth.identity.name);
    }
    if (!auth.ok) {
      // A token presented and refused: a guess, or a client with a wrong one. Several
      // Authorization headers are a malformed request, not a guess.
      if (auth.error === 'invalid_token' && this.failures.failed(clientAddress(request))) {
        warnThrottled(
          this.logger,
          this.failures,
          clientAddress(request),
          request.routeOptions.url ?? '/v1',
        );
      }
      const lapsed = auth.lapsed;
      if (lapsed !== undefined && !this.lapsedWarned.has(request.raw.socket)) {
        // A client that goes on using a session or connection made with a certificate that has
        // since lapsed: its operator must renew it. Once per connection, not per request.
        this.lapsedWarned.add(request.raw.socket);
        this.logger.warn(
          {
            cn: lapsed.cn,
            validTo: lapsed.validTo,
            resumed: lapsed.resumed,
            ip: clientAddress(request),
          },
          'client certificate refused: outside its validity',
        );
      }
      const challenge =
        auth.error === null
          ? 'Bearer realm="sluice"'
          : `Bearer realm="sluice", error="${auth.error}"`;
      return sendProblem(reply, makeProblem(401, 'UNAUTHORIZED', auth.detail), {
        'www-authenticate': challenge,
      });
    }
    const decision = this.limiter.take(auth.identity.name);
    if (!decision.allowed) {
      if (overLimit === 'refuse') return this.rateLimited(reply, decision.retryAfterS);
      this.owing.set(request.raw, decision.retryAfterS);
    }
    this.callers.set(request.raw, auth.identity);
    return undefined;
  }

  private rateLimited(reply: Reply, retryAfterS: number): Reply {
    return sendProblem(
      reply,
      makeProblem(
        429,
        'RATE_LIMITED',
        `more than ${String(this.rateLimit.perSecond)} requests per second (burst ${String(this.rateLimit.burst)}) for this identity`,
      ),
      { 'retry-after': String(retryAfterS) },
    );
  }
}

/**
 * Whether a parsed body asks for a stop. Whatever else it holds is judged by the command's own
 * validation: a malformed stop is answered 400 as any malformed command.
 */
function isStop(body: unknown): boolean {
  return (
    typeof body === 'object' && body !== null && (body as { action?: unknown }).action === 'stop'
  );
}
