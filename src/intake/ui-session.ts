import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { MAX_TIMER_MS, timer, type Clock } from '../core/clock.js';
import type { SluiceConfig } from '../config/config.js';

/**
 * Status page sessions (docs/http-api.md#operator-status-page). An operator logs in once with
 * the identity's token (or client certificate); the browser then holds only a random session
 * id in a `__Host-` cookie that is Secure, HttpOnly and SameSite=Strict, so the token never
 * sits in the page, its URLs or the browser's storage. Sessions live in the daemon's memory: a
 * restart logs everyone out, which is the safe direction.
 *
 * A session started by a client certificate ends no later than the certificate (or its chain)
 * does: the /v1 routes check a certificate's validity at every request (credentials.ts), and a
 * cookie must not carry its identity further, at the valves, than the certificate itself would.
 * Likewise a session started by a token ends when a reload (SIGHUP) replaces that token
 * (identities.ts): an operator who rotates a leaked token out expects everything opened with it
 * to stop at once, a resolve or reverify from its page first of all.
 *
 * Each session carries a CSRF token that the page sends back in a header with every change
 * (synchronizer token): a cross-site form or fetch can neither read it nor set the header.
 */

export type UiConfig = SluiceConfig['ui'];
export type UiRole = 'viewer' | 'operator';

/** `__Host-`: the browser refuses it unless Secure, Path=/ and without Domain (RFC 6265bis). */
export const SESSION_COOKIE = '__Host-sluice-session';
export const CSRF_HEADER = 'x-csrf-token';
/** Bounds the memory a flood of logins can take; the least recently used session goes first. */
const MAX_SESSIONS = 256;
/**
 * How long a watch (UiSessions.watch) waits at most before it looks at a certificate's expiry
 * again: notAfter is wall time, which may step (SPEC §6), and a timer runs on the monotonic clock.
 */
const WALL_LOOK_MS = 1_000;

export interface UiSession {
  /** The identity that logged in; its name is its key scope. */
  readonly identity: string;
  readonly role: UiRole;
  readonly csrfToken: string;
  /** Wall time of the login (reports only). */
  readonly loginAt: number;
  /** Monotonic time of the login and of the last request (durations: SPEC §6). */
  readonly loginMono: number;
  lastSeenMono: number;
  /**
   * Wall time (the gateway's clock, against which /v1 checks certificates) at which the client
   * certificate the session was started with stops being valid; null for a token login.
   */
  readonly notAfter: number | null;
  /**
   * The SHA-256 of the bearer token the session was started with (as the identities keep it);
   * null for a certificate login. The session lives only while the identity still has it.
   */
  readonly tokenDigest: Buffer | null;
  /** Logged out, evicted or lapsed: an event stream still open for it closes. */
  ended: boolean;
}

/** Why a session lapsed by itself, for the audit log (logout and eviction are not lapses). */
export interface UiLapse {
  readonly kind: 'certificate' | 'token' | 'idle' | 'max-age';
  readonly detail: string;
}

const digest = (id: string): string => createHash('sha256').update(id, 'utf8').digest('hex');

/** What a session was started with, and so what ends it besides its ages. */
export type UiCredential =
  | { readonly via: 'token'; readonly tokenDigest: Buffer }
  | { readonly via: 'certificate'; readonly notAfter: number };

export interface UiSessionsHooks {
  /** Told once, when a session is found to have lapsed (at a request, a sweep or a stream tick). */
  readonly onLapse?: (session: UiSession, lapse: UiLapse) => void;
  /** The identity still has the token of this digest (IdentityRegistry.holdsToken). */
  readonly tokenHeld?: (identity: string, tokenDigest: Buffer) => boolean;
}

export class UiSessions {
  /** By the SHA-256 of the session id: the ids themselves are kept nowhere. */
  private readonly sessions = new Map<string, UiSession>();
  private readonly idleMs: number;
  private readonly maxMs: number;
  private readonly onLapse: (session: UiSession, lapse: UiLapse) => void;
  private readonly tokenHeld: (identity: string, tokenDigest: Buffer) => boolean;
  /** Aborted when its session ends (endedSignal): what a session's request waits on stops. */
  private readonly endings = new WeakMap<UiSession, AbortController>();

  constructor(
    config: Pick<UiConfig, 'sessionIdleMinutes' | 'sessionMaxHours'>,
    private readonly clock: Clock,
    hooks: UiSessionsHooks = {},
  ) {
    this.idleMs = config.sessionIdleMinutes * 60_000;
    this.maxMs = config.sessionMaxHours * 3_600_000;
    this.onLapse = hooks.onLapse ?? (() => undefined);
    this.tokenHeld = hooks.tokenHeld ?? (() => true);
  }

