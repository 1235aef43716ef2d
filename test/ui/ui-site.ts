import type { ClientRequest, IncomingMessage } from 'node:http';
import type { HttpsTimeouts } from '../../src/intake/https-server.js';
import type { StreamPeerBounds } from '../../src/intake/ui-events.js';
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { expect } from 'vitest';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/config.js';
import type { Clock } from '../../src/core/clock.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import { startPlant, type Plant, type SimDevice } from '../../simulators/plant.js';
import { seedOrphan } from '../helpers/daemon-site.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { startMosquitto, until, type Mosquitto } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * A whole site for the status page's tests: `sluiced` built from its configuration file (as
 * the real daemon is), sluice-sim over real sockets (a Modbus and, optionally, an OPC UA PLC)
 * and, optionally, a real Mosquitto. Four identities: `ops` (operator on the page), `desk`
 * (viewer) and `scada` (no role; the MQTT identity), and `constructor` (no role, named like a member
 * every JavaScript object inherits). The daemon's log is kept, to check that
 * no token or session id ever reaches it.
 */

export const TOKENS = {
  ops: 'ops-token-5Vq2kP9x',
  desk: 'desk-token-Hh3mW7aZ',
  scada: 'scada-token-Jr8nT4cL',
  constructor: 'constructor-token-Pz6bN1sD',
} as const;

/**
 * With UiSiteOptions.tokenFiles: the token in `ops`'s token file (beside its tokenSha256, which
 * stays TOKENS.ops) and `desk`'s, whose token file then holds TOKENS.desk.
 */
export const FILE_TOKENS = { ops: 'ops-file-token-Qw7eR2tY' } as const;

/** A command journaled for a valve since removed from the configuration: stuck (SPEC §2). */
export const ORPHAN = { key: 'orphan-1', scope: 'scada', device: 'removed-valve' } as const;

export interface UiSite {
  readonly daemon: Daemon;
  readonly plant: Plant;
  readonly broker: Mosquitto | null;
  readonly port: number;
  readonly origin: string;
  readonly cert: string;
  /** The seeded orphan command's deadline (gateway ms): how overdue it shows depends on it. */
  readonly orphanDeadline: number;
  /** The journal's SQLite file: ground truth, read through a connection of the test's own. */
  readonly journalPath: string;
  /** The site file (sluicectl --config reaches the daemon's admin endpoint with it). */
  readonly configPath: string;
  /** Everything the daemon logged, as text. */
  log(): string;
  /** With UiSiteOptions.tokenFiles: an identity's token file (a reload reads it again). */
  tokenFile(identity: 'ops' | 'desk'): string;
  stop(): Promise<void>;
}

export interface UiSiteOptions {
  readonly mqtt: boolean;
  readonly opcua: boolean;
  /**
   * Idle valves added to the Modbus PLC (`bulk-000`, …), read every 5 s: a plant whose
   * devices event is large (about 600 bytes a valve).
   */
  readonly bulkValves?: number;
  /**
   * Client certificates issued by this CA are asked for (https.clientCaFile): a browser may
   * log in with one. `ops` is then also the identity of the certificate CN `ops-1`.
   */
  readonly clientCaFile?: string;
  /**
   * drain-valve's travel time (ms), 3 s unless given: slow enough to be seen in flight. A test
   * that only waits for its commands to settle gives it less, not to wait 3 s for each.
   */
  readonly drainTravelMs?: number;
  /**
   * The address the HTTPS listener binds (127.0.0.1 unless given): `0.0.0.0` for a test whose
   * client reaches it over another interface too. The helpers here still call it on loopback.
   */
  readonly httpsHost?: string;
  /** The HTTPS connections' timeouts (DaemonOptions.httpsTimeouts): shortened, to wait less. */
  readonly httpsTimeouts?: HttpsTimeouts;
  /** How the page's streams of a vanished client are found (DaemonOptions.uiStreamPeerBounds). */
  readonly uiStreamPeerBounds?: StreamPeerBounds;
  /** More open commands seeded as ORPHAN is (its scope and device), by key. */
  readonly orphans?: readonly string[];
  /**
   * Open commands seeded as ORPHAN is, but accepted 30 s before the daemon's start (or
   * `acceptedInMs` after it: ahead of the gateway's clock, as after a clock set back) and with a
   * deadline `inMs` after it: not stuck until then (a device no longer configured is judged
   * from its deadline).
   */
  readonly laterOrphans?: readonly {
    readonly key: string;
    readonly inMs: number;
    readonly acceptedInMs?: number;
  }[];
  /**
   * `ops` also has a token file (FILE_TOKENS.ops) and `desk` has one in place of its
   * tokenSha256 (TOKENS.desk): tokens a reload (SIGHUP) reads again.
   */
  readonly tokenFiles?: boolean;
  /** journal.busyTimeoutMs (2 s unless given): how long a write waits for another's lock. */
  readonly journalBusyTimeoutMs?: number;
  /**
   * The daemon's clock (DaemonOptions.clock), the system clock unless given: a test steps its
   * wall time to bring a bound about, rather than wait for it.
   */
  readonly clock?: Clock;
  /**
   * How often an idle device is read (DaemonOptions.monitorIntervalMs; 200 ms unless given): a
   * test that needs a device's next read to be a command's own reads idle devices rarely.
   */
  readonly monitorIntervalMs?: number;
}

