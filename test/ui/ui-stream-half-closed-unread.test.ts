import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { ClientRequest, IncomingMessage, ServerResponse } from 'node:http';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { until } from '../helpers/mosquitto.js';
import {
  call,
  login,
  requestEvents,
  startUiSite,
  TOKENS,
  writtenAsync,
  type UiSite,
} from './ui-site.js';

/**
 * A page that stops reading its event stream, then half-closes its connection (a tablet that
 * went to sleep, then dropped the page), then logs out, against the daemon and sluice-sim over
 * TLS. The half-close ends the stream while the kernel's buffers are full: its last bytes stay
 * in the daemon's response, whose 'close' never comes. The daemon kept the stream until then,
 * wrote its next event after its end (an error fastify took) and, at the logout, its session's
 * end (an error nothing took): an uncaught exception, which ends sluiced (src/daemon/run.ts
 * only watches them). Ground truth: the uncaught exceptions of this process, where the daemon
 * runs, up to the `session` event of another stream of the same session, sent in the same
 * look at the streams as the held one's and read after it.
 *
 * What the kernel holds of a connection whose client does not read (about 4 MB on loopback) is
 * filled fast with answers of the page's script, up to a little below what a first such
 * connection took; the stream's own events, small (a plant of eight valves: about 5 KB each,
 * five a second while drain-valve travels), fill the rest. So the stream is held with less
 * than Node's high-water mark in the daemon — not behind, its next event written — within a
 * second or two, where its events alone took over a minute to fill the kernel.
 */

let site: UiSite;

beforeAll(async () => {
  site = await startUiSite({ mqtt: false, opcua: false, bulkValves: 6, drainTravelMs: 10_000 });
}, 90_000);

afterAll(async () => {
  await site.stop();
});

/** A stream read as it arrives: its events' names, in order. */
interface Reader {
  readonly events: string[];
  readonly req: ClientRequest;
}

function readStream(cookie: string): Promise<Reader> {
  return new Promise((resolve, reject) => {
    const events: string[] = [];
    const req = requestEvents(site, cookie, (res) => {
      let pending = '';
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        pending += chunk;
        let end = pending.indexOf('\n\n');
        while (end >= 0) {
          const name = /^event: (\w+)$/m.exec(pending.slice(0, end))?.[1];
          if (name !== undefined) events.push(name);
          pending = pending.slice(end + 2);
          end = pending.indexOf('\n\n');
        }
        if (events.includes('devices')) resolve({ events, req });
      });
    });
    req.once('error', reject);
  });
}

/**
 * A connection of the test's own whose answers it does not read: what the daemon sends on it
 * stays in the kernel's buffers and, once they are full, in the daemon's response. The daemon's
 * responses on it are seen as they start (Node's http.server.request.start channel).
 */
class Unread {
  private readonly waiting: ((res: ServerResponse) => void)[] = [];
  /** Bytes of the connection the kernel has taken (sent, or in its buffers). */
  taken = 0;
  private readonly onRequest = (message: unknown): void => {
    const { request: req, response } = message as {
      request: IncomingMessage;
      response: ServerResponse;
    };
    if (req.socket.remotePort === this.client.localPort) this.waiting.shift()?.(response);
  };

  private constructor(readonly client: TLSSocket) {
    subscribe('http.server.request.start', this.onRequest);
  }

  static async open(): Promise<Unread> {
    const client = connect({ host: '127.0.0.1', port: site.port, ca: site.cert });
    await new Promise<void>((resolve, reject) => {
      client.once('secureConnect', () => {
        resolve();
      });
      client.once('error', reject);
    });
    client.pause();
    return new Unread(client);
  }

  /** Sends a GET; resolves with the daemon's response to it as it starts. */
  get(path: string, headers = ''): Promise<ServerResponse> {
    const started = new Promise<ServerResponse>((resolve) => this.waiting.push(resolve));
    this.client.write(`GET ${path} HTTP/1.1\r\nHost: 127.0.0.1:${site.port}\r\n${headers}\r\n`);
    return started;
  }