  /** Seconds a session may live at most: the cookie's Max-Age. */
  get maxAgeS(): number {
    return Math.floor(this.maxMs / 1000);
  }

  get count(): number {
    return this.sessions.size;
  }

  /**
   * Seconds the cookie of a session may live: the configured maximum, or less when the session
   * ends sooner with its certificate, so that the browser lets go of it no later than that.
   */
  cookieMaxAgeS(session: UiSession): number {
    if (session.notAfter === null) return this.maxAgeS;
    const left = Math.floor((session.notAfter - this.clock.now()) / 1000);
    return Math.max(0, Math.min(this.maxAgeS, left));
  }

  /**
   * A new session; returns its id, for the cookie only. A certificate's `notAfter` (wall ms)
   * bounds it; a token's digest must stay the identity's.
   */
  create(
    identity: string,
    role: UiRole,
    credential: UiCredential,
  ): { id: string; session: UiSession } {
    this.sweep();
    while (this.sessions.size >= MAX_SESSIONS) {
      const oldest = this.sessions.entries().next();
      if (oldest.done === true) break;
      const [key, session] = oldest.value;
      this.finish(session);
      this.sessions.delete(key);
    }
    const id = randomBytes(32).toString('base64url');
    const mono = this.clock.elapsed();
    const session: UiSession = {
      identity,
      role,
      csrfToken: randomBytes(32).toString('base64url'),
      loginAt: this.clock.now(),
      loginMono: mono,
      lastSeenMono: mono,
      notAfter: credential.via === 'certificate' ? credential.notAfter : null,
      tokenDigest: credential.via === 'token' ? credential.tokenDigest : null,
      ended: false,
    };
    this.sessions.set(digest(id), session);
    return { id, session };
  }

  /** The live session a cookie header names, touched; undefined when none or expired. */
  fromCookie(cookieHeader: string | undefined): UiSession | undefined {
    const id = sessionId(cookieHeader);
    if (id === undefined) return undefined;
    const key = digest(id);
    const session = this.sessions.get(key);
    if (session === undefined) return undefined;
    if (!this.alive(session)) {
      this.finish(session);
      this.sessions.delete(key);
      return undefined;
    }
    session.lastSeenMono = this.clock.elapsed();
    // Re-inserted: the map's order is least recently used first.
    this.sessions.delete(key);
    this.sessions.set(key, session);
    return session;
  }

  /**
   * Whether a session is still live, without touching it (a long event stream asks). A session
   * found lapsed is ended here, and its lapse told once.
   */
  alive(session: UiSession): boolean {
    if (session.ended) return false;
    const lapse = this.lapse(session);
    if (lapse === null) return true;
    this.finish(session);
    this.onLapse(session, lapse);
    return false;
  }

  /**
   * Aborted once the session ends — logged out, evicted, or found lapsed (at a request, a stream
   * tick, or the sweep after a reload that replaced its token): an operator action that waits
   * (a reverify's readback) stops answering to it there and then.
   */
  endedSignal(session: UiSession): AbortSignal {
    let ending = this.endings.get(session);
    if (ending === undefined) {
      ending = new AbortController();
      if (session.ended) ending.abort();
      this.endings.set(session, ending);
    }
    return ending.signal;
  }

  /**
   * endedSignal's signal, which while watched also aborts when the session lapses by itself —
   * its certificate expires, it idles out or reaches its maximum age — at that moment, where
   * otherwise a lapse is found only when something looks (a request, a stream tick, a sweep).
   * A wait that must stop with its session (a reverify's readback) watches it, and lets go of
   * the watch (its timer) once over. The lapse is judged as at a request (alive): found so, it
   * ends the session and is told once.
   */
  watch(session: UiSession): { readonly ended: AbortSignal; readonly release: () => void } {
    const ended = this.endedSignal(session);
    let cancel: (() => void) | undefined;
    const release = (): void => {
      cancel?.();
      cancel = undefined;
      ended.removeEventListener('abort', release);
    };
    const look = (): void => {
      cancel = undefined;
      // Found lapsed, alive() ends it: `ended` aborts and release runs.
      if (!this.alive(session)) return;
      cancel = timer(this.clock, this.untilLapse(session), look);
    };
    if (!ended.aborted) {
      ended.addEventListener('abort', release);
      look();
    }
    return { ended, release };
  }

  /**
   * Milliseconds until the session would lapse by itself as it stands (its idle time counted
   * from its last request, which a stream's touch moves), at least 1; a certificate's expiry is
   * looked at again within WALL_LOOK_MS whatever it is, the wall clock may step meanwhile.
   */
  private untilLapse(session: UiSession): number {
    const mono = this.clock.elapsed();
    let ms = Math.min(session.lastSeenMono + this.idleMs, session.loginMono + this.maxMs) - mono;
    if (session.notAfter !== null) {
      ms = Math.min(ms, session.notAfter - this.clock.now(), WALL_LOOK_MS);
    }
    return Math.min(MAX_TIMER_MS, Math.max(1, Math.ceil(ms)));
  }