/** The subject CN of `ops`'s client certificate, when the site asks for certificates. */
export const OPS_CN = 'ops-1';

/** The bulk valves' profile: the shipped valve's, read rarely (they never move). */
const BULK_PROFILE = 'valve-idle';

export async function startUiSite(options: UiSiteOptions): Promise<UiSite> {
  const { dir, cleanup } = tempDir('sluice-ui-');
  const plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          scanMs: 5,
          devices: {
            // A stuck valve stays OPENING: no travel timeout fault within the test.
            'inlet-valve': { profile: 'valve', base: 0, travelMs: 800, travelTimeoutMs: 120_000 },
            // Slow enough to be seen in flight.
            'drain-valve': {
              profile: 'valve',
              base: 100,
              travelMs: options.drainTravelMs ?? 3_000,
            },
            ...Object.fromEntries(
              bulkValveIds(options.bulkValves ?? 0).map((id, i) => [
                id,
                // Clear of the PLC's clock registers at 900.
                { profile: 'valve', base: 1_000 + 20 * i, travelMs: 800 },
              ]),
            ),
          },
        },
        ...(options.opcua
          ? {
              ua: {
                protocol: 'opcua',
                host: '127.0.0.1',
                port: 0,
                devices: { 'dosing-actuator': { profile: 'actuator', travelMs: 800 } },
              },
            }
          : {}),
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const broker = options.mqtt ? await startMosquitto() : null;
  const cert = await loopbackCertificate(dir);
  // The shipped profiles with a confirm timeout long enough to look at a command the stuck
  // valve holds before the daemon gives up on it.
  const profilesDir = join(dir, 'profiles');
  mkdirSync(profilesDir);
  const shipped = join(ROOT, 'devices', 'profiles');
  for (const file of readdirSync(shipped).filter((f) => f.endsWith('.yaml'))) {
    const profile = parse(readFileSync(join(shipped, file), 'utf8')) as {
      timing: Record<string, number>;
    };
    profile.timing = { ...profile.timing, confirmTimeoutMs: 60_000, pollIntervalMs: 50 };
    writeFileSync(join(profilesDir, file), stringify(profile));
    if (file === 'valve.yaml' && options.bulkValves !== undefined) {
      const idle = { ...profile, profile: BULK_PROFILE, timing: { ...profile.timing } };
      idle.timing.pollIntervalMs = 5_000;
      writeFileSync(join(profilesDir, `${BULK_PROFILE}.yaml`), stringify(idle));
    }
  }
  const inventory = inventoryFor(plant);
  for (const id of bulkValveIds(options.bulkValves ?? 0)) {
    const device = inventory.devices[id];
    if (device !== undefined) inventory.devices[id] = { ...device, profile: BULK_PROFILE };
  }
  const configPath = join(dir, 'sluice.yaml');
  const hash = (token: string): string => sha256(token).toString('hex');
  const tokenFile = (identity: 'ops' | 'desk'): string => join(dir, 'tokens', identity);
  if (options.tokenFiles === true) {
    mkdirSync(join(dir, 'tokens'), { mode: 0o700 });
    writeFileSync(tokenFile('ops'), `${FILE_TOKENS.ops}\n`, { mode: 0o600 });
    writeFileSync(tokenFile('desk'), `${TOKENS.desk}\n`, { mode: 0o600 });
  }
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'uisite',
      stateDir: 'state',
      profilesDir: 'profiles',
      ...(options.journalBusyTimeoutMs === undefined
        ? {}
        : { journal: { busyTimeoutMs: options.journalBusyTimeoutMs } }),
      https: {
        host: options.httpsHost ?? '127.0.0.1',
        port: 0,
        certFile: 'cert.pem',
        keyFile: 'key.pem',
        ...(options.clientCaFile === undefined ? {} : { clientCaFile: options.clientCaFile }),
      },
      ...(broker === null
        ? {}
        : { mqtt: { url: broker.url, identity: 'scada', clientId: 'sluice-ui-test' } }),
      opcua: { acceptUnknownCertificates: true },
      identities: {
        ops: {
          tokenSha256: hash(TOKENS.ops),
          ...(options.tokenFiles === true ? { tokenFile: tokenFile('ops') } : {}),
          devices: ['*'],
          ...(options.clientCaFile === undefined ? {} : { certificateCn: OPS_CN }),
        },
        desk: {
          ...(options.tokenFiles === true
            ? { tokenFile: tokenFile('desk') }
            : { tokenSha256: hash(TOKENS.desk) }),
          devices: ['drain-valve'],
        },
        scada: { tokenSha256: hash(TOKENS.scada), devices: ['*'] },
        // Named like a member every object inherits, and given no role.
        constructor: { tokenSha256: hash(TOKENS.constructor), devices: ['drain-valve'] },
      },
      ui: { roles: { ops: 'operator', desk: 'viewer' } },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  const now = Date.now();
  for (const key of [ORPHAN.key, ...(options.orphans ?? [])]) {
    seedOrphan(join(dir, 'state', 'journal.db'), now, {
      scope: ORPHAN.scope,
      key,
      device: ORPHAN.device,
      intake: 'mqtt',
    });
  }
  for (const later of options.laterOrphans ?? []) {
    // seedOrphan's command is accepted 600 s before the `now` it is given.
    const acceptedInMs = later.acceptedInMs ?? -30_000;
    seedOrphan(
      join(dir, 'state', 'journal.db'),
      now + acceptedInMs + 600_000,
      { scope: ORPHAN.scope, key: later.key, device: ORPHAN.device, intake: 'mqtt' },
      later.inMs - acceptedInMs,
    );
  }

  const lines: string[] = [];
  const sink = new Writable({
    write(chunk: Buffer, _encoding, done) {
      lines.push(chunk.toString('utf8'));
      done();
    },
  });
  const daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'debug' }, sink),
    monitorIntervalMs: options.monitorIntervalMs ?? 200,
    ...(options.clock === undefined ? {} : { clock: options.clock }),
    ...(options.httpsTimeouts === undefined ? {} : { httpsTimeouts: options.httpsTimeouts }),
    ...(options.uiStreamPeerBounds === undefined
      ? {}
      : { uiStreamPeerBounds: options.uiStreamPeerBounds }),
  });
  await until(
    () =>
      Object.entries(daemon.readiness().checks).every(
        ([k, c]) => !(k.startsWith('device:') || k === 'mqtt') || c.ok,
      )
        ? true
        : undefined,
    30_000,
    'first readbacks and the broker',
  );
  const port = daemon.https!.port;
  return {
    daemon,
    plant,
    broker,
    port,
    origin: `https://127.0.0.1:${port}`,
    orphanDeadline: now - 570_000,
    journalPath: join(dir, 'state', 'journal.db'),
    configPath,
    cert,
    log: () => lines.join(''),
    tokenFile,
    stop: async () => {
      await daemon.stop();
      await broker?.close();
      await plant.stop();
      cleanup();
    },
  };
}

