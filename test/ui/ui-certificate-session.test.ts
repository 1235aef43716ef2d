import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { makePki, type Pem, type Pki } from '../intake/https-client.js';
import { until } from '../helpers/mosquitto.js';
import {
  call,
  login,
  openWithReadsHeld,
  OPS_CN,
  ORPHAN,
  requestEvents,
  startUiSite,
  TOKENS,
  type UiSite,
} from './ui-site.js';

/**
 * A status page session started by a client certificate ends when the certificate does
 * (src/intake/ui-session.ts): the /v1 routes check a certificate's validity at every request,
 * and the page's cookie must not carry the identity past notAfter either. The real daemon with
 * mutual TLS, sluice-sim, a real certificate that expires seconds after the login; ground
 * truth is the journal file, read through a connection of the test's own, and the valve's
 * write log. A reverify still waiting for its readback at notAfter is answered 401 then.
 */

let site: UiSite;
let pki: Pki;

beforeAll(async () => {
  pki = await makePki();
  site = await startUiSite({ mqtt: false, opcua: false, clientCaFile: pki.clientCaFile });
}, 60_000);

afterAll(async () => {
  await site.stop();
  pki.cleanup();
});

/** Resolves once the wall clock is past `instant`: the event a certificate's expiry is. */
async function pastInstant(instant: Date): Promise<void> {
  while (Date.now() <= instant.getTime()) {
    await new Promise((resolve) => setTimeout(resolve, instant.getTime() + 1 - Date.now()));
  }
}

/** A certificate for `ops` whose validity ends `ms` from now, at a whole second. */
async function shortLived(ms: number): Promise<{ cert: Pem; notAfter: Date }> {
  const notAfter = new Date(Math.ceil((Date.now() + ms) / 1_000) * 1_000);
  return { cert: await pki.client(OPS_CN, { notAfter }), notAfter };
}

/** Logs in as the page does with no token: the connection's client certificate decides. */
async function certificateLogin(cert: Pem) {
  const answer = await call(
    { ...site, clientCert: cert },
    'POST',
    '/ui/api/login',
    { origin: site.origin, 'content-type': 'application/json' },
    '{}',
  );
  const setCookie = answer.headers['set-cookie'];
  const first = Array.isArray(setCookie) ? (setCookie[0] ?? '') : (setCookie ?? '');
  return {
    answer,
    setCookie: first,
    cookie: first.split(';')[0] ?? '',
    csrf: answer.status === 200 ? answer.json<{ csrfToken: string }>().csrfToken : '',
  };
}

function onFile(key: string): { state: string; code: string | null } {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    const r = journal.findByKey(key)[0]!;
    return { state: r.state, code: r.code };
  } finally {
    journal.close();
  }
}

function historyLength(): number {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    return journal.history({ scope: ORPHAN.scope, key: ORPHAN.key }).length;
  } finally {
    journal.close();
  }
}

/** The page's event stream for a session, read as text until it ends. */
function openStream(cookie: string): Promise<{ status: number; text: () => string }> {
  return new Promise((resolve, reject) => {
    let text = '';
    const req = requestEvents(site, cookie, (res) => {
      res.setEncoding('utf8');
      res.on('data', (c: string) => (text += c));
      resolve({ status: res.statusCode ?? 0, text: () => text });
    });
    req.once('error', reject);
  });
}

