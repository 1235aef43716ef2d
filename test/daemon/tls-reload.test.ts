import { X509Certificate } from 'node:crypto';
import { renameSync, writeFileSync } from 'node:fs';
import { Agent, request } from 'node:https';
import { join } from 'node:path';
import { connect, TLSSocket } from 'node:tls';
import { generate } from 'selfsigned';
import { stringify } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { sha256 } from '../../src/intake/identities.js';
import type { Plant } from '../../simulators/plant.js';
import { startSluiced, type Running } from '../config/sluiced.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { bindNotifySocket, type NotifySocket } from '../helpers/notify-socket.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { call, makePki, type Pem, type Pki } from '../intake/https-client.js';

/**
 * `systemctl reload sluiced` (SIGHUP) on the real sluiced process, with mutual TLS, against
 * sluice-sim: renewed certificate and key files are served to new handshakes while a
 * connection opened before keeps its own and a command waiting on it settles; files that fail
 * the start's checks leave the old material served and the daemon running; a rotated client
 * CA is the one client certificates are checked against. SIGHUP used to end the daemon (Node's
 * default action). One daemon for the file; the cases run in order, each on the files the
 * one before left.
 */

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');
const TOKEN = 'tls-reload-token';
const DAY = 86_400_000;

let dir: string;
let cleanup: () => void;
let plant: Plant;
let pki: Pki;
let notify: NotifySocket | null = null;
let daemon: Running;
let port: number;
/** Whether the process has exited, for whatever reason. */
let exited = false;

/** A server certificate for 127.0.0.1 signed by the test's server CA, valid until `notAfter`. */
async function serverCertificate(cn: string, notAfter: Date): Promise<Pem> {
  const made = await generate([{ name: 'commonName', value: cn }], {
    keyType: 'ec',
    algorithm: 'sha256',
    ca: { key: pki.serverCa.key, cert: pki.serverCa.cert },
    notBeforeDate: new Date(Date.now() - DAY),
    notAfterDate: notAfter,
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] },
    ],
  });
  return { cert: made.cert, key: made.private };
}

/** Writes a file whole, as a renewal agent should: beside it, then renamed over it. */
function replace(path: string, text: string): void {
  writeFileSync(`${path}.new`, text, { mode: 0o600 });
  renameSync(`${path}.new`, path);
}

function fingerprint(pem: string): string {
  return new X509Certificate(pem).fingerprint256;
}

/** The certificate a new TLS connection is given, by its SHA-256 fingerprint. */
function servedFingerprint(): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = connect({ host: '127.0.0.1', port, ca: pki.serverCa.cert }, () => {
      const served = socket.getPeerCertificate().fingerprint256;
      socket.destroy();
      resolve(served);
    });
    socket.once('error', reject);
  });
}

/**
 * Sends SIGHUP and resolves with the first line after it that passes `predicate`; throws at
 * once should the process exit instead (Node's default action for SIGHUP, before the handler).
 */
async function reload(predicate: (line: string) => boolean): Promise<string> {
  const from = daemon.lines.length;
  daemon.signal('SIGHUP');
  const outcome = await Promise.race([
    daemon
      .line((l) => daemon.lines.lastIndexOf(l) >= from && predicate(l), 15_000)
      .then(
        (line) => ({ line }),
        (error: unknown) => ({ error }),
      ),
    daemon.exited.then((code) => ({ code })),
  ]);
  if ('code' in outcome)
    throw new Error(`sluiced exited on SIGHUP (exit code ${String(outcome.code)})`);
  if ('error' in outcome) throw outcome.error;
  return outcome.line;
}

/** The reload's lines from the SIGHUP sent last: every line up to its `reload done`. */
function lastReload(): Record<string, unknown>[] {
  const start = daemon.lines.findLastIndex((l) => l.includes('"msg":"reload (SIGHUP): '));
  return daemon.lines.slice(start).map((l) => JSON.parse(l) as Record<string, unknown>);
}

interface Answer {
  readonly status: number;
  readonly json: Record<string, unknown>;
  /** Sent on a connection the agent kept open. */
  readonly reused: boolean;
  /** The fingerprint of the certificate the connection was given. */
  readonly served: string;
}

function peerFingerprint(socket: unknown): string {
  if (!(socket instanceof TLSSocket)) throw new Error('the answer came on no TLS connection');
  return socket.getPeerCertificate().fingerprint256;
}

