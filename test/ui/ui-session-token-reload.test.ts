import { writeFileSync, renameSync } from 'node:fs';
import type { ClientRequest } from 'node:http';
import { request } from 'node:https';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { until } from '../helpers/mosquitto.js';
import {
  call,
  FILE_TOKENS,
  login,
  openWithReadsHeld,
  ORPHAN,
  requestEvents,
  startUiSite,
  TOKENS,
  type UiSite,
} from './ui-site.js';

/**
 * A token rotated out by a reload (SIGHUP, `systemctl reload sluiced`; token-reload.ts) ends the
 * status page sessions started with it, there and then: an operator who revokes a leaked token
 * expects everything opened with it to stop working at once. The page's event stream says its
 * session ended and closes; its next read is 401; a resolve it sends is refused and journals
 * nothing, one whose body was still on its way when the reload came too. Sessions started with
 * tokens still configured (the same identity's other token, another identity's unchanged file)
 * go on. Before, such a session lived on until its idle or maximum age (12 h): its resolve was
 * journaled. The daemon built from its site file (the reload is its own, as SIGHUP runs it),
 * sluice-sim, real TLS; ground truth: the journal's file and the listener's answers.
 */

let site: UiSite;
const open: ClientRequest[] = [];

beforeAll(async () => {
  site = await startUiSite({
    mqtt: false,
    opcua: false,
    tokenFiles: true,
    orphans: ['orphan-in-flight'],
  });
}, 90_000);

afterAll(async () => {
  for (const req of open) req.destroy();
  await site.stop();
});

function onFile(key: string): { state: string; resolves: number } {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    const r = journal.findByKey(key)[0]!;
    const history = journal.history({ scope: ORPHAN.scope, key });
    return { state: r.state, resolves: history.filter((e) => e.to === 'failed').length };
  } finally {
    journal.close();
  }
}

interface Stream {
  readonly status: number;
  /** All it carried, once the daemon has ended it. */
  readonly ended: Promise<string>;
  /** Resolves once it has carried `text`. */
  carried(text: string): Promise<void>;
}

/** An event stream kept open. */
function openStream(cookie: string): Promise<Stream> {
  return new Promise((resolve, reject) => {
    const req = requestEvents(site, cookie, (res) => {
      let text = '';
      res.setEncoding('utf8');
      const ended = new Promise<string>((done) => {
        res.on('end', () => {
          done(text);
        });
      });
      const waiting: { text: string; done: () => void }[] = [];
      res.on('data', (chunk: string) => {
        text += chunk;
        for (const w of waiting.filter((w) => text.includes(w.text))) {
          waiting.splice(waiting.indexOf(w), 1);
          w.done();
        }
      });
      resolve({
        status: res.statusCode ?? 0,
        ended,
        carried: (wanted) =>
          text.includes(wanted)
            ? Promise.resolve()
            : new Promise<void>((done) => waiting.push({ text: wanted, done })),
      });
    });
    req.once('error', reject);
    open.push(req);
  });
}

const changeHeaders = (s: { cookie: string; csrf: string }): Record<string, string> => ({
  cookie: s.cookie,
  'x-csrf-token': s.csrf,
  origin: site.origin,
  'content-type': 'application/json',
});

/** Rotates ops's token file (written beside, renamed over) and reloads as SIGHUP does. */
function rotateOpsToken(token: string): void {
  const file = site.tokenFile('ops');
  writeFileSync(`${file}.new`, `${token}\n`, { mode: 0o600 });
  renameSync(`${file}.new`, file);
  const reload = site.daemon.reloadTlsFiles();
  expect(reload).not.toBeNull();
}

it('a reload that replaces a token ends the sessions started with it at once; the others go on', async () => {
  const rotated = await login(site, FILE_TOKENS.ops);
  const sameIdentity = await login(site, TOKENS.ops);
  const viewer = await login(site, TOKENS.desk);
  for (const s of [rotated, sameIdentity, viewer]) expect(s.answer.status).toBe(200);
  const stream = await openStream(rotated.cookie);
  expect(stream.status).toBe(200);
  const otherStream = await openStream(sameIdentity.cookie);
  expect(otherStream.status).toBe(200);
  const path = `/ui/api/commands/${ORPHAN.scope}/${ORPHAN.key}`;
  expect((await call(site, 'GET', path, { cookie: rotated.cookie })).status).toBe(200);

  const NEW = 'ops-file-token-after-rotation';
  rotateOpsToken(NEW);

  // Its page is told at once, and its stream ends: not at its next request, or 12 h later.
  const carried = await Promise.race([
    stream.ended,
    new Promise<never>((_, reject) =>
      setTimeout(() => {
        reject(new Error('the stream of the session whose token was replaced is still open'));
      }, 5_000),
    ),
  ]);
  expect(carried).toContain('event: session\ndata: {"ended":true}\n\n');
  for (const [method, url] of [
    ['GET', '/ui/api/session'],
    ['GET', path],
  ] as const) {
    const answer = await call(site, method, url, { cookie: rotated.cookie });
    expect(answer.status).toBe(401);
    expect(answer.json()).toMatchObject({ code: 'UNAUTHORIZED' });
  }
  const resolve = await call(
    site,
    'POST',
    `${path}/resolve`,
    changeHeaders(rotated),
    JSON.stringify({ as: 'failed', reason: 'sent with a revoked token' }),
  );
  expect(resolve.status).toBe(401);
  const reverify = await call(site, 'POST', `${path}/reverify`, changeHeaders(rotated), '{}');
  expect(reverify.status).toBe(401);
  expect(onFile(ORPHAN.key)).toEqual({ state: 'accepted', resolves: 0 });
  // The old token logs in no more.
  expect((await login(site, FILE_TOKENS.ops)).answer.status).toBe(401);

  // Tokens still configured: ops's other token, desk's unchanged file.
  for (const s of [sameIdentity, viewer]) {
    expect((await call(site, 'GET', '/ui/api/session', { cookie: s.cookie })).status).toBe(200);
  }
  // The audit log says which session ended and why, a warning.
  const ended = site
    .log()
    .split('\n')
    .filter((l) => l.includes('status page session ended'))
    .map((l) => JSON.parse(l) as { level: number; identity: string; lapse: string; msg: string });
  expect(ended).toEqual([
    expect.objectContaining({
      level: 40,
      identity: 'ops',
      lapse: 'token',
      msg: "status page session ended: the token it was started with is no longer identities.ops's (replaced by a reload)",
    }),
  ]);

  // The new token's session acts; the same identity's other session still does.
  const fresh = await login(site, NEW);
  expect(fresh.answer.status).toBe(200);
  const done = await call(
    site,
    'POST',
    `${path}/resolve`,
    changeHeaders(sameIdentity),
    JSON.stringify({ as: 'failed', reason: 'closed by hand' }),
  );
  expect(done.status).toBe(200);
  expect(onFile(ORPHAN.key)).toEqual({ state: 'failed', resolves: 1 });
  // Its stream was left open by the reload: it carries the resolve's cue.
  await otherStream.carried(`"key":"${ORPHAN.key}","scope":"${ORPHAN.scope}"`);
}, 60_000);

