import { describe, expect, it } from 'vitest';
import type { Clock } from '../../src/core/clock.js';
import {
  clearedCookie,
  csrfMatches,
  sameOrigin,
  SESSION_COOKIE,
  sessionCookie,
  sessionId,
  UiSessions,
} from '../../src/intake/ui-session.js';
import { FailedAuthentications } from '../../src/intake/rate-limit.js';

/** Status page sessions, their cookie, CSRF token and origin rules, and the login throttle, on fake time. */

function fakeClock(): Clock & { advance(ms: number): void } {
  let mono = 1_000;
  let wall = Date.parse('2026-12-01T10:00:00Z');
  return {
    now: () => wall,
    elapsed: () => mono,
    sleep: () => Promise.resolve(),
    advance: (ms) => {
      mono += ms;
      wall += ms;
    },
  };
}

/** fakeClock with timers: each fires once `advance` reaches its time. */
function timedClock(): Clock & { advance(ms: number): void; pending(): number } {
  const clock = fakeClock();
  let timers: { at: number; fire: () => void }[] = [];
  return {
    ...clock,
    timer: (ms, fire) => {
      const entry = { at: clock.elapsed() + ms, fire };
      timers.push(entry);
      return () => {
        timers = timers.filter((t) => t !== entry);
      };
    },
    advance: (ms) => {
      const until = clock.elapsed() + ms;
      for (;;) {
        const next = timers.filter((t) => t.at <= until).sort((a, b) => a.at - b.at)[0];
        if (next === undefined) break;
        clock.advance(next.at - clock.elapsed());
        timers = timers.filter((t) => t !== next);
        next.fire();
      }
      clock.advance(until - clock.elapsed());
    },
    pending: () => timers.length,
  };
}

/** A login with a token the identity keeps (the sessions here are given no tokenHeld). */
const TOKEN_LOGIN = { via: 'token', tokenDigest: Buffer.alloc(32) } as const;

const cookieOf = (id: string): string => `other=1; ${SESSION_COOKIE}=${id}; theme=dark`;