/** A command for v1 with the token; on a connection of its own unless `agent` is given. */
function command(key: string, action: string, agent?: Agent): Promise<Answer> {
  return new Promise((resolve, reject) => {
    const body = JSON.stringify({ device: 'v1', action });
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method: 'POST',
        path: '/v1/commands',
        ca: pki.serverCa.cert,
        ...(agent === undefined ? { agent: false } : { agent }),
        headers: {
          authorization: `Bearer ${TOKEN}`,
          'idempotency-key': key,
          'content-type': 'application/json',
          'content-length': String(Buffer.byteLength(body)),
        },
      },
      (res) => {
        // Read while the connection is surely open: one of its own closes after the answer.
        const served = peerFingerprint(res.socket);
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          resolve({
            status: res.statusCode ?? 0,
            json: JSON.parse(text) as Record<string, unknown>,
            reused: req.reusedSocket,
            served,
          });
        });
      },
    );
    req.once('error', reject);
    req.end(body);
  });
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-tls-reload-'));
  pki = await makePki();
  // Long enough for the command on the keep-alive connection to be in flight at the reload.
  plant = await startModbusPlant({ v1: { profile: 'valve', base: 0, travelMs: 1_500 } });
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'reload',
      stateDir: 'state',
      https: {
        host: '127.0.0.1',
        port: 0,
        certFile: pki.certFile,
        keyFile: pki.keyFile,
        clientCaFile: pki.clientCaFile,
      },
      identities: {
        scada: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] },
        maint: { certificateCn: 'maint-laptop', devices: ['*'] },
      },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  if (python) notify = await bindNotifySocket(join(dir, 'notify.sock'));
  daemon = startSluiced(
    ['--config', configPath],
    notify === null ? {} : { NOTIFY_SOCKET: notify.path },
  );
  void daemon.exited.then(() => (exited = true));
  const started = await daemon.line((l) => l.includes('"msg":"sluiced started"'), 60_000);
  port = (JSON.parse(started) as { https: { port: number } }).https.port;
  await daemon.line((l) => l.includes('"msg":"sluiced ready"'), 60_000);
}, 90_000);

afterAll(async () => {
  await daemon.stop();
  notify?.close();
  await plant.stop();
  pki.cleanup();
  cleanup();
}, 30_000);

it('serves renewed files to new handshakes after SIGHUP, while a connection opened before keeps its certificate and its command settles', async () => {
  const before = fingerprint(pki.server.cert);
  expect(await servedFingerprint()).toBe(before);
  const notAfter = new Date(Date.now() + 400 * DAY);
  const renewed = await serverCertificate('gateway-renewed', notAfter);

  // A keep-alive connection, and a command waiting on it for its readback through the reload.
  const agent = new Agent({ keepAlive: true, maxSockets: 1 });
  const valve = plant.device('v1');
  const inFlight = command('reload-open-1', 'open', agent);
  // Awaited below; a failure before that is not an unhandled rejection.
  inFlight.catch(() => undefined);
  await daemon.line((l) => l.includes('"msg":"command dispatched"'), 10_000);

  replace(pki.keyFile, renewed.key);
  replace(pki.certFile, renewed.cert);
  const reloaded = await reload((l) => l.includes('"msg":"reload done"'));
  expect(JSON.parse(reloaded)).toMatchObject({ https: 'reloaded', mqtt: 'not configured' });
  const lines = lastReload();
  expect(lines[0]?.msg).toMatch(/the configuration file is not reloaded/);
  expect(lines.find((l) => String(l.msg).startsWith('HTTPS TLS files reloaded'))).toMatchObject({
    level: 30,
    fingerprint256: fingerprint(renewed.cert),
    validTo: new Date(new X509Certificate(renewed.cert).validTo).toISOString(),
  });
  expect(exited).toBe(false);

  // The command sent before the reload settles on its connection, written once.
  const first = await inFlight;
  expect(first.status, JSON.stringify(first.json)).toBe(200);
  expect(first.served).toBe(before);
  expect(valve.writesWithSeq(Number(first.json.seq))).toBe(1);

  // That connection serves on, with the certificate it was made with.
  const again = await command('reload-close-1', 'close', agent);
  expect(again.reused).toBe(true);
  expect(again.served).toBe(before);
  expect(again.status, JSON.stringify(again.json)).toBe(200);
  expect(valve.writesWithSeq(Number(again.json.seq))).toBe(1);
  agent.destroy();

  // A new connection gets the new certificate, and a command on it is written once.
  expect(await servedFingerprint()).toBe(fingerprint(renewed.cert));
  const fresh = await command('reload-open-2', 'open');
  expect(fresh.served).toBe(fingerprint(renewed.cert));
  expect(fresh.status, JSON.stringify(fresh.json)).toBe(200);
  expect(valve.writesWithSeq(Number(fresh.json.seq))).toBe(1);

  // Still TLS 1.3 only: Node's setSecureContext takes the versions from its argument too.
  await expect(
    call({ port, ca: pki.serverCa.cert }, 'GET', '/healthz', { maxVersion: 'TLSv1.2' }),
  ).rejects.toThrow();

  // /readyz judges the new certificate.
  const ready = await call({ port, ca: pki.serverCa.cert }, 'GET', '/readyz');
  const https = (ready.json.checks as Record<string, { detail: string }>).https;
  expect(https?.detail).toBe(
    `listening; certificate CN=gateway-renewed valid until ${notAfter.toISOString().slice(0, 10)}`,
  );

  // systemd is told: RELOADING=1 (with the monotonic time), then READY=1 with the status line.
  if (notify !== null) {
    const texts = notify.datagrams.map((d) => d.text).filter((t) => !t.startsWith('WATCHDOG'));
    const reloading = texts.findIndex((t) => t.startsWith('RELOADING=1\nMONOTONIC_USEC='));
    expect(reloading, texts.join('\n---\n')).toBeGreaterThan(0);
    expect(texts.slice(0, reloading).some((t) => t.startsWith('READY=1'))).toBe(true);
    expect(texts.slice(reloading + 1).find((t) => t.startsWith('READY=1'))).toMatch(
      /^READY=1\nSTATUS=/,
    );
  }
}, 60_000);