describe('a status page session started by a client certificate', () => {
  it('works until the certificate expires, then is 401 and resolves nothing; the log says why', async () => {
    const { cert, notAfter } = await shortLived(6_000);
    // The daemon reckons Max-Age from its own clock when it answers, no earlier than this.
    const loginSent = Date.now();
    const ops = await certificateLogin(cert);
    expect(ops.answer.status).toBe(200);
    expect(ops.answer.json()).toMatchObject({ identity: 'ops', role: 'operator' });
    expect(site.log()).toMatch(/"via":"certificate"[^\n]*status page login/);
    // The browser forgets the cookie no later than the certificate ends.
    const maxAge = Number(/Max-Age=(\d+)/.exec(ops.setCookie)?.[1]);
    expect(maxAge).toBeGreaterThan(0);
    expect(loginSent + maxAge * 1_000).toBeLessThanOrEqual(notAfter.getTime());

    const own = {
      cookie: ops.cookie,
      'x-csrf-token': ops.csrf,
      origin: site.origin,
      'content-type': 'application/json',
    };
    const path = `/ui/api/commands/${ORPHAN.scope}/${ORPHAN.key}/resolve`;
    // Before notAfter the session reads and may act: an invalid resolve is judged on its body.
    expect((await call(site, 'GET', '/ui/api/session', { cookie: ops.cookie })).status).toBe(200);
    expect((await call(site, 'GET', '/ui/api/devices', { cookie: ops.cookie })).status).toBe(200);
    const early = await call(site, 'POST', path, own, JSON.stringify({ reason: '' }));
    expect(early.status).toBe(400);
    expect(Date.now()).toBeLessThan(notAfter.getTime());
    const stream = await openStream(ops.cookie);
    expect(stream.status).toBe(200);

    await pastInstant(notAfter);
    const before = historyLength();
    const resolved = await call(
      site,
      'POST',
      path,
      own,
      JSON.stringify({ as: 'failed', reason: 'after the certificate expired' }),
    );
    expect(resolved.status).toBe(401);
    expect(resolved.json()).toMatchObject({ code: 'UNAUTHORIZED' });
    expect(onFile(ORPHAN.key)).toEqual({ state: 'accepted', code: null });
    expect(historyLength()).toBe(before);
    for (const read of ['/ui/api/session', '/ui/api/devices', '/ui/api/commands']) {
      expect((await call(site, 'GET', read, { cookie: ops.cookie })).status, read).toBe(401);
    }
    // The page's open stream is told the session ended: the page shows its login again.
    await until(
      () => (stream.text().includes('event: session\ndata: {"ended":true}') ? true : undefined),
      5_000,
      'the stream says the session ended',
    );
    const ended = site
      .log()
      .split('\n')
      .filter((l) => l.includes('status page session ended'));
    expect(ended).toHaveLength(1);
    expect(ended[0]).toContain('"identity":"ops"');
    expect(ended[0]).toContain(
      `the client certificate it was started with (or its chain) expired at ${notAfter.toISOString()}`,
    );

    // A token session is not bounded by any certificate: it goes on.
    const token = await login(site, TOKENS.ops);
    expect((await call(site, 'GET', '/ui/api/session', { cookie: token.cookie })).status).toBe(200);
  }, 60_000);

  it("a reverify whose readback runs when the certificate expires is answered 401 at the expiry, never with the readback's verdict", async () => {
    // As a reload that replaces a token (ui-session-token-reload.test.ts): the session's
    // authority to ask and be told ends with the certificate, while the readback goes on and
    // settles the command as any readback does. Before, a lapse by expiry was found only when
    // the reverify answered: it waited out its readback (10 s) and then said 401.
    const { cert, notAfter } = await shortLived(4_000);
    const ops = await certificateLogin(cert);
    expect(ops.answer.status).toBe(200);
    const KEY = 'reverify-across-expiry';
    // Its write taken by the valve (ground truth), then every read of the valve held: no
    // readback can settle it until the test lets them go.
    const { drain, writesBefore } = await openWithReadsHeld(site, KEY);
    let answeredAt = 0;
    try {
      const sentAt = Date.now();
      const answered = call(
        site,
        'POST',
        `/ui/api/commands/scada/${KEY}/reverify`,
        {
          cookie: ops.cookie,
          'x-csrf-token': ops.csrf,
          origin: site.origin,
          'content-type': 'application/json',
        },
        '{}',
      ).then((answer) => {
        answeredAt = Date.now();
        return answer;
      });
      // The reverify is under way (its request in the command's history) before the expiry,
      // sent early enough that its own wait (10 s, from after it was sent) ends well after the
      // bound below.
      await until(
        () =>
          scadaHistory(KEY).some((d) => d.startsWith('reverify requested by ops'))
            ? true
            : undefined,
        10_000,
        "the reverify's note in the journal",
      );
      expect(Date.now()).toBeLessThan(notAfter.getTime());
      expect(sentAt + 10_000).toBeGreaterThan(notAfter.getTime() + 4_000);
      const answer = await answered;
      // At the expiry, not when the reverify's wait ran out: the readback is still held.
      expect(answeredAt).toBeGreaterThanOrEqual(notAfter.getTime());
      expect(answeredAt - notAfter.getTime()).toBeLessThan(2_500);
      expect(scadaState(KEY)).toBe('dispatched');
      expect(answer.status, answer.body).toBe(401);
      expect(answer.json()).toMatchObject({ code: 'UNAUTHORIZED' });
      expect(answer.body).not.toContain('"result"');
      const lines = site.log().split('\n');
      expect(lines.some((l) => l.includes('reverify from the status page not answered'))).toBe(
        true,
      );
      expect(
        lines.filter(
          (l) =>
            l.includes('status page session ended') &&
            l.includes(`expired at ${notAfter.toISOString()}`),
        ),
      ).toHaveLength(1);
    } finally {
      drain.clearFault('stall');
    }
    // The readback goes on and settles the command; the reverify wrote nothing.
    await until(
      () => (scadaState(KEY) === 'confirmed' ? true : undefined),
      20_000,
      'the open confirmed by its readback',
    );
    expect(drain.writeLog.length - writesBefore).toBe(1);
  }, 60_000);
});

function scadaHistory(key: string): string[] {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    return journal.history({ scope: 'scada', key }).map((e) => e.detail);
  } finally {
    journal.close();
  }
}

function scadaState(key: string): string {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    return journal.findByKey(key)[0]?.state ?? 'none';
  } finally {
    journal.close();
  }
}