  private finish(session: UiSession): void {
    session.ended = true;
    this.endings.get(session)?.abort();
  }

  private lapse(session: UiSession): UiLapse | null {
    // As credentials.ts judges a certificate at a /v1 request: expired from notAfter on.
    if (session.notAfter !== null && this.clock.now() >= session.notAfter) {
      return {
        kind: 'certificate',
        detail: `the client certificate it was started with (or its chain) expired at ${new Date(session.notAfter).toISOString()}`,
      };
    }
    if (session.tokenDigest !== null && !this.tokenHeld(session.identity, session.tokenDigest)) {
      return {
        kind: 'token',
        detail: `the token it was started with is no longer identities.${session.identity}'s (replaced by a reload)`,
      };
    }
    const mono = this.clock.elapsed();
    if (mono - session.lastSeenMono >= this.idleMs) {
      return { kind: 'idle', detail: `idle for ${String(this.idleMs / 60_000)} min` };
    }
    if (mono - session.loginMono >= this.maxMs) {
      return { kind: 'max-age', detail: `${String(this.maxMs / 3_600_000)} h since the login` };
    }
    return null;
  }

  /** Keeps an event stream's session from idling out while the page is open and listening. */
  touch(session: UiSession): void {
    session.lastSeenMono = this.clock.elapsed();
  }

  /** Ends the session a cookie names (logout). */
  end(cookieHeader: string | undefined): void {
    const id = sessionId(cookieHeader);
    if (id === undefined) return;
    const key = digest(id);
    const session = this.sessions.get(key);
    if (session !== undefined) this.finish(session);
    this.sessions.delete(key);
  }

  /**
   * Ends every session that has lapsed, each told once: at a login, and at once after a reload
   * replaced a token.
   */
  sweep(): void {
    for (const [key, session] of this.sessions) {
      if (!this.alive(session)) {
        this.finish(session);
        this.sessions.delete(key);
      }
    }
  }
}

/** The session cookie's value in a Cookie header (RFC 6265 §4.2), if well-formed. */
export function sessionId(cookieHeader: string | undefined): string | undefined {
  if (cookieHeader === undefined) return undefined;
  for (const pair of cookieHeader.split(';')) {
    const eq = pair.indexOf('=');
    if (eq < 0) continue;
    if (pair.slice(0, eq).trim() !== SESSION_COOKIE) continue;
    const value = pair.slice(eq + 1).trim();
    return /^[A-Za-z0-9_-]{43}$/.test(value) ? value : undefined;
  }
  return undefined;
}

export function sessionCookie(id: string, maxAgeS: number): string {
  return `${SESSION_COOKIE}=${id}; Path=/; Max-Age=${maxAgeS}; Secure; HttpOnly; SameSite=Strict`;
}

export function clearedCookie(): string {
  return `${SESSION_COOKIE}=; Path=/; Max-Age=0; Secure; HttpOnly; SameSite=Strict`;
}

/** The CSRF token the page sent matches its session's, compared in constant time. */
export function csrfMatches(session: UiSession, sent: string | string[] | undefined): boolean {
  if (typeof sent !== 'string') return false;
  const a = Buffer.from(sent, 'utf8');
  const b = Buffer.from(session.csrfToken, 'utf8');
  return a.length === b.length && timingSafeEqual(a, b);
}

/**
 * A state-changing request comes from the page itself: its `Origin` is this listener's own
 * (`https://` + the Host it was sent to), and a browser that says where it comes from
 * (`Sec-Fetch-Site`) says same-origin. A missing Origin is refused: every browser the page
 * supports sends one on a POST.
 */
export function sameOrigin(headers: {
  readonly origin?: string | string[] | undefined;
  readonly host?: string | string[] | undefined;
  readonly 'sec-fetch-site'?: string | string[] | undefined;
}): { readonly ok: true } | { readonly ok: false; readonly detail: string } {
  const { origin, host } = headers;
  const site = headers['sec-fetch-site'];
  if (typeof origin !== 'string' || origin === '' || origin === 'null') {
    return { ok: false, detail: 'the request carries no Origin: it does not come from the page' };
  }
  if (typeof host !== 'string' || origin !== `https://${host}`) {
    return { ok: false, detail: 'the request comes from another origin than the status page' };
  }
  if (typeof site === 'string' && site !== 'same-origin') {
    return { ok: false, detail: `the browser reports a ${site} request (Sec-Fetch-Site)` };
  }
  return { ok: true };
}
