import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { clientAddress } from './client-address.js';
import { authenticate } from './credentials.js';
import { makeProblem, sendProblem } from './https-problems.js';
import type { App, Reply, Request } from './https-types.js';
import { sha256, type IdentityRegistry } from './identities.js';
import { warnThrottled, type FailedAuthentications } from './rate-limit.js';
import {
  clearedCookie,
  CSRF_HEADER,
  csrfMatches,
  sameOrigin,
  sessionCookie,
  type UiConfig,
  type UiCredential,
  type UiSession,
  type UiSessions,
} from './ui-session.js';

/**
 * Who may use the operator status page (docs/http-api.md#operator-status-page): its login,
 * which turns an identity's token (or client certificate) into a session cookie, its logout
 * and session document, and the checks in front of every other `/ui/api/` route (ui-routes.ts):
 * a live session (401 otherwise); for a change also the page's own Origin and the session's
 * CSRF token in `X-CSRF-Token` (403 otherwise), the session looked at again once the body is
 * in, and for reverify and resolve the `operator` role (403).
 */

export interface UiAccessOptions {
  readonly sessions: UiSessions;
  readonly identities: IdentityRegistry;
  /** Each identity's role on the page (ui.roles). */
  readonly roles: UiConfig['roles'];
  readonly gatewayId: string;
  /** Client certificates are asked for: a browser may log in with one. */
  readonly mutualTls: boolean;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Failed authentications per address, shared with `/v1` (rate-limit.ts). */
  readonly failedAuthentications: FailedAuthentications;
  readonly json: (reply: Reply, status: number, body: unknown) => Reply;
}

/** A check in front of a route: a reply ends the request there. */
type Check = (request: Request, reply: Reply) => Promise<Reply | undefined>;

export interface UiAccess {
  /** Reads: a live session. */
  readonly reader: { readonly onRequest: Check };
  /** Changes: a live session, from the page, and maybe a role. */
  readonly changer: (role: 'any' | 'operator') => {
    readonly onRequest: Check;
    readonly preHandler: Check;
  };
  /** The session the route's checks found for the request. */
  readonly sessionOf: (request: Request) => UiSession;
  /** The 401 of a request without a live session. */
  readonly unauthorized: (reply: Reply, detail?: string) => Reply;
}

const MAX_TOKEN = 4_096;

