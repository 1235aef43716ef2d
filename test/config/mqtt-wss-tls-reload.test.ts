import { renameSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';
import type { TLSSocket } from 'node:tls';
import { Aedes } from 'aedes';
import { WebSocketServer, createWebSocketStream } from 'ws';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { tempDir } from '../helpers/fixtures.js';
import { makePki, type Pki } from '../intake/https-client.js';
import { startSluiced, type Running } from './sluiced.js';

/**
 * As mqtt-tls-reload.test.ts, over `wss://` (docs/configuration.md: `caFile`, `certFile`,
 * `keyFile` need a TLS url, `mqtts://` or `wss://`): after `systemctl reload sluiced` (SIGHUP)
 * with a renewed client certificate, the next connection to the broker presents it. Over
 * `wss://` MQTT.js copies `ca`, `cert` and `key` into the client's `wsOptions` at its first
 * connection and made every later one from that copy: the daemon logged the files reloaded and
 * kept presenting the old certificate (and trusting the old CA) until a restart.
 *
 * The real sluiced; the broker is aedes behind a Node https server over TLS websockets, asking
 * for a client certificate: the Mosquitto here (2.0.11) does not start a websockets listener,
 * so no real broker serves `wss://` here. The server's `secureConnection` records the CN of
 * each certificate presented, the ground truth of what the daemon presented.
 */

let dir: string;
let cleanup: () => void;
let pki: Pki;
let server: Server;
let aedes: Aedes;
let daemon: Running;
const presented: string[] = [];
const sockets = new Set<TLSSocket>();

function replace(path: string, text: string): void {
  writeFileSync(`${path}.new`, text, { mode: 0o600 });
  renameSync(`${path}.new`, path);
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-wss-tls-reload-'));
  pki = await makePki();
  aedes = await Aedes.createBroker();
  server = createServer({
    cert: pki.server.cert,
    key: pki.server.key,
    ca: pki.clientCa.cert,
    requestCert: true,
    rejectUnauthorized: true,
  });
  server.on('secureConnection', (socket: TLSSocket) => {
    const cn = (socket.getPeerCertificate().subject as { CN?: string } | undefined)?.CN;
    presented.push(String(cn));
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
  });
  const wss = new WebSocketServer({ server });
  wss.on('connection', (ws) => {
    const stream = createWebSocketStream(ws);
    aedes.handle(stream);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
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
  url: "wss://localhost:${port}/"
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
  await daemon.line((l) => l.includes('subscribed to the command topics'), 30_000);
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  for (const socket of sockets) socket.destroy();
  await new Promise<void>((resolve) => {
    server.close(() => {
      resolve();
    });
  });
  await new Promise<void>((resolve) => {
    aedes.close(() => {
      resolve();
    });
  });
  pki.cleanup();
  cleanup();
}, 30_000);

it('presents the renewed client certificate on the connection after a reload (wss://)', async () => {
  // Two at start: aedes refuses MQTT 5, and the intake falls back to 3.1.1.
  expect(presented.length).toBeGreaterThan(0);
  expect(presented.every((cn) => cn === 'gateway-before')).toBe(true);
  const before = presented.length;
  const renewed = await pki.client('gateway-renewed');
  replace(join(dir, 'client.key'), renewed.key);
  replace(join(dir, 'client.pem'), renewed.cert);
  const from = daemon.lines.length;
  daemon.signal('SIGHUP');
  const done = await daemon.line(
    (l) => l.includes('"msg":"reload done"') && daemon.lines.lastIndexOf(l) >= from,
    15_000,
  );
  expect(JSON.parse(done)).toMatchObject({ mqtt: 'reloaded' });
  // The next connection: the broker drops this one.
  for (const socket of sockets) socket.destroy();
  await daemon.line(
    (l) =>
      l.includes('"msg":"connected to the MQTT broker"') && daemon.lines.lastIndexOf(l) >= from,
    30_000,
  );
  expect(presented.length).toBeGreaterThan(before);
  expect(presented.at(-1)).toBe('gateway-renewed');
}, 60_000);
