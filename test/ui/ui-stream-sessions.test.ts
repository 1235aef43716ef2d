import type { ClientRequest } from 'node:http';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { MAX_STREAMS, MAX_STREAMS_PER_SESSION } from '../../src/intake/ui-events.js';
import { login, requestEvents, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * Event streams are counted per session, against the daemon and sluice-sim: one session that
 * opens stream after stream (a page reopened in a loop, a misbehaving client) is refused once
 * it holds its share, and another operator's page still goes live. With one limit for all
 * streams, the first session took every one of them and the second was refused.
 */

let site: UiSite;
const open: ClientRequest[] = [];

beforeAll(async () => {
  site = await startUiSite({ mqtt: false, opcua: false });
}, 90_000);

afterAll(async () => {
  for (const req of open) req.destroy();
  await site.stop();
});

interface Opened {
  readonly status: number;
  /** The problem document of a refusal; for a stream, its first event. */
  readonly body: string;
  readonly req: ClientRequest;
}

/** Asks for an event stream; a stream is kept open, its first event read. */
function openStream(cookie: string): Promise<Opened> {
  return new Promise((resolve, reject) => {
    const req = requestEvents(site, cookie, (res) => {
      const status = res.statusCode ?? 0;
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        text += chunk;
        if (status === 200 && text.includes('event: devices\n')) {
          resolve({ status, body: text, req });
        }
      });
      res.on('end', () => {
        resolve({ status, body: text, req });
      });
    });
    req.once('error', reject);
    open.push(req);
  });
}

it('one session at its limit does not keep another session from its stream', async () => {
  const first = await login(site, TOKENS.ops);
  const second = await login(site, TOKENS.ops);
  expect(first.answer.status).toBe(200);
  expect(second.answer.status).toBe(200);

  // The first session opens streams until it is refused (never past the global ceiling).
  const streams: Opened[] = [];
  let refused: Opened | undefined;
  while (refused === undefined && streams.length <= MAX_STREAMS) {
    const opened = await openStream(first.cookie);
    if (opened.status === 200) streams.push(opened);
    else refused = opened;
  }
  expect(streams).toHaveLength(MAX_STREAMS_PER_SESSION);
  expect(refused?.status).toBe(503);
  expect(JSON.parse(refused?.body ?? '{}')).toMatchObject({
    code: 'TOO_MANY_STREAMS',
    detail: expect.stringContaining(
      `this session has ${MAX_STREAMS_PER_SESSION} event streams open`,
    ) as unknown,
  });

  // Another operator's page still goes live, with the plant in its first events.
  const other = await openStream(second.cookie);
  expect(other.status).toBe(200);
  expect(other.body).toContain('"id":"drain-valve"');

  // A stream the first session closes is its to open again, once the daemon has seen it go.
  streams[0]?.req.destroy();
  let again: Opened;
  for (;;) {
    again = await openStream(first.cookie);
    if (again.status !== 503) break;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  expect(again.status).toBe(200);
}, 60_000);

it('a page that ends its side of the connection has its stream ended at once, not at the next heartbeat', async () => {
  const session = await login(site, TOKENS.ops);
  const streams: Opened[] = [];
  for (let i = 0; i < MAX_STREAMS_PER_SESSION; i++) streams.push(await openStream(session.cookie));
  expect(streams.map((s) => s.status)).toEqual(streams.map(() => 200));
  expect((await openStream(session.cookie)).status).toBe(503);

  // The page goes: close_notify and a FIN, as a browser closing a tab ends its connection.
  const socket = streams[0]!.req.socket!;
  const closedAt = new Promise<number>((resolve) =>
    socket.once('close', () => {
      resolve(Date.now());
    }),
  );
  const endedAt = Date.now();
  socket.end();
  // The daemon ends the stream and the connection: well before its heartbeat (15 s), the next
  // write that would have found the connection gone.
  const closed = await Promise.race([
    closedAt,
    new Promise<null>((r) =>
      setTimeout(() => {
        r(null);
      }, 5_000),
    ),
  ]);
  expect(closed, 'the connection closed by the daemon').not.toBeNull();
  expect(closed! - endedAt).toBeLessThan(5_000);
  // And the session may open another at once: the daemon no longer counts the one gone.
  expect((await openStream(session.cookie)).status).toBe(200);
}, 60_000);
