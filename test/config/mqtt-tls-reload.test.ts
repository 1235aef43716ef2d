import { renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { tempDir } from '../helpers/fixtures.js';
import { mosquittoAvailable, startMosquitto, type Mosquitto } from '../helpers/mosquitto.js';
import { makePki, type Pki } from '../intake/https-client.js';
import { startSluiced, type Running } from './sluiced.js';

/**
 * `systemctl reload sluiced` (SIGHUP) with a client certificate for the broker: the renewed
 * `mqtt.certFile` and `mqtt.keyFile` are checked and kept for the next connection, the one
 * that is up stays, and the reconnection after the broker restarts presents the new
 * certificate. A real Mosquitto that requires a client certificate and takes its CN as the
 * user name, which its log shows for every connection (the ground truth of what was presented).
 * The daemon is sent a first SIGHUP while it starts: it is carried out once the start is done.
 */

let dir: string;
let cleanup: () => void;
let pki: Pki;
let broker: Mosquitto;
let daemon: Running;

/** The user names (client certificate CNs) of the broker's connections from sluice-g1. */
function presented(): string[] {
  return broker
    .log()
    .split('\n')
    .flatMap((line) => {
      const m = / as sluice-g1 \(.*u'([^']*)'\)/.exec(line);
      return m === null ? [] : [m[1]!];
    });
}

function replace(path: string, text: string): void {
  writeFileSync(`${path}.new`, text, { mode: 0o600 });
  renameSync(`${path}.new`, path);
}

beforeAll(async () => {
  if (!mosquittoAvailable()) return;
  ({ dir, cleanup } = tempDir('sluice-mqtt-tls-reload-'));
  pki = await makePki();
  broker = await startMosquitto({
    settings: [
      `cafile ${pki.clientCaFile}`,
      `certfile ${pki.certFile}`,
      `keyfile ${pki.keyFile}`,
      'require_certificate true',
      'use_identity_as_username true',
    ],
  });
  const client = await pki.client('gateway-before');
  writeFileSync(join(dir, 'ca.pem'), pki.serverCa.cert);
  writeFileSync(join(dir, 'client.pem'), client.cert);
  writeFileSync(join(dir, 'client.key'), client.key, { mode: 0o600 });
  const config = join(dir, 'sluice.yaml');
  writeFileSync(
    config,
    `
gatewayId: g1
stateDir: state
mqtt:
  url: "mqtts://127.0.0.1:${broker.port}"
  identity: plant
  caFile: ca.pem
  certFile: client.pem
  keyFile: client.key
identities:
  plant: { devices: ['*'] }
plcs: {}
devices: {}
`,
  );
  daemon = startSluiced(['--config', config]);
  // Logged once the signal handlers are in place, before the start (journal, intakes) begins.
  await daemon.line((l) => l.includes('"msg":"sluiced starting"'), 30_000);
  daemon.signal('SIGHUP');
  await daemon.line((l) => l.includes('subscribed to the command topics'), 30_000);
}, 60_000);

afterAll(async () => {
  if (!mosquittoAvailable()) return;
  await daemon.stop();
  await broker.close();
  pki.cleanup();
  cleanup();
}, 30_000);

it.runIf(mosquittoAvailable())(
  'carries out a SIGHUP sent while it starts once the start has finished, and runs on',
  async () => {
    const done = await daemon.line((l) => l.includes('"msg":"reload done"'), 15_000);
    const at = (line: string): number => daemon.lines.indexOf(line);
    const started = daemon.lines.find((l) => l.includes('"msg":"sluiced started"')) ?? '';
    // The start is short: the signal may come when it is over, and is then carried out at once.
    const waited = daemon.lines.find((l) => l.includes('asked for while starting'));
    if (waited !== undefined) expect(at(waited)).toBeLessThan(at(started));
    expect(at(done)).toBeGreaterThan(at(started));
    expect(JSON.parse(done)).toMatchObject({ https: 'not configured', mqtt: 'reloaded' });
    expect(daemon.lines.filter((l) => l.includes('"msg":"reload done"'))).toHaveLength(1);
  },
);

it.runIf(mosquittoAvailable())(
  'keeps the renewed client certificate for the next connection; the session up stays; the reconnection presents it',
  async () => {
    expect(presented()).toEqual(['gateway-before']);
    const renewed = await pki.client('gateway-renewed');
    replace(join(dir, 'client.key'), renewed.key);
    replace(join(dir, 'client.pem'), renewed.cert);

    const from = daemon.lines.length;
    daemon.signal('SIGHUP');
    const done = await daemon.line(
      (l) => l.includes('"msg":"reload done"') && daemon.lines.lastIndexOf(l) >= from,
      15_000,
    );
    expect(JSON.parse(done)).toMatchObject({ https: 'not configured', mqtt: 'reloaded' });
    const reloaded = daemon.lines
      .slice(from)
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .find((l) => String(l.msg).startsWith('MQTT TLS files reloaded'));
    expect(reloaded).toMatchObject({
      level: 30,
      connected: true,
      certFile: join(dir, 'client.pem'),
      keyFile: join(dir, 'client.key'),
    });
    // The connection that was up stays: nothing reconnected.
    expect(presented()).toEqual(['gateway-before']);

    // The next connection (the broker restarts) presents the renewed certificate.
    await broker.restart();
    await daemon.line(
      (l) =>
        l.includes('"msg":"connected to the MQTT broker"') && daemon.lines.lastIndexOf(l) >= from,
      30_000,
    );
    expect(presented()).toEqual(['gateway-before', 'gateway-renewed']);
  },
  60_000,
);