describe('UiSessions', () => {
  it('finds a session by its cookie and keeps it while it is used', () => {
    const clock = fakeClock();
    const sessions = new UiSessions({ sessionIdleMinutes: 30, sessionMaxHours: 12 }, clock);
    const { id, session } = sessions.create('ops', 'operator', TOKEN_LOGIN);
    expect(id).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(session).toMatchObject({ identity: 'ops', role: 'operator', ended: false });
    expect(sessions.fromCookie(cookieOf(id))).toBe(session);
    for (let i = 0; i < 10; i++) {
      clock.advance(29 * 60_000);
      expect(sessions.fromCookie(cookieOf(id)), `after ${i + 1} uses`).toBe(session);
    }
    expect(sessions.fromCookie(undefined)).toBeUndefined();
    expect(sessions.fromCookie(cookieOf('x'.repeat(43)))).toBeUndefined();
  });

  it('ends a session idle too long, and any session at its maximum age', () => {
    const clock = fakeClock();
    const sessions = new UiSessions({ sessionIdleMinutes: 30, sessionMaxHours: 1 }, clock);
    const idle = sessions.create('ops', 'operator', TOKEN_LOGIN);
    clock.advance(30 * 60_000);
    expect(sessions.fromCookie(cookieOf(idle.id))).toBeUndefined();
    expect(idle.session.ended).toBe(true);

    const busy = sessions.create('desk', 'viewer', TOKEN_LOGIN);
    for (let t = 0; t < 59; t++) {
      clock.advance(60_000);
      sessions.touch(busy.session);
    }
    expect(sessions.alive(busy.session)).toBe(true);
    clock.advance(60_000);
    expect(sessions.alive(busy.session)).toBe(false);
    expect(sessions.fromCookie(cookieOf(busy.id))).toBeUndefined();
    expect(sessions.maxAgeS).toBe(3_600);
  });

  it('ends a session started by a certificate at its notAfter, and tells why once', () => {
    const clock = fakeClock();
    const lapses: [string, string, string][] = [];
    const sessions = new UiSessions({ sessionIdleMinutes: 30, sessionMaxHours: 12 }, clock, {
      onLapse: (session, lapse) => lapses.push([session.identity, lapse.kind, lapse.detail]),
    });
    const notAfter = clock.now() + 20 * 60_000 + 500;
    const byCert = sessions.create('ops', 'operator', { via: 'certificate', notAfter });
    const byToken = sessions.create('desk', 'viewer', TOKEN_LOGIN);
    // The cookie goes no further than the certificate; a token's lives the configured maximum.
    expect(sessions.cookieMaxAgeS(byCert.session)).toBe(20 * 60);
    expect(sessions.cookieMaxAgeS(byToken.session)).toBe(12 * 3_600);
    clock.advance(20 * 60_000 + 499);
    expect(sessions.fromCookie(cookieOf(byCert.id))).toBe(byCert.session);
    clock.advance(1);
    expect(sessions.alive(byCert.session)).toBe(false);
    expect(sessions.fromCookie(cookieOf(byCert.id))).toBeUndefined();
    expect(sessions.fromCookie(cookieOf(byToken.id))).toBe(byToken.session);
    expect(lapses).toEqual([
      [
        'ops',
        'certificate',
        `the client certificate it was started with (or its chain) expired at ${new Date(notAfter).toISOString()}`,
      ],
    ]);
    clock.advance(30 * 60_000);
    expect(sessions.fromCookie(cookieOf(byToken.id))).toBeUndefined();
    expect(lapses[1]).toEqual(['desk', 'idle', 'idle for 30 min']);
    expect(lapses).toHaveLength(2);
  });

  it('a watched session ends at the moment it idles out or reaches its maximum age, and lets go of its timer', () => {
    const clock = timedClock();
    const lapses: string[] = [];
    const sessions = new UiSessions({ sessionIdleMinutes: 30, sessionMaxHours: 1 }, clock, {
      onLapse: (_session, lapse) => lapses.push(lapse.kind),
    });
    const idle = sessions.create('ops', 'operator', TOKEN_LOGIN);
    const idleWatch = sessions.watch(idle.session);
    clock.advance(29 * 60_000);
    // Its stream keeps it: the watch looks again at the new idle end.
    sessions.touch(idle.session);
    clock.advance(29 * 60_000);
    expect(idleWatch.ended.aborted).toBe(false);
    clock.advance(60_000 - 1);
    expect(idleWatch.ended.aborted).toBe(false);
    clock.advance(1);
    // Nobody asked: the watch found the lapse, ended the session and told it once.
    expect(idleWatch.ended.aborted).toBe(true);
    expect(idle.session.ended).toBe(true);
    expect(lapses).toEqual(['idle']);
    expect(clock.pending()).toBe(0);
    idleWatch.release();

    const busy = sessions.create('desk', 'viewer', TOKEN_LOGIN);
    const busyWatch = sessions.watch(busy.session);
    for (let t = 0; t < 59; t++) {
      clock.advance(60_000);
      sessions.touch(busy.session);
    }
    expect(busyWatch.ended.aborted).toBe(false);
    clock.advance(60_000);
    expect(busyWatch.ended.aborted).toBe(true);
    expect(lapses).toEqual(['idle', 'max-age']);
    expect(clock.pending()).toBe(0);

    // Released before any lapse: no timer is left behind.
    const kept = sessions.create('ops', 'operator', TOKEN_LOGIN);
    const keptWatch = sessions.watch(kept.session);
    expect(clock.pending()).toBe(1);
    keptWatch.release();
    expect(clock.pending()).toBe(0);
    expect(keptWatch.ended.aborted).toBe(false);
  });

  it('logout ends it; beyond 256 sessions the least recently used goes', () => {
    const clock = fakeClock();
    const sessions = new UiSessions({ sessionIdleMinutes: 30, sessionMaxHours: 12 }, clock);
    const first = sessions.create('ops', 'operator', TOKEN_LOGIN);
    sessions.end(cookieOf(first.id));
    expect(first.session.ended).toBe(true);
    expect(sessions.fromCookie(cookieOf(first.id))).toBeUndefined();

    const kept = sessions.create('ops', 'operator', TOKEN_LOGIN);
    const ids = [];
    for (let i = 0; i < 255; i++) ids.push(sessions.create('desk', 'viewer', TOKEN_LOGIN).id);
    // Used last: it is not the one to go.
    expect(sessions.fromCookie(cookieOf(kept.id))).toBe(kept.session);
    sessions.create('desk', 'viewer', TOKEN_LOGIN);
    expect(sessions.count).toBe(256);
    expect(sessions.fromCookie(cookieOf(ids[0]!))).toBeUndefined();
    expect(sessions.fromCookie(cookieOf(kept.id))).toBe(kept.session);
  });
});