it('a resolve whose body is on its way when the reload ends its session journals nothing', async () => {
  const KEY = 'orphan-in-flight';
  const token = 'ops-file-token-second';
  rotateOpsToken(token);
  const session = await login(site, token);
  expect(session.answer.status).toBe(200);
  expect(onFile(KEY)).toEqual({ state: 'accepted', resolves: 0 });
  const body = JSON.stringify({ as: 'failed', reason: 'sent across a reload' });
  const answer = await new Promise<{ status: number; text: string }>((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: site.port,
        method: 'POST',
        path: `/ui/api/commands/${ORPHAN.scope}/${KEY}/resolve`,
        ca: site.cert,
        agent: false,
        headers: {
          ...changeHeaders(session),
          'content-length': Buffer.byteLength(body),
          // The daemon answers 100 Continue in the turn it takes the request's head up, and its
          // session checks in front of the route run in that turn: once the client has it, the
          // request is past them and its body is still to come.
          expect: '100-continue',
        },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, text });
        });
      },
    );
    req.once('error', reject);
    req.once('continue', () => {
      rotateOpsToken('ops-file-token-third');
      req.end(body);
    });
    req.flushHeaders();
  });
  expect(answer.status).toBe(401);
  expect(JSON.parse(answer.text)).toMatchObject({ code: 'UNAUTHORIZED' });
  expect(onFile(KEY)).toEqual({ state: 'accepted', resolves: 0 });
}, 60_000);

it("a reverify whose readback runs when a reload ends its session is answered 401 at once, never with the readback's verdict", async () => {
  // A reverify is a read: its readback settles the command as any readback does, and goes on.
  // What the session lost at the reload is its authority to ask and be told: before, the
  // request waited out its readback (up to 10 s) and answered 200 with the verdict, the one
  // action of the session not refused at the reload.
  const token = 'ops-file-token-reverify';
  rotateOpsToken(token);
  const session = await login(site, token);
  expect(session.answer.status).toBe(200);
  const KEY = 'reverify-across-reload';
  // Its write taken by the valve (ground truth), then every read of the valve held: no
  // readback can confirm it until the test lets them go.
  const { drain, writesBefore } = await openWithReadsHeld(site, KEY);
  try {
    const path = `/ui/api/commands/scada/${KEY}/reverify`;
    const answered = call(site, 'POST', path, changeHeaders(session), '{}');
    // The reverify is under way: its request is in the command's history.
    await until(
      () =>
        historyOf(KEY).some((d) => d.startsWith('reverify requested by ops')) ? true : undefined,
      10_000,
      "the reverify's note in the journal",
    );
    rotateOpsToken('ops-file-token-after-reverify');
    const answer = await answered;
    // Answered while the readback is still held: the command is open on file.
    expect(onFileOf(KEY).state).toBe('dispatched');
    expect(answer.status, answer.body).toBe(401);
    expect(answer.json()).toMatchObject({ code: 'UNAUTHORIZED' });
    expect(answer.body).not.toContain('"result"');
    // Said with the command's key and device, as every line about a command (SPEC §9).
    const unanswered = site
      .log()
      .split('\n')
      .filter((l) => l.includes('reverify from the status page not answered'))
      .map((l) => JSON.parse(l) as unknown);
    expect(unanswered).toEqual([expect.objectContaining({ key: KEY, device: 'drain-valve' })]);
  } finally {
    drain.clearFault('stall');
  }
  // The readback goes on and settles the command as any readback does; the reverify wrote
  // nothing: one write of the open at the valve.
  await until(
    () => (onFileOf(KEY).state === 'confirmed' ? true : undefined),
    20_000,
    'the open confirmed by its readback',
  );
  expect(drain.writeLog.length - writesBefore).toBe(1);
}, 60_000);

function historyOf(key: string): string[] {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    return journal.history({ scope: 'scada', key }).map((e) => e.detail);
  } finally {
    journal.close();
  }
}

function onFileOf(key: string): { state: string } {
  const journal = SqliteJournal.open({ path: site.journalPath, readonly: true });
  try {
    const r = journal.findByKey(key)[0];
    return { state: r?.state ?? 'none' };
  } finally {
    journal.close();
  }
}