function bulkValveIds(count: number): string[] {
  return Array.from({ length: count }, (_, i) => `bulk-${String(i).padStart(3, '0')}`);
}

export interface Answer {
  readonly status: number;
  readonly headers: Record<string, string | string[] | undefined>;
  readonly body: string;
  /** The body parsed as JSON; the caller names the shape it expects. */
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- the caller's assertion
  json<T = Record<string, unknown>>(): T;
}

/**
 * One HTTPS request to the site, with exactly the headers given (no token unless asked), on a
 * connection of its own that presents `clientCert` when the site-like target names one.
 */
export function call(
  site: Pick<UiSite, 'port' | 'cert'> & {
    readonly clientCert?: { readonly cert: string; readonly key: string };
  },
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: string,
  /** The client's own loopback address (127.0.0.x), as another host's would be. */
  localAddress?: string,
): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port: site.port,
        ...(localAddress === undefined ? {} : { localAddress }),
        method,
        path,
        ca: site.cert,
        ...(site.clientCert === undefined
          ? {}
          : { cert: site.clientCert.cert, key: site.clientCert.key }),
        agent: false,
        headers: {
          ...headers,
          ...(body === undefined ? {} : { 'content-length': Buffer.byteLength(body) }),
        },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          resolve({
            status: res.statusCode ?? 0,
            headers: res.headers,
            body: text,
            // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- as above
            json: <T>() => JSON.parse(text) as T,
          });
        });
      },
    );
    req.once('error', reject);
    req.end(body);
  });
}

