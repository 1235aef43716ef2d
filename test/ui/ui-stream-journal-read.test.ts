import { afterAll, beforeAll, expect, it } from 'vitest';
import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { until } from '../helpers/mosquitto.js';
import { keyLookupFaults } from '../helpers/read-faults.js';
import { login, requestEvents, startUiSite, TOKENS, writtenAsync, type UiSite } from './ui-site.js';

/**
 * The status page's devices event is pushed from a timer (200 ms after a mirror changes), outside
 * any request, and it reads the journal: the key of each device's command in flight. A read
 * that failed there (an I/O error, a damaged page) escaped every handler, and Node ended the
 * daemon on it, with a valve travelling. Now the failure is said once, and the next push, once
 * the journal reads again, brings the page up to date.
 *
 * The real daemon and status page over TLS, sluice-sim over real sockets. One double, for a
 * fault no filesystem here can aim at one statement: the journal's lookup of the travelling
 * command's key fails while armed (test/helpers/read-faults.ts); every other read and write goes
 * through. Ground truth: the simulator's write log, the journal, the daemon's log.
 */

let site: UiSite;

beforeAll(async () => {
  site = await startUiSite({ mqtt: false, opcua: false, drainTravelMs: 3_000 });
}, 60_000);

afterAll(async () => {
  await site.stop();
});

/** An event stream as the page opens it; counts its devices events. */
function openStream(cookie: string): Promise<{ devices(): number; close(): void }> {
  return new Promise((resolve, reject) => {
    let devices = 0;
    let pending = '';
    const req = requestEvents(site, cookie, (res) => {
      expect(res.statusCode).toBe(200);
      res.setEncoding('utf8');
      res.on('data', (chunk: string) => {
        pending += chunk;
        let end = pending.indexOf('\n\n');
        while (end >= 0) {
          if (pending.startsWith('event: devices\n')) devices++;
          pending = pending.slice(end + 2);
          end = pending.indexOf('\n\n');
        }
      });
      resolve({ devices: () => devices, close: () => req.destroy() });
    });
    req.once('error', reject);
  });
}

it('a journal read that fails under a devices push is said once, and the daemon goes on', async () => {
  const { cookie } = await login(site, TOKENS.ops);
  // The daemon's own journal object (private): the double is set on its lookup statement.
  const journal = (site.daemon as unknown as { journal: SqliteJournal }).journal;
  const key = 'travel-read-fails';
  const faults = keyLookupFaults(journal, new Set([key]));
  const stream = await openStream(cookie);
  try {
    const action = site.plant.device('drain-valve').published.state === 'OPEN' ? 'close' : 'open';
    const { drain, writesBefore: writes } = await writtenAsync(site, key, action);
    // The valve travels (3 s): its mirror changes at every readback, and each change pushes
    // the devices event, which reads the key in flight.
    faults.armed = true;
    await until(() => (faults.failed >= 3 ? true : undefined), 5_000, 'pushes that met the fault');
    const said = (): number =>
      site
        .log()
        .split('\n')
        .filter((l) => l.includes('status page: devices not pushed')).length;
    expect(said()).toBe(1);
    faults.armed = false;
    const before = stream.devices();
    await until(
      () => (stream.devices() > before ? true : undefined),
      5_000,
      'a devices event once the journal reads again',
    );
    // The command ran on as if nothing happened: one write, confirmed.
    const settled = await until(() => {
      const r = journal.get({ scope: 'scada', key });
      return r?.state === 'confirmed' ? r : undefined;
    }, 10_000);
    expect(drain.writeLog.slice(writes).map((w) => w.seq)).toEqual([settled.seq]);
    expect(said()).toBe(1);
  } finally {
    faults.armed = false;
    stream.close();
  }
}, 30_000);
