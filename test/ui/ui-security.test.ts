import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { ROOT } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';
import { call, login, ORPHAN, requestEvents, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * The status page's security over real HTTPS against the daemon and sluice-sim: the page and
 * its assets under a strict Content-Security-Policy, no /ui/api answer without a session, the
 * session cookie's flags, logins refused without a role or from another origin, and every
 * cross-site attempt at a change refused — without the session, from another Origin, without
 * or with a wrong CSRF token, as a form — while the operator's own resolve goes through and is
 * audited in GET /v1/commands/{key}. No token or session id is ever logged.
 */

let site: UiSite;

beforeAll(async () => {
  site = await startUiSite({ mqtt: false, opcua: false });
}, 60_000);

/** A page left open when the daemon stops: its stream must not hold the stop up. */
let lingering: Awaited<ReturnType<typeof openStream>> | null = null;

afterAll(async () => {
  const started = Date.now();
  await site.stop();
  if (lingering !== null) {
    // Well within the HTTPS drain bound (5 s): the stream was ended, not waited for.
    expect(Date.now() - started).toBeLessThan(4_000);
    const stream = lingering;
    await until(() => (stream.ended() ? true : undefined), 2_000, 'the lingering stream ended');
  }
});

const JSON_POST = { 'content-type': 'application/json' };

describe('the page and its files', () => {
  it('serves the page under a strict CSP, with no inline script or style', async () => {
    const page = await call(site, 'GET', '/ui/');
    expect(page.status).toBe(200);
    expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
    const csp = String(page.headers['content-security-policy']);
    expect(csp).toContain("default-src 'none'");
    expect(csp).toContain("script-src 'self'");
    expect(csp).toContain("style-src 'self'");
    expect(csp).toContain("frame-ancestors 'none'");
    expect(csp).not.toMatch(/unsafe-inline|unsafe-eval|https?:/);
    expect(page.headers['x-frame-options']).toBe('DENY');
    expect(page.headers['referrer-policy']).toBe('no-referrer');
    expect(page.headers['cache-control']).toBe('no-store');
    // Every script is a file of the package; nothing inline, nothing from elsewhere.
    expect(page.body).not.toMatch(/<script(?![^>]*\bsrc="\/ui\/app\.js")/);
    expect(page.body).not.toMatch(/\sstyle=|<style|\son[a-z]+=/i);
    expect(page.body).not.toMatch(/https?:\/\//);
    expect(page.body).toBe(readFileSync(join(ROOT, 'ui', 'index.html'), 'utf8'));

    const redirect = await call(site, 'GET', '/ui');
    expect(redirect.status).toBe(308);
    expect(redirect.headers.location).toBe('/ui/');
    for (const [file, type] of [
      ['app.js', 'text/javascript; charset=utf-8'],
      ['app.css', 'text/css; charset=utf-8'],
      ['icon.svg', 'image/svg+xml'],
    ] as const) {
      const asset = await call(site, 'GET', `/ui/${file}`);
      expect(asset.status, file).toBe(200);
      expect(asset.headers['content-type']).toBe(type);
      expect(asset.headers['x-content-type-options']).toBe('nosniff');
    }
    expect((await call(site, 'GET', '/ui/missing.js')).status).toBe(404);
  });
});

describe('without a session', () => {
  it('every /ui/api call is 401, whatever bearer token it carries', async () => {
    const reads = [
      '/ui/api/session',
      '/ui/api/devices',
      '/ui/api/gateway',
      '/ui/api/commands',
      `/ui/api/commands/${ORPHAN.scope}/${ORPHAN.key}`,
      '/ui/api/events',
      '/ui/api/events/admission',
    ];
    for (const path of reads) {
      for (const headers of [{}, { authorization: `Bearer ${TOKENS.ops}` }]) {
        const answer = await call(site, 'GET', path, headers);
        expect(answer.status, path).toBe(401);
        expect(answer.json()).toMatchObject({ code: 'UNAUTHORIZED' });
        expect(answer.headers['content-security-policy']).toBeDefined();
      }
    }
    for (const verb of ['reverify', 'resolve']) {
      const answer = await call(
        site,
        'POST',
        `/ui/api/commands/${ORPHAN.scope}/${ORPHAN.key}/${verb}`,
        { ...JSON_POST, origin: site.origin, authorization: `Bearer ${TOKENS.ops}` },
        JSON.stringify({ reason: 'no session' }),
      );
      expect(answer.status, verb).toBe(401);
    }
    const logout = await call(
      site,
      'POST',
      '/ui/api/logout',
      { ...JSON_POST, origin: site.origin },
      '{}',
    );
    expect(logout.status).toBe(401);
    // A forged cookie is no session.
    const forged = await call(site, 'GET', '/ui/api/devices', {
      cookie: `__Host-sluice-session=${'A'.repeat(43)}`,
    });
    expect(forged.status).toBe(401);
  });
});

describe('login', () => {
  it('sets a Secure, HttpOnly, SameSite=Strict __Host- cookie and hands the page its CSRF token', async () => {
    const { answer, cookie, csrf } = await login(site, TOKENS.ops);
    expect(answer.status).toBe(200);
    expect(answer.json()).toMatchObject({ identity: 'ops', role: 'operator', gatewayId: 'uisite' });
    const setCookie = String(answer.headers['set-cookie']);
    expect(setCookie).toMatch(/^__Host-sluice-session=[A-Za-z0-9_-]{43}; /);
    const flags = setCookie.split(';').map((f) => f.trim());
    expect(flags).toEqual(
      expect.arrayContaining(['Path=/', 'Secure', 'HttpOnly', 'SameSite=Strict']),
    );
    expect(flags.some((f) => /^Domain=/i.test(f))).toBe(false);
    expect(setCookie).not.toContain(TOKENS.ops);
    expect(csrf).toMatch(/^[A-Za-z0-9_-]{43}$/);

    const session = await call(site, 'GET', '/ui/api/session', { cookie });
    expect(session.status).toBe(200);
    expect(session.json()).toMatchObject({ identity: 'ops', role: 'operator', csrfToken: csrf });
  });

  it('refuses a wrong token, an identity without a role, and a login from another origin', async () => {
    const wrong = await login(site, 'not-a-token');
    expect(wrong.answer.status).toBe(401);
    expect(wrong.answer.headers['set-cookie']).toBeUndefined();
    const noRole = await login(site, TOKENS.scada);
    expect(noRole.answer.status).toBe(403);
    expect(noRole.answer.json()).toMatchObject({ code: 'FORBIDDEN_ROLE' });
    expect(noRole.answer.headers['set-cookie']).toBeUndefined();
    // A name every object inherits as a member is no role either.
    const inherited = await login(site, TOKENS.constructor);
    expect(inherited.answer.status).toBe(403);
    expect(inherited.answer.json()).toMatchObject({ code: 'FORBIDDEN_ROLE' });
    expect(inherited.answer.headers['set-cookie']).toBeUndefined();

    const body = JSON.stringify({ token: TOKENS.ops });
    for (const headers of [
      {},
      { origin: 'https://evil.example' },
      { origin: 'null' },
      { origin: site.origin, 'sec-fetch-site': 'cross-site' },
    ]) {
      const answer = await call(site, 'POST', '/ui/api/login', { ...JSON_POST, ...headers }, body);
      expect(answer.status, JSON.stringify(headers)).toBe(403);
      expect(answer.json()).toMatchObject({ code: 'CSRF_REJECTED' });
      expect(answer.headers['set-cookie']).toBeUndefined();
    }
    // A cross-site form cannot send JSON: its body types are refused before anything is read.
    const form = await call(
      site,
      'POST',
      '/ui/api/login',
      { origin: site.origin, 'content-type': 'application/x-www-form-urlencoded' },
      `token=${TOKENS.ops}`,
    );
    expect(form.status).toBe(415);
  });
});

describe('with a session', () => {
  it('reads devices, the gateway and commands; the stuck orphan comes first with why', async () => {
    const { cookie } = await login(site, TOKENS.desk);
    const devices = await call(site, 'GET', '/ui/api/devices', { cookie });
    expect(devices.status).toBe(200);
    const list = devices.json<{
      devices: { id: string; allowed: boolean; mode: string; tone: string }[];
    }>().devices;
    expect(list.map((d) => [d.id, d.allowed, d.mode, d.tone])).toEqual([
      ['inlet-valve', false, 'REMOTE', 'rest'],
      ['drain-valve', true, 'REMOTE', 'rest'],
    ]);
    const gateway = await call(site, 'GET', '/ui/api/gateway', { cookie });
    expect(gateway.json()).toMatchObject({
      gatewayId: 'uisite',
      version: expect.stringMatching(/^\d+\.\d+\.\d+/) as unknown,
      clock: { source: 'none', state: 'UNKNOWN' },
      mqtt: null,
      journal: { bytes: expect.any(Number) as unknown },
      commands: { accepted: 1, stuck: 1 },
    });
    const commands = await call(site, 'GET', '/ui/api/commands', { cookie });
    const doc = commands.json<{ open: { key: string; stuck: boolean; why: string }[] }>();
    expect(doc.open[0]).toMatchObject({ key: ORPHAN.key, stuck: true });
    expect(doc.open[0]!.why).toMatch(
      /^open 9 min \d+ s past its deadline \(its device is not in the configuration/,
    );
    const bad = await call(site, 'GET', '/ui/api/commands?state=stuck&limit=0', { cookie });
    expect(bad.status).toBe(400);
    expect(bad.json()).toMatchObject({ code: 'INVALID_REQUEST' });
    const story = await call(site, 'GET', `/ui/api/commands/${ORPHAN.scope}/${ORPHAN.key}`, {
      cookie,
    });
    expect(story.json()).toMatchObject({
      key: ORPHAN.key,
      state: 'accepted',
      open: { stuck: true },
      // A viewer sees the story and may not settle it.
      actions: { reverify: false, resolve: false },
    });
  });

  it('a query parameter given twice is refused, never a 500, and settles nothing', async () => {
    // The query parser makes a repeated parameter an array: passed on as the device filter or
    // the command's scope, it reached the journal's query and the answer was a 500.
    const { cookie, csrf } = await login(site, TOKENS.ops);
    const list = await call(site, 'GET', '/ui/api/commands?device=a&device=b', { cookie });
    expect(list.status).toBe(400);
    expect(list.json()).toMatchObject({
      code: 'INVALID_REQUEST',
      errors: ['device: is given more than once'],
    });
    const twice = `scope=${ORPHAN.scope}&scope=other&key=${ORPHAN.key}`;
    const shown = await call(site, 'GET', `/ui/api/command?${twice}`, { cookie });
    expect(shown.status).toBe(404);
    expect(shown.json()).toMatchObject({ code: 'UNKNOWN_COMMAND' });
    const resolved = await call(
      site,
      'POST',
      `/ui/api/command/resolve?${twice}`,
      { ...JSON_POST, cookie, origin: site.origin, 'x-csrf-token': csrf },
      JSON.stringify({ as: 'failed', reason: 'which one?' }),
    );
    expect(resolved.status).toBe(404);
    expect(resolved.json()).toMatchObject({ code: 'UNKNOWN_COMMAND' });
    // Ground truth: the orphan is open in the journal, its history without an operator's act.
    const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
    try {
      expect(journal.findByKey(ORPHAN.key)[0]).toMatchObject({ state: 'accepted' });
      const history = journal.history({ scope: ORPHAN.scope, key: ORPHAN.key });
      expect(history.map((e) => e.intake)).not.toContain('admin');
    } finally {
      journal.close();
    }
  });

  it('refuses every cross-site change and a viewer; the operator reverifies and resolves, audited', async () => {
    const ops = await login(site, TOKENS.ops);
    const desk = await login(site, TOKENS.desk);
    const path = `/ui/api/commands/${ORPHAN.scope}/${ORPHAN.key}/resolve`;
    const body = JSON.stringify({ as: 'failed', reason: 'valve removed; checked closed by hand' });
    const attempts: [string, Record<string, string>, number, string][] = [
      ['no Origin', { cookie: ops.cookie, 'x-csrf-token': ops.csrf }, 403, 'CSRF_REJECTED'],
      [
        'another Origin',
        { cookie: ops.cookie, 'x-csrf-token': ops.csrf, origin: 'https://evil.example' },
        403,
        'CSRF_REJECTED',
      ],
      [
        'a cross-site fetch',
        {
          cookie: ops.cookie,
          'x-csrf-token': ops.csrf,
          origin: site.origin,
          'sec-fetch-site': 'same-site',
        },
        403,
        'CSRF_REJECTED',
      ],
      ['no CSRF token', { cookie: ops.cookie, origin: site.origin }, 403, 'CSRF_REJECTED'],
      [
        'a wrong CSRF token',
        { cookie: ops.cookie, origin: site.origin, 'x-csrf-token': desk.csrf },
        403,
        'CSRF_REJECTED',
      ],
      [
        'a viewer',
        { cookie: desk.cookie, origin: site.origin, 'x-csrf-token': desk.csrf },
        403,
        'FORBIDDEN_ROLE',
      ],
    ];
    for (const [what, headers, status, code] of attempts) {
      const answer = await call(site, 'POST', path, { ...JSON_POST, ...headers }, body);
      expect(answer.status, what).toBe(status);
      expect(answer.json(), what).toMatchObject({ code });
    }
    // A cross-site form post (it can carry neither the header nor a JSON type) is refused too.
    const form = await call(
      site,
      'POST',
      path,
      { cookie: ops.cookie, origin: 'https://evil.example', 'content-type': 'text/plain' },
      'reason=x',
    );
    expect(form.status).toBe(403);
    const own = { ...JSON_POST, cookie: ops.cookie, origin: site.origin, 'x-csrf-token': ops.csrf };
    const noReason = await call(site, 'POST', path, own, JSON.stringify({ reason: '  ' }));
    expect(noReason.status).toBe(400);

    // Nothing above changed the command.
    const before = await call(site, 'GET', `/v1/commands/${ORPHAN.key}`, {
      authorization: `Bearer ${TOKENS.scada}`,
    });
    expect(before.json()).toMatchObject({ state: 'accepted' });

    // Reverify: a readback cannot settle a command whose device is gone; the page says so,
    // and the request is in the command's history with who asked from where.
    const reverifyPath = `/ui/api/commands/${ORPHAN.scope}/${ORPHAN.key}/reverify`;
    const viewerReverify = await call(
      site,
      'POST',
      reverifyPath,
      { ...JSON_POST, cookie: desk.cookie, origin: site.origin, 'x-csrf-token': desk.csrf },
      '{}',
    );
    expect(viewerReverify.status).toBe(403);
    const reverified = await call(site, 'POST', reverifyPath, own, '{}');
    expect(reverified.status).toBe(200);
    expect(reverified.json()).toMatchObject({
      by: 'ops (status page, 127.0.0.1)',
      settled: false,
      detail: expect.stringContaining('is not in the configuration') as unknown,
      result: { state: 'accepted' },
    });

    const resolved = await call(site, 'POST', path, own, body);
    expect(resolved.status).toBe(200);
    expect(resolved.json()).toMatchObject({
      by: 'ops (status page, 127.0.0.1)',
      result: { state: 'failed', code: 'RESOLVED_BY_OPERATOR' },
    });
    const after = await call(site, 'GET', `/v1/commands/${ORPHAN.key}`, {
      authorization: `Bearer ${TOKENS.scada}`,
    });
    const audited = after.json<{
      state: string;
      code: string;
      history: { to: string; intake: string; detail: string }[];
    }>();
    expect(audited).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    expect(audited.history.map((e) => e.detail)).toContain(
      'reverify requested by ops (status page, 127.0.0.1)',
    );
    expect(audited.history.at(-1)).toMatchObject({
      to: 'failed',
      intake: 'admin',
      detail: expect.stringContaining(
        'resolved by "ops (status page, 127.0.0.1)": "valve removed; checked closed by hand"',
      ) as unknown,
    });
    // The same resolve asked again is this one; another is refused, naming whose and why.
    const again = await call(site, 'POST', path, own, body);
    expect(again.status).toBe(200);
    expect(again.json()).toMatchObject({ replayed: true });
    const other = await call(
      site,
      'POST',
      path,
      own,
      JSON.stringify({ as: 'failed', reason: 'another reason' }),
    );
    expect(other.status).toBe(409);
    expect(other.json()).toMatchObject({
      code: 'ALREADY_SETTLED',
      detail: expect.stringContaining('resolved by "ops (status page, 127.0.0.1)"') as unknown,
    });
  });

  it('logout ends the session and clears the cookie; the old cookie is worthless', async () => {
    const { cookie, csrf } = await login(site, TOKENS.ops);
    const out = await call(
      site,
      'POST',
      '/ui/api/logout',
      { ...JSON_POST, cookie, origin: site.origin, 'x-csrf-token': csrf },
      '{}',
    );
    expect(out.status).toBe(204);
    expect(String(out.headers['set-cookie'])).toMatch(
      /^__Host-sluice-session=; Path=\/; Max-Age=0;/,
    );
    expect((await call(site, 'GET', '/ui/api/devices', { cookie })).status).toBe(401);
  });

  it('never logs a token or a session id', async () => {
    const { cookie, csrf } = await login(site, TOKENS.ops);
    await call(site, 'GET', '/ui/api/devices', { cookie });
    const log = site.log();
    expect(log).toContain('status page login');
    for (const secret of [...Object.values(TOKENS), cookie.split('=')[1]!, csrf]) {
      expect(log).not.toContain(secret);
    }
  });
});

/** An event stream as the page opens it: its status, headers, and the text so far. */
function openStream(cookie: string): Promise<{
  status: number;
  headers: Record<string, string | string[] | undefined>;
  text: () => string;
  ended: () => boolean;
  close: () => void;
}> {
  return new Promise((resolve, reject) => {
    let text = '';
    let ended = false;
    const req = requestEvents(site, cookie, (res) => {
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      res.on('end', () => (ended = true));
      resolve({
        status: res.statusCode ?? 0,
        headers: res.headers,
        text: () => text,
        ended: () => ended,
        close: () => req.destroy(),
      });
    });
    req.once('error', reject);
  });
}

describe('the event stream', () => {
  it('sends the devices, the gateway and a commands cue at once, and ends with the session', async () => {
    const { cookie, csrf } = await login(site, TOKENS.ops);
    const stream = await openStream(cookie);
    expect(stream.status).toBe(200);
    expect(stream.headers['content-type']).toBe('text/event-stream');
    expect(stream.headers['content-security-policy']).toBeDefined();
    await until(() => (stream.text().includes('event: commands') ? true : undefined), 5_000);
    const text = stream.text();
    expect(text).toMatch(/^retry: 2000\n\n/);
    const devices = /event: devices\ndata: (.*)\n\n/.exec(text);
    expect(JSON.parse(devices![1]!)).toMatchObject({
      devices: [{ id: 'inlet-valve' }, { id: 'drain-valve' }],
    });
    expect(text).toMatch(/event: gateway\ndata: \{"gatewayId":"uisite"/);
    expect(text).toContain('event: commands\ndata: {}\n\n');
    // HEAD has no stream: refused like any method the route does not serve.
    const head = await call(site, 'HEAD', '/ui/api/events', { cookie });
    expect(head.status).toBe(405);

    await call(
      site,
      'POST',
      '/ui/api/logout',
      { ...JSON_POST, cookie, origin: site.origin, 'x-csrf-token': csrf },
      '{}',
    );
    await until(() => (stream.ended() ? true : undefined), 5_000, 'the stream ended');
    expect(stream.text()).toMatch(/event: session\ndata: \{"ended":true\}\n\n$/);
    stream.close();

    lingering = await openStream((await login(site, TOKENS.desk)).cookie);
    expect(lingering.status).toBe(200);
  });
});

describe('failed logins', () => {
  it('are throttled per address after five in a minute; the answer says how long to wait', async () => {
    // Another host (127.0.0.4), from which no one has logged in yet.
    const other = '127.0.0.4';
    const answers: number[] = [];
    for (let i = 0; i < 6; i++) {
      answers.push((await login(site, `wrong-${i}`, other)).answer.status);
    }
    expect(answers).toEqual([401, 401, 401, 401, 401, 429]);
    // A correct token is answered as a guess is: the guesser learns nothing.
    const throttled = await login(site, TOKENS.ops, other);
    expect(throttled.answer.status).toBe(429);
    expect(Number(throttled.answer.headers['retry-after'])).toBeGreaterThan(0);
    expect(throttled.answer.headers['set-cookie']).toBeUndefined();
  });

  it('leave an operator who logged in from the address before it was held logging in', async () => {
    // 127.0.0.1, where ops and desk logged in above: a client beside them keeps failing.
    const answers: number[] = [];
    for (let i = 0; i < 6; i++) answers.push((await login(site, `stale-${i}`)).answer.status);
    // One wrong token was tried above already.
    expect(answers.slice(0, 4)).toEqual([401, 401, 401, 401]);
    expect(answers[5]).toBe(429);
    const ops = await login(site, TOKENS.ops);
    expect(ops.answer.status).toBe(200);
    expect(ops.cookie).not.toBe('');
  });
});