/**
 * Asks for the page's event stream as the page does (the session cookie, `accept:
 * text/event-stream`), on a connection of its own. `onResponse` gets the daemon's answer as its
 * head arrives: a stream's events, or a refusal's problem document, are read from it. Returns
 * the request, already sent: the caller listens for its error, and destroys it to close the
 * stream.
 */
export function requestEvents(
  site: Pick<UiSite, 'port' | 'cert'>,
  cookie: string,
  onResponse: (res: IncomingMessage) => void,
): ClientRequest {
  const req = request(
    {
      host: '127.0.0.1',
      port: site.port,
      path: '/ui/api/events',
      ca: site.cert,
      agent: false,
      headers: { cookie, accept: 'text/event-stream' },
    },
    onResponse,
  );
  req.end();
  return req;
}

/** Logs in as the page does; returns the session cookie (name=value) and the CSRF token. */
export async function login(
  site: UiSite,
  token: string,
  localAddress?: string,
): Promise<{ cookie: string; csrf: string; answer: Answer }> {
  const answer = await call(
    site,
    'POST',
    '/ui/api/login',
    { origin: site.origin, 'content-type': 'application/json' },
    JSON.stringify({ token }),
    localAddress,
  );
  const setCookie = answer.headers['set-cookie'];
  const first = Array.isArray(setCookie) ? (setCookie[0] ?? '') : (setCookie ?? '');
  const cookie = first.split(';')[0] ?? '';
  const csrf = answer.status === 200 ? answer.json<{ csrfToken: string }>().csrfToken : '';
  return { cookie, csrf, answer };
}

/**
 * Sends scada's `action` of drain-valve under `key` (respond-async, answered 202) and waits for
 * its write at the valve (ground truth). Returns the valve and the length of its write log
 * before the command.
 */
export async function writtenAsync(
  site: UiSite,
  key: string,
  action: 'open' | 'close',
): Promise<{ drain: SimDevice; writesBefore: number }> {
  const drain = site.plant.device('drain-valve');
  const writesBefore = drain.writeLog.length;
  const sent = await call(
    site,
    'POST',
    '/v1/commands',
    {
      authorization: `Bearer ${TOKENS.scada}`,
      'idempotency-key': key,
      'content-type': 'application/json',
      prefer: 'respond-async',
    },
    JSON.stringify({ device: 'drain-valve', action }),
  );
  expect(sent.status, sent.body).toBe(202);
  await until(
    () => (drain.writeLog.length > writesBefore ? true : undefined),
    10_000,
    `the ${action}'s write at the valve`,
  );
  return { drain, writesBefore };
}

/**
 * Sends scada's open of drain-valve under `key` (writtenAsync), then holds every read of the
 * valve: no readback can settle the command until the caller clears the fault
 * (`drain.clearFault('stall')`). Returns the valve and the length of its write log before the
 * open.
 */
export async function openWithReadsHeld(
  site: UiSite,
  key: string,
): Promise<{ drain: SimDevice; writesBefore: number }> {
  const written = await writtenAsync(site, key, 'open');
  written.drain.setFault({ kind: 'stall', on: 'read' });
  return written;
}