describe('cookie, CSRF token and origin', () => {
  it('writes and reads the cookie with its flags', () => {
    const id = 'a'.repeat(43);
    expect(sessionCookie(id, 60)).toBe(
      `__Host-sluice-session=${id}; Path=/; Max-Age=60; Secure; HttpOnly; SameSite=Strict`,
    );
    expect(clearedCookie()).toMatch(
      /^__Host-sluice-session=; Path=\/; Max-Age=0; Secure; HttpOnly/,
    );
    expect(sessionId(cookieOf(id))).toBe(id);
    expect(sessionId(`${SESSION_COOKIE}=short`)).toBeUndefined();
    expect(sessionId(`sluice-session=${id}`)).toBeUndefined();
  });

  it('matches the CSRF token exactly', () => {
    const sessions = new UiSessions({ sessionIdleMinutes: 1, sessionMaxHours: 1 }, fakeClock());
    const { session } = sessions.create('ops', 'operator', TOKEN_LOGIN);
    expect(csrfMatches(session, session.csrfToken)).toBe(true);
    expect(csrfMatches(session, `${session.csrfToken}x`)).toBe(false);
    expect(csrfMatches(session, undefined)).toBe(false);
    expect(csrfMatches(session, [session.csrfToken])).toBe(false);
  });

  it('takes only the listener’s own origin', () => {
    const host = '127.0.0.1:8443';
    expect(sameOrigin({ origin: `https://${host}`, host })).toEqual({ ok: true });
    expect(
      sameOrigin({ origin: `https://${host}`, host, 'sec-fetch-site': 'same-origin' }),
    ).toEqual({ ok: true });
    for (const headers of [
      { host },
      { origin: 'null', host },
      { origin: `http://${host}`, host },
      { origin: 'https://127.0.0.1:9443', host },
      { origin: `https://${host}`, host, 'sec-fetch-site': 'cross-site' },
      { origin: `https://${host}`, host, 'sec-fetch-site': 'none' },
    ]) {
      expect(sameOrigin(headers).ok, JSON.stringify(headers)).toBe(false);
    }
  });
});

describe('FailedAuthentications', () => {
  it('lets five failures a minute through per address, then says how long to wait', () => {
    const clock = fakeClock();
    const throttle = new FailedAuthentications(clock);
    for (let i = 0; i < 5; i++) {
      expect(throttle.waitS('10.0.0.5')).toBe(0);
      throttle.failed('10.0.0.5');
      clock.advance(1_000);
    }
    expect(throttle.waitS('10.0.0.5')).toBe(55);
    expect(throttle.waitS('10.0.0.6')).toBe(0);
    clock.advance(55_000);
    expect(throttle.waitS('10.0.0.5')).toBe(0);
  });

  it('counts an IPv6 address as its /64, an IPv4-mapped one as its IPv4', () => {
    const clock = fakeClock();
    const throttle = new FailedAuthentications(clock);
    for (let i = 1; i <= 5; i++) throttle.failed(`2001:db8:7:9::${i.toString(16)}`);
    expect(throttle.waitS('2001:db8:7:9:ffff::1')).toBe(60);
    expect(throttle.waitS('2001:db8:7:a::1')).toBe(0);
    for (let i = 0; i < 5; i++) throttle.failed('::ffff:10.0.0.7');
    expect(throttle.waitS('10.0.0.7')).toBe(60);
  });

  it('remembers at most its bound of addresses, the least recently failing forgotten first', () => {
    const clock = fakeClock();
    const throttle = new FailedAuthentications(clock, 5, 60_000, 100);
    for (let i = 0; i < 5; i++) throttle.failed('10.9.9.9');
    for (let i = 0; i < 99; i++) throttle.failed(`10.1.${i >> 8}.${i & 255}`);
    expect(throttle.addresses).toBe(100);
    expect(throttle.waitS('10.9.9.9')).toBe(60);
    for (let i = 0; i < 10_000; i++) throttle.failed(`10.2.${i >> 8}.${i & 255}`);
    expect(throttle.addresses).toBe(100);
  });
});
