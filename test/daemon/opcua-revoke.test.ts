import {
  copyFileSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { sessionCounter, startSecurePlant } from '../drivers/opcua-trust.js';
import { writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';

/**
 * docs/configuration.md, OPC UA certificates: a server certificate an operator removes from
 * trusted/certs/ closes the session with that PLC at once, says so in the log, and the device's
 * reads fail with the reason in /readyz. The daemon, its PKI and sluice-sim's OPC UA PLC with
 * SignAndEncrypt are real; that the session is closed is read from the server's own session
 * count (a client of the test's own, over security None).
 */

let plant: Plant;
let daemon: Daemon;
let cert: string;
let dir: string;
let counter: Awaited<ReturnType<typeof sessionCounter>>;
const serverSessions = (): ReturnType<typeof counter.sessions> => counter.sessions();
const lines: string[] = [];
const cleanups: (() => Promise<void> | void)[] = [];

async function deviceCheck(): Promise<{ ok: boolean; detail: string } | undefined> {
  const answer = await httpsRequest(
    { port: daemon.https!.port, ca: cert, token: '' },
    'GET',
    '/readyz',
  );
  const ready = JSON.parse(answer.body) as {
    checks: Record<string, { ok: boolean; detail: string }>;
  };
  return ready.checks['device:ua-valve'];
}

beforeAll(async () => {
  const site = tempDir('sluice-opcua-revoke-');
  const sim = tempDir('sluice-sim-pki-');
  cleanups.push(site.cleanup, sim.cleanup);
  dir = site.dir;
  plant = await startSecurePlant(sim.dir);
  cleanups.push(() => plant.stop());
  counter = await sessionCounter(plant);
  cleanups.push(() => counter.close());

  const configPath = await writeDaemonSite(dir, plant, 'revoke');
  cert = await loopbackCertificate(dir);
  const config = parse(readFileSync(configPath, 'utf8')) as {
    plcs: Record<string, Record<string, unknown>>;
  };
  config.plcs.ua = {
    ...config.plcs.ua,
    securityMode: 'SignAndEncrypt',
    securityPolicy: 'Basic256Sha256',
  };
  writeFileSync(configPath, stringify(config));
  // The operator trusted the PLC's certificate.
  const trusted = join(dir, 'state', 'pki', 'client', 'trusted', 'certs');
  mkdirSync(trusted, { recursive: true });
  copyFileSync(
    join(sim.dir, 'ua', 'pki', 'own', 'certs', 'certificate.pem'),
    join(trusted, 'plc-ua.pem'),
  );
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'info' }, { write: (line: string) => lines.push(line) }),
    monitorIntervalMs: 200,
  });
  cleanups.push(() => daemon.stop());
}, 60_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
}, 30_000);

it('a PLC certificate removed from trusted/certs/: the session closed at once, logged, the reason in /readyz, a reconnection refused', async () => {
  await until(
    async () => ((await deviceCheck())?.ok === true ? true : undefined),
    20_000,
    'ua-valve read',
  );
  const open = await serverSessions();

  const trustedFile = join(dir, 'state', 'pki', 'client', 'trusted', 'certs', 'plc-ua.pem');
  rmSync(trustedFile);
  await until(
    async () => ((await serverSessions()).current === open.current - 1 ? true : undefined),
    10_000,
    'the server to see the session closed',
  );

  const logged = lines
    .map((l) => JSON.parse(l) as Record<string, unknown>)
    .find((l) => l.msg === 'opc ua server certificate no longer trusted: session closed');
  expect(logged).toMatchObject({
    level: 50,
    plc: 'ua',
    endpointUrl: (plant.plc('ua').endpoint as { endpointUrl: string }).endpointUrl,
    removed: [trustedFile],
    status: 'BadCertificateUntrusted',
  });
  expect(logged?.thumbprint).toMatch(/^[0-9a-f]{40}$/);

  // The device's reads fail with the reason, in /readyz.
  await until(
    async () =>
      /reads fail since .*(is no longer trusted|is not trusted: it was put in)/.test(
        (await deviceCheck())?.detail ?? '',
      )
        ? true
        : undefined,
    10_000,
    'the reason in /readyz',
  );
  // The next connection attempt is refused (the certificate put in rejected/ again), and no
  // session is opened on the server.
  const rejected = join(dir, 'state', 'pki', 'client', 'rejected');
  await until(
    () => (existsSync(rejected) && readdirSync(rejected).length === 1 ? true : undefined),
    20_000,
    'a refused reconnection',
  );
  const after = await serverSessions();
  expect(after.current).toBe(open.current - 1);
  expect(after.cumulated).toBe(open.cumulated);
}, 60_000);