it('keeps serving the old certificate when the new key is not the certificate’s, says why, and runs on', async () => {
  const served = await servedFingerprint();
  const mismatched = await serverCertificate('gateway-mismatched', new Date(Date.now() + 90 * DAY));
  // The new certificate, with the key of the one served: a renewal half done.
  replace(pki.certFile, mismatched.cert);
  const refused = await reload((l) => l.includes('HTTPS TLS files not reloaded'));
  const line = JSON.parse(refused) as Record<string, unknown>;
  expect(line.level).toBe(50);
  expect(line.msg).toContain(
    `https.keyFile: ${pki.keyFile} is not the private key of https.certFile ${pki.certFile}`,
  );
  expect(line.msg).toContain('the certificate served so far stays');
  // No key material in the log.
  expect(daemon.lines.join('\n')).not.toContain('PRIVATE KEY');
  const done = await daemon.line(
    (l) =>
      l.includes('"msg":"reload done"') &&
      daemon.lines.lastIndexOf(l) > daemon.lines.lastIndexOf(refused),
    5_000,
  );
  expect(JSON.parse(done)).toMatchObject({ https: 'kept' });

  expect(await servedFingerprint()).toBe(served);
  const valve = plant.device('v1');
  const after = await command('reload-close-2', 'close');
  expect(after.status, JSON.stringify(after.json)).toBe(200);
  expect(valve.writesWithSeq(Number(after.json.seq))).toBe(1);
  expect(exited).toBe(false);
}, 30_000);

it('checks client certificates against a rotated clientCaFile after SIGHUP', async () => {
  // Valid server files again (the case before left a mismatched pair).
  const renewed = await serverCertificate('gateway-rotated', new Date(Date.now() + 400 * DAY));
  replace(pki.keyFile, renewed.key);
  replace(pki.certFile, renewed.cert);
  const newCa = await pki.foreignCa();
  const fromOld = await pki.client('maint-laptop');
  const fromNew = await pki.client('maint-laptop', { ca: newCa });
  const devices = (clientCert: Pem): Promise<number> =>
    call({ port, ca: pki.serverCa.cert }, 'GET', '/v1/devices', { clientCert }).then(
      (r) => r.status,
    );
  expect(await devices(fromOld)).toBe(200);
  expect(await devices(fromNew)).toBe(401);

  replace(pki.clientCaFile, newCa.cert);
  const reloaded = await reload((l) => l.includes('"msg":"reload done"'));
  expect(JSON.parse(reloaded)).toMatchObject({ https: 'reloaded' });

  expect(await devices(fromNew)).toBe(200);
  expect(await devices(fromOld)).toBe(401);
  expect(exited).toBe(false);
}, 30_000);
