import { subscribe, unsubscribe } from 'node:diagnostics_channel';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { afterAll, beforeAll, expect, it } from 'vitest';
import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { until } from '../helpers/mosquitto.js';
import { keyLookupFaults } from '../helpers/read-faults.js';
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
 * A status page stream that fell behind (its page stopped reading, the kernel's buffers and then
 * Node's full) is sent nothing more until it drains; on 'drain' it is caught up — the devices
 * and the gateway as they are then — from the drain listener, outside any request. That catch-up
 * reads the journal (the key of each device's command in flight), and a read that failed there
 * was thrown out of the listener: an uncaught exception, on which Node ends the daemon with a
 * valve travelling. The catch-up is guarded as the timers' pushes are: the failure is said, the
 * stream is no longer held, and it is brought up to date once the journal reads again.
 *
 * The real daemon and status page over TLS, sluice-sim over real sockets, with a plant of 400
 * valves whose devices event is about 240 KB, so that a page that stops reading while a valve
 * travels fills the kernel's buffers in seconds. One double, for a fault no filesystem here can
 * aim at one statement: the journal's lookup of the travelling command's key fails while armed
 * (test/helpers/read-faults.ts); every other read and write goes through. The daemon's response
 * for the stream is read (as the server made it) only to know when it is behind and when it has
 * drained. Ground truth: the simulator's write log, the journal, what the page's client received.
 */

let site: UiSite;
/**
 * Exceptions no handler took while the daemon ran in this process: each one the `sluiced`
 * process would have ended on (src/daemon/run.ts watches for them the same way).
 */
const uncaught: unknown[] = [];
const onUncaught = (error: unknown): void => {
  uncaught.push(error);
};

beforeAll(async () => {
  process.on('uncaughtExceptionMonitor', onUncaught);
  site = await startUiSite({ mqtt: false, opcua: false, bulkValves: 400 });
}, 90_000);

afterAll(async () => {
  process.off('uncaughtExceptionMonitor', onUncaught);
  await site.stop();
});

interface Mirror {
  readonly state: string;
  readonly position: number | null;
}

/** An event stream as the page opens it, paused from the start: a page that does not read. */
function openPaused(cookie: string): Promise<{
  /** drain-valve's mirror in the last devices event read. */
  drainValve(): Mirror | null;
  /** Devices events read so far. */
  devices(): number;
  resume(): void;
  close(): void;
}> {
  return new Promise((resolve, reject) => {
    let pending = '';
    let devices = 0;
    let mirror: Mirror | null = null;
    const req = requestEvents(site, cookie, (res) => {
      expect(res.statusCode).toBe(200);
      res.setEncoding('utf8');
      res.pause();
      res.on('data', (chunk: string) => {
        pending += chunk;
        let end = pending.indexOf('\n\n');
        while (end >= 0) {
          const event = pending.slice(0, end);
          pending = pending.slice(end + 2);
          end = pending.indexOf('\n\n');
          if (!event.startsWith('event: devices\ndata: ')) continue;
          devices++;
          const doc = JSON.parse(event.slice('event: devices\ndata: '.length)) as {
            devices: { id: string; mirror: Mirror | null }[];
          };
          const valve = doc.devices.find((d) => d.id === 'drain-valve')?.mirror ?? null;
          mirror = valve === null ? null : { state: valve.state, position: valve.position };
        }
      });
      resolve({
        drainValve: () => mirror,
        devices: () => devices,
        resume: () => res.resume(),
        close: () => req.destroy(),
      });
    });
    req.once('error', reject);
  });
}

it("a journal read that fails in a drained stream's catch-up does not end the daemon, and the stream goes on", async () => {
  const { cookie } = await login(site, TOKENS.ops);
  const responses: ServerResponse[] = [];
  const onRequest = (message: unknown): void => {
    const { request: req, response } = message as {
      request: IncomingMessage;
      response: ServerResponse;
    };
    if (req.url === '/ui/api/events') responses.push(response);
  };
  subscribe('http.server.request.start', onRequest);
  const stalled = await openPaused(cookie);
  unsubscribe('http.server.request.start', onRequest);
  expect(responses).toHaveLength(1);
  const held = responses[0]!;
  const drain = site.plant.device('drain-valve');

  // drain-valve travels back and forth (3 s each way, a devices event every 200 ms) until the
  // stream is behind: a write of it refused, Node's buffer for it past its high-water mark.
  let i = 0;
  while (!held.writableNeedDrain) {
    const answer = await call(
      site,
      'POST',
      '/v1/commands',
      {
        authorization: `Bearer ${TOKENS.ops}`,
        'content-type': 'application/json',
        'idempotency-key': `fill-${i}`,
        prefer: 'wait=20',
      },
      JSON.stringify({ device: 'drain-valve', action: i % 2 === 0 ? 'open' : 'close' }),
    );
    expect(answer.status, answer.body).toBe(200);
    i++;
    expect(i, 'travels before the stream fell behind').toBeLessThan(30);
  }

  // A command in flight whose key cannot be read: every devices document fails while armed.
  const journal = (site.daemon as unknown as { journal: SqliteJournal }).journal;
  const key = 'in-flight-at-drain';
  const faults = keyLookupFaults(journal, new Set([key]));
  const action = drain.published.state === 'OPEN' ? 'close' : 'open';
  const { writesBefore } = await writtenAsync(site, key, action);
  // Its readbacks held: it stays in flight until the fault is cleared.
  drain.setFault({ kind: 'stall', on: 'read' });
  faults.armed = true;
  try {
    await until(() => (faults.failed >= 1 ? true : undefined), 5_000, 'a read that met the fault');
    expect(held.writableNeedDrain).toBe(true);
    const before = stalled.devices();

    // The page reads again: the stream drains, and its catch-up meets the failing read.
    stalled.resume();
    await until(
      () => (!held.writableNeedDrain ? true : undefined),
      20_000,
      "the stream's drain (its catch-up ran)",
    );

    // The journal reads again; the command settles with its one write.
    faults.armed = false;
    drain.clearFault('stall');
    const settled = await until(() => {
      const r = journal.get({ scope: 'scada', key });
      return r?.state === 'confirmed' ? r : undefined;
    }, 15_000);
    expect(drain.writeLog.slice(writesBefore).map((w) => w.seq)).toEqual([settled.seq]);

    // The stream is held no more: the page, reading, gets the valve at rest as it is.
    await until(
      () => {
        const m = stalled.drainValve();
        return stalled.devices() > before && m?.state === drain.published.state ? true : undefined;
      },
      15_000,
      `the page shows drain-valve ${drain.published.state}`,
    );
    expect(held.destroyed).toBe(false);
    expect(uncaught).toEqual([]);
  } finally {
    faults.armed = false;
    drain.clearFault('stall');
    stalled.close();
  }
}, 150_000);