/** Registers the login, logout and session routes; returns the checks for the other routes. */
export function registerUiAccess(app: App, options: UiAccessOptions): UiAccess {
  const { sessions, identities, clock, logger, json } = options;
  const logins = options.failedAuthentications;
  const byRequest = new WeakMap<object, UiSession>();

  const unauthorized = (
    reply: Reply,
    detail = 'log in on the status page first (no live session)',
  ): Reply =>
    sendProblem(reply, makeProblem(401, 'UNAUTHORIZED', detail), {
      'www-authenticate': 'Cookie realm="sluice status page"',
    });
  const refused = (reply: Reply, detail: string): Reply =>
    sendProblem(
      reply,
      makeProblem(403, 'CSRF_REJECTED', detail, { title: 'Cross-site request refused' }),
    );

  /** Reads: a live session. */
  const reader = {
    onRequest: async (request: Request, reply: Reply): Promise<Reply | undefined> => {
      const session = sessions.fromCookie(request.headers.cookie);
      if (session === undefined) return unauthorized(reply);
      byRequest.set(request.raw, session);
      return undefined;
    },
  };
  /**
   * Changes: a live session, from the page (Origin and CSRF token), and maybe a role. The
   * session is looked at again once the body is in, just before the change: a reload may have
   * ended it while the body travelled.
   */
  const changer = (role: 'any' | 'operator') => ({
    preHandler: async (request: Request, reply: Reply): Promise<Reply | undefined> => {
      const session = byRequest.get(request.raw);
      if (session === undefined || !sessions.alive(session)) return unauthorized(reply);
      return undefined;
    },
    onRequest: async (request: Request, reply: Reply): Promise<Reply | undefined> => {
      const session = sessions.fromCookie(request.headers.cookie);
      if (session === undefined) return unauthorized(reply);
      const origin = sameOrigin(request.headers);
      if (!origin.ok) return refusedChange(request, reply, origin.detail);
      if (!csrfMatches(session, request.headers[CSRF_HEADER])) {
        return refusedChange(request, reply, `the ${CSRF_HEADER} header is missing or wrong`);
      }
      if (role === 'operator' && session.role !== 'operator') {
        return sendProblem(
          reply,
          makeProblem(
            403,
            'FORBIDDEN_ROLE',
            `identity "${session.identity}" is a ${session.role} on the status page; reverify and resolve need the operator role (ui.roles)`,
            { title: 'Role does not allow this action' },
          ),
        );
      }
      byRequest.set(request.raw, session);
      return undefined;
    },
  });
  const refusedChange = (request: Request, reply: Reply, detail: string): Reply => {
    logger.warn(
      {
        route: request.routeOptions.url,
        origin: request.headers.origin ?? null,
        ip: clientAddress(request),
      },
      `status page change refused: ${detail}`,
    );
    return refused(reply, detail);
  };
  const sessionOf = (request: Request): UiSession => {
    const session = byRequest.get(request.raw);
    if (session === undefined) throw new Error('status page route reached without a session');
    return session;
  };

  app.post<{ Body: unknown }>('/ui/api/login', async (request, reply) => {
    const origin = sameOrigin(request.headers);
    if (!origin.ok) return refusedChange(request, reply, origin.detail);
    const waitS = logins.waitS(clientAddress(request));
    const body = request.body;
    const token =
      typeof body === 'object' && body !== null && !Array.isArray(body)
        ? (body as Record<string, unknown>).token
        : undefined;
    if (token !== undefined && (typeof token !== 'string' || token.length > MAX_TOKEN)) {
      return sendProblem(
        reply,
        makeProblem(400, 'INVALID_REQUEST', 'token: a string of at most 4096 characters', {
          title: 'Invalid request',
        }),
      );
    }
    const given = typeof token === 'string' && token.trim() !== '' ? token.trim() : undefined;
    const auth = authenticate(
      given === undefined ? undefined : `Bearer ${given}`,
      request.raw.socket,
      identities,
      options.mutualTls,
      clock.now(),
    );
    // Held, a right token is answered as a wrong one, so that a guess learns nothing, except
    // for an identity accepted from this address before: the operators beside a client whose
    // token keeps failing (FailedAuthentications).
    if (waitS > 0 && !(auth.ok && logins.knows(clientAddress(request), auth.identity.name))) {
      return sendProblem(
        reply,
        makeProblem(429, 'RATE_LIMITED', 'too many failed logins from this address; wait'),
        { 'retry-after': String(waitS) },
      );
    }
    if (auth.ok && given !== undefined)
      logins.succeeded(clientAddress(request), auth.identity.name);
    if (!auth.ok) {
      if (logins.failed(clientAddress(request)))
        warnThrottled(logger, logins, clientAddress(request), '/ui/api/login');
      const detail = given === undefined ? auth.detail : 'the token is not valid';
      logger.info({ ip: clientAddress(request), reason: detail }, 'status page login refused');
      return sendProblem(reply, makeProblem(401, 'UNAUTHORIZED', detail));
    }
    const identity = auth.identity.name;
    // The identity's own entry, never a member every object inherits (`constructor`).
    const role = Object.hasOwn(options.roles, identity) ? options.roles[identity] : undefined;
    if (role === undefined) {
      logger.info({ ip: clientAddress(request), identity }, 'status page login refused: no role');
      return sendProblem(
        reply,
        makeProblem(
          403,
          'FORBIDDEN_ROLE',
          `identity "${identity}" has no role on the status page (ui.roles)`,
          { title: 'Role does not allow this action' },
        ),
      );
    }
    const notAfter = auth.via === 'certificate' ? auth.notAfter : null;
    // A token login hands over the token it was, for the session to end with it (a reload).
    const credential: UiCredential | undefined =
      auth.via === 'certificate'
        ? { via: 'certificate', notAfter: auth.notAfter }
        : given === undefined
          ? undefined
          : { via: 'token', tokenDigest: sha256(given) };
    if (credential === undefined) throw new Error('token login without a token');
    const { id, session } = sessions.create(identity, role, credential);
    logger.info(
      {
        ip: clientAddress(request),
        identity,
        role,
        via: auth.via,
        ...(notAfter === null ? {} : { until: new Date(notAfter).toISOString() }),
      },
      'status page login',
    );
    reply.header('set-cookie', sessionCookie(id, sessions.cookieMaxAgeS(session)));
    return json(reply, 200, sessionDocument(session, options.gatewayId));
  });

  app.post('/ui/api/logout', changer('any'), async (request, reply) => {
    const session = sessionOf(request);
    sessions.end(request.headers.cookie);
    logger.info({ ip: clientAddress(request), identity: session.identity }, 'status page logout');
    return reply.code(204).header('set-cookie', clearedCookie()).send();
  });

  app.get('/ui/api/session', reader, async (request, reply) =>
    json(reply, 200, sessionDocument(sessionOf(request), options.gatewayId)),
  );

  return { reader, changer, sessionOf, unauthorized };
}

function sessionDocument(session: UiSession, gatewayId: string): Record<string, unknown> {
  return {
    identity: session.identity,
    role: session.role,
    csrfToken: session.csrfToken,
    loginAt: new Date(session.loginAt).toISOString(),
    gatewayId,
  };
}