  /**
   * Asks for a file of the status page: true once the kernel has taken the whole answer, false
   * when the kernel's buffers are full (the answer's last bytes stay in the daemon).
   */
  async file(name: string): Promise<boolean> {
    const res = await this.get(`/ui/${name}`);
    // Let go of by the response once it is written out.
    const socket = res.socket;
    if (!res.writableEnded) await event(res, 'prefinish', 10_000);
    const taken = res.writableFinished || (await event(res, 'finish', 200));
    // A 'finish' late for a busy event loop, not for the kernel, is not taken for full.
    await new Promise(setImmediate);
    this.taken = (socket?.bytesWritten ?? 0) - res.writableLength;
    return taken || res.writableFinished;
  }

  close(): void {
    unsubscribe('http.server.request.start', this.onRequest);
    this.client.destroy();
  }
}

/** Whether `res` emits `name` within `ms`. */
function event(res: ServerResponse, name: string, ms: number): Promise<boolean> {
  return new Promise((resolve) => {
    const timer = setTimeout(() => {
      res.off(name, done);
      resolve(false);
    }, ms);
    const done = (): void => {
      clearTimeout(timer);
      resolve(true);
    };
    res.once(name, done);
  });
}

const SCRIPT = { name: 'app.js', bytes: 36_000 };
const PAGE = { name: 'index.html', bytes: 7_000 };
/** Left for the stream's events: a few of them. */
const ROOM = 16 * 1024;

it('a page that stops reading its stream, half-closes its connection and logs out leaves the daemon running', async () => {
  // Five devices events a second for the next ten seconds.
  await writtenAsync(site, 'half-closed-travel', 'open');

  // What the kernel takes of a connection whose client reads nothing, filled with the script.
  const probe = await Unread.open();
  let capacity: number;
  try {
    while (await probe.file(SCRIPT.name));
    capacity = probe.taken;
  } finally {
    probe.close();
  }

  const uncaught: string[] = [];
  const onUncaught = (error: Error & { code?: string }): void => {
    uncaught.push(error.code ?? error.message);
  };
  process.on('uncaughtException', onUncaught);
  const { cookie, csrf } = await login(site, TOKENS.ops);
  const reader = await readStream(cookie);
  const page = await Unread.open();
  try {
    // Filled as the probe was, up to a little below what it took.
    for (const file of [SCRIPT, PAGE]) {
      while (page.taken + file.bytes <= capacity - ROOM) {
        if (!(await page.file(file.name))) {
          throw new Error(
            `the kernel took ${String(page.taken)} bytes of this connection, ${String(capacity)} of the first`,
          );
        }
      }
    }
    const held = await page.get(
      '/ui/api/events',
      `Cookie: ${cookie}\r\nAccept: text/event-stream\r\n`,
    );
    // The kernel full: bytes of the stream stay in the daemon (not for a turn of the event loop
    // only), fewer than Node's high-water mark, so the stream is not behind.
    let since: number | null = null;
    await until(
      () => {
        if (held.writableLength >= held.writableHighWaterMark) {
          throw new Error('the stream went behind before the half-close');
        }
        if (held.writableLength === 0) since = null;
        else since ??= performance.now();
        return since !== null && performance.now() - since >= 30 ? true : undefined;
      },
      20_000,
      'bytes of the stream held in the daemon',
    );
    // The page half-closes: the daemon ends the stream, its last bytes still in its response.
    page.client.end();
    await until(() => (held.writableEnded ? true : undefined), 5_000, 'the stream ended');
    expect(held.writableFinished).toBe(false);
    // An event sent to the session's streams after that end.
    const seen = reader.events.length;
    await until(() => (reader.events.length > seen ? true : undefined), 5_000, 'the next event');

    // The session ends: at the next look, its streams are told so.
    const out = await call(
      site,
      'POST',
      '/ui/api/logout',
      { cookie, origin: site.origin, 'x-csrf-token': csrf, 'content-type': 'application/json' },
      '{}',
    );
    expect(out.status).toBe(204);
    await until(
      () => (reader.events.includes('session') ? true : undefined),
      5_000,
      "the reading stream told of its session's end",
    );
  } finally {
    process.off('uncaughtException', onUncaught);
    page.close();
    reader.req.destroy();
  }
  expect(uncaught).toEqual([]);
});
