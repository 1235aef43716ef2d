import { afterAll, beforeAll, expect, it } from 'vitest';
import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { until } from '../helpers/mosquitto.js';
import { openCountsFaults, type ReadFaults } from '../helpers/read-faults.js';
import { login, requestEvents, startUiSite, TOKENS, type UiSite } from './ui-site.js';

/**
 * The status page's stream, once a second, sends the gateway band, whose open commands are
 * counted from the journal, and the devices, whose connectivity changes with no readback to push
 * it. A read of the count that failed lost the whole tick (devices, heartbeat, the session kept
 * alive), logged at every tick; and a stream opened during one such read was answered, the page
 * saying "Live", and never ticked at all. Now the band alone waits for the journal, said once.
 *
 * The real daemon and status page over TLS, sluice-sim over real sockets: inlet-valve's reads
 * fail by the simulator's Modbus exception. One double, for a fault no filesystem here can aim at
 * one statement: the journal's count of its open commands fails while armed
 * (test/helpers/read-faults.ts); every other read and write goes through. Ground truth: what the
 * stream's client receives, the daemon's readiness for the device, and the daemon's log.
 */

let site: UiSite;
let faults: ReadFaults;

beforeAll(async () => {
  site = await startUiSite({ mqtt: false, opcua: false });
  // The daemon's own journal object (private): the double is set on its count statement.
  faults = openCountsFaults((site.daemon as unknown as { journal: SqliteJournal }).journal);
}, 60_000);

afterAll(async () => {
  await site.stop();
});

interface Events {
  readonly names: string[];
  /** A devices event said inlet-valve's reads fail. */
  inletReadError: boolean;
  close(): void;
}

function openStream(cookie: string): Events {
  let pending = '';
  const events: Events = {
    names: [],
    inletReadError: false,
    close: () => req.destroy(),
  };
  const req = requestEvents(site, cookie, (res) => {
    expect(res.statusCode).toBe(200);
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      pending += chunk;
      let end = pending.indexOf('\n\n');
      while (end >= 0) {
        const block = pending.slice(0, end);
        const name = /^event: (\w+)$/m.exec(block)?.[1] ?? '';
        events.names.push(name);
        if (name === 'devices') {
          const doc = JSON.parse(/^data: (.*)$/m.exec(block)?.[1] ?? '{}') as {
            devices: { id: string; connectivity: { readError: unknown } }[];
          };
          if (doc.devices.some((d) => d.id === 'inlet-valve' && d.connectivity.readError !== null))
            events.inletReadError = true;
        }
        pending = pending.slice(end + 2);
        end = pending.indexOf('\n\n');
      }
    });
  });
  return events;
}

const said = (text: string): number =>
  site
    .log()
    .split('\n')
    .filter((l) => l.includes(text)).length;

/** inlet-valve's reads fail until the returned function is called; resolves once it is not ready. */
async function inletReadsFail(): Promise<() => void> {
  const inlet = site.plant.device('inlet-valve');
  inlet.setFault({ kind: 'exception', code: 2, on: 'read' });
  await until(
    () => (site.daemon.readiness().checks['device:inlet-valve']?.ok === false ? true : undefined),
    10_000,
    'inlet-valve not ready: its reads fail',
  );
  return () => {
    inlet.clearFault('exception');
  };
}

it('a stream keeps its devices while the open commands cannot be counted; the failure and its end are said once', async () => {
  const { cookie } = await login(site, TOKENS.ops);
  const stream = openStream(cookie);
  let clear = (): void => undefined;
  try {
    await until(() => (stream.names.includes('gateway') ? true : undefined), 5_000, 'the stream');
    const gateways = stream.names.filter((n) => n === 'gateway').length;
    faults.armed = true;
    clear = await inletReadsFail();
    // The page is told, though the journal cannot count: a devices event says so.
    await until(
      () => (stream.inletReadError ? true : undefined),
      5_000,
      'a devices event with inlet-valve reads failing',
    );
    expect(faults.failed).toBeGreaterThan(2);
    expect(stream.names.filter((n) => n === 'gateway').length).toBe(gateways);
    // Said once, not at every tick.
    expect(said('status page: the gateway band cannot be read')).toBe(1);
    expect(said('status page event tick failed')).toBe(0);
    faults.armed = false;
    // Its return is said (the band is sent again when it differs from the last one sent).
    await until(
      () => (said('status page: the gateway band is read again') === 1 ? true : undefined),
      5_000,
      'the gateway band read again',
    );
  } finally {
    faults.armed = false;
    clear();
    stream.close();
  }
}, 60_000);

it('a stream opened while the open commands cannot be counted ticks, and shows a device whose reads fail', async () => {
  const { cookie } = await login(site, TOKENS.ops);
  faults.armed = true;
  const stream = openStream(cookie);
  let clear = (): void => undefined;
  try {
    await until(() => (stream.names.includes('commands') ? true : undefined), 5_000, 'the stream');
    clear = await inletReadsFail();
    // The page is told, though the journal still cannot count: a devices event says so.
    await until(
      () => (stream.inletReadError ? true : undefined),
      5_000,
      'a devices event with inlet-valve reads failing',
    );
    expect(stream.names).not.toContain('gateway');
    faults.armed = false;
    await until(
      () => (stream.names.includes('gateway') ? true : undefined),
      5_000,
      'the gateway band once the journal counts again',
    );
  } finally {
    faults.armed = false;
    clear();
    stream.close();
  }
}, 60_000);
