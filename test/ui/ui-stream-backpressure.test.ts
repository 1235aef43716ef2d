import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { until } from '../helpers/mosquitto.js';
import { call, login, requestEvents, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * A page that stops reading its event stream (a tablet asleep with its connection half-open, a
 * stalled browser) against the daemon and sluice-sim, with a plant of 400 valves whose devices
 * event is about 240 KB (120 KB for 200), five a second while a valve travels: the kernel's
 * buffers fill in seconds, twice as fast as with 200 valves. Once the kernel's socket buffers
 * are full (about 4 MB on loopback), what the daemon still holds for that stream — its
 * response's writableLength, read from the server's own response object — must stay bounded
 * while a page that reads gets megabytes more; and when the stalled page reads again, the
 * last devices event it gets is the plant as it is, not a state from while it slept.
 */

let site: UiSite;

beforeAll(async () => {
  site = await startUiSite({ mqtt: false, opcua: false, bulkValves: 400 });
}, 90_000);

afterAll(async () => {
  await site.stop();
});

/** What the daemon may hold for one stream: Node's high-water mark and one large event. */
const BOUND = 1024 * 1024;

interface Mirror {
  readonly state: string;
  readonly position: number | null;
}

/** An event stream as the page opens it, read as it arrives (or held, paused). */
interface Stream {
  /** Bytes read so far. */
  bytes(): number;
  /** drain-valve's mirror in the last devices event read. */
  drainValve(): Mirror | null;
  pause(): void;
  resume(): void;
  close(): void;
}

function openStream(cookie: string, paused: boolean): Promise<Stream> {
  return new Promise((resolve, reject) => {
    let bytes = 0;
    let pending = '';
    let mirror: Mirror | null = null;
    const read = (chunk: string): void => {
      bytes += Buffer.byteLength(chunk);
      pending += chunk;
      let end = pending.indexOf('\n\n');
      while (end >= 0) {
        const event = pending.slice(0, end);
        pending = pending.slice(end + 2);
        end = pending.indexOf('\n\n');
        if (!event.startsWith('event: devices\ndata: ')) continue;
        const doc = JSON.parse(event.slice('event: devices\ndata: '.length)) as {
          devices: { id: string; mirror: Mirror | null }[];
        };
        const valve = doc.devices.find((d) => d.id === 'drain-valve')?.mirror ?? null;
        mirror = valve === null ? null : { state: valve.state, position: valve.position };
      }
    };
    const req = requestEvents(site, cookie, (res) => {
      expect(res.statusCode).toBe(200);
      res.setEncoding('utf8');
      // A paused response stops reading its socket once its own small buffer is full: the
      // kernel's buffers fill, then the daemon's.
      if (paused) res.pause();
      res.on('data', read);
      resolve({
        bytes: () => bytes,
        drainValve: () => mirror,
        pause: () => res.pause(),
        resume: () => res.resume(),
        close: () => req.destroy(),
      });
    });
    req.once('error', reject);
  });
}

it('a page that stops reading costs the daemon a bounded buffer, and reads the plant as it is afterwards', async () => {
  const { cookie } = await login(site, TOKENS.ops);
  // The daemon's side of the stalled stream: its response, as the server made it.
  const responses: ServerResponse[] = [];
  const onRequest = (message: unknown): void => {
    const { request: req, response } = message as {
      request: IncomingMessage;
      response: ServerResponse;
    };
    if (req.url === '/ui/api/events') responses.push(response);
  };
  subscribe('http.server.request.start', onRequest);
  const stalled = await openStream(cookie, true);
  unsubscribe('http.server.request.start', onRequest);
  expect(responses).toHaveLength(1);
  const held = responses[0]!;
  // A page that reads: it gets every event the stalled one is offered.
  const reader = await openStream(cookie, false);

  // drain-valve travels back and forth, 3 s each way: a devices event every 200 ms.
  const travelling = { on: true };
  const travel = (async () => {
    for (let i = 0; travelling.on; i++) {
      const answer = await call(
        site,
        'POST',
        '/v1/commands',
        {
          authorization: `Bearer ${TOKENS.ops}`,
          'content-type': 'application/json',
          'idempotency-key': `backpressure-${i}`,
          prefer: 'wait=20',
        },
        JSON.stringify({ device: 'drain-valve', action: i % 2 === 0 ? 'open' : 'close' }),
      );
      expect(answer.status, answer.body).toBe(200);
    }
  })();

  let peak = 0;
  // The kernel holds the first few MB of the stalled stream (about 4 MB on loopback, more or
  // less elsewhere); once it takes no more, what the daemon writes for that stream stays in its
  // response, and only from then on can a missing bound show. The kernel is full once the
  // response has held something at every look for a second (a write the kernel takes leaves it
  // in microseconds); the reading page then gets 2 MiB more, twice the bound, which an unbounded
  // daemon would hold on top of what it already held (3 MiB more: the old code held 4 MB).
  let heldSince: number | null = null;
  let fullAtBytes: number | null = null;
  try {
    await until(
      () => {
        peak = Math.max(peak, held.writableLength);
        if (held.writableLength === 0) heldSince = null;
        else heldSince ??= performance.now();
        if (fullAtBytes === null && heldSince !== null && performance.now() - heldSince >= 1_000) {
          fullAtBytes = reader.bytes();
        }
        return fullAtBytes !== null && reader.bytes() > fullAtBytes + 2 * BOUND ? true : undefined;
      },
      90_000,
      'the reading page got 2 MiB of events past the stalled stream filling the kernel',
    );
  } finally {
    travelling.on = false;
    await travel;
  }
  // Without a bound, the daemon held everything the kernel could not: megabytes.
  expect(peak).toBeLessThan(BOUND);
  expect(held.destroyed).toBe(false);

  // The valve rests; the reading page sees it so, and the stalled page, reading again, ends on
  // the same state, however much it missed.
  const rest = await until(
    () => {
      const m = reader.drainValve();
      return m !== null && (m.state === 'OPEN' || m.state === 'CLOSED') ? m : undefined;
    },
    10_000,
    'the reading page shows the valve at rest',
  );
  const before = stalled.bytes();
  stalled.resume();
  await until(
    () => {
      const m = stalled.drainValve();
      return stalled.bytes() > before && m?.state === rest.state && m.position === rest.position
        ? true
        : undefined;
    },
    20_000,
    `the stalled page shows the valve ${rest.state} at ${String(rest.position)} %`,
  );
  expect(reader.drainValve()).toEqual(rest);
  stalled.close();
  reader.close();
}, 150_000);
