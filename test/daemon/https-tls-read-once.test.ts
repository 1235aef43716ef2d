import { X509Certificate } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { connect } from 'node:tls';
import { pino } from 'pino';
import { generate } from 'selfsigned';
import { afterAll, afterEach, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';

/**
 * The HTTPS TLS files are read once at start: the text the start's checks passed
 * (src/config/preflight.ts) is the text served. The intake used to read the files again when
 * it began to listen, after the journal's check, the recovery and the drivers' start; a file a
 * renewal agent replaced in between was served unchecked, or, a key that was not the
 * certificate's, failed the start with OpenSSL's words where the check names the file. The
 * files are replaced from the daemon's own hook between the two (beforeDrivers, which sluiced
 * uses to load node-opcua): a real replacement, at the one moment that shows it. Ground truth
 * is the certificate a new TLS handshake is given.
 */

let plant: Plant;
let dir: string;
let cleanup: () => void;
let configPath: string;
let daemon: Daemon | null = null;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-tls-once-'));
  plant = await startModbusPlant({ v1: { profile: 'valve', base: 0 } });
  configPath = await writeDaemonSite(dir, plant, 'tls-once');
}, 30_000);

afterEach(async () => {
  await daemon?.stop();
  daemon = null;
});

afterAll(async () => {
  await plant.stop();
  cleanup();
});

/** Writes a file whole, as a renewal agent should: beside it, then renamed over it. */
function replace(name: string, text: string): void {
  const path = join(dir, name);
  writeFileSync(`${path}.new`, text, { mode: 0o600 });
  renameSync(`${path}.new`, path);
}

async function otherPair(): Promise<{ cert: string; key: string }> {
  const made = await generate([{ name: 'commonName', value: 'replaced-during-start' }], {
    keyType: 'ec',
    curve: 'P-256',
  });
  return { cert: made.cert, key: made.private };
}

/** The fingerprint of the certificate a new TLS connection to the daemon is given. */
function served(port: number): Promise<string> {
  return new Promise((resolve, reject) => {
    // The certificate is looked at, not trusted: the test asks which one is served.
    const socket = connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      const fingerprint = socket.getPeerCertificate().fingerprint256;
      socket.destroy();
      resolve(fingerprint);
    });
    socket.once('error', reject);
  });
}

/** Starts the daemon; `during` runs between the start's checks and the intake's listening. */
async function start(during: () => void): Promise<Daemon> {
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    beforeDrivers: () => {
      during();
      return Promise.resolve();
    },
  });
  return daemon;
}

it('serves the pair the start checked, not one put in place while it starts', async () => {
  const checked = new X509Certificate(readFileSync(join(dir, 'cert.pem'))).fingerprint256;
  const other = await otherPair();
  const started = await start(() => {
    replace('key.pem', other.key);
    replace('cert.pem', other.cert);
  });
  expect(await served(started.https!.port)).toBe(checked);
  expect(started.readiness().checks.https?.detail).toMatch(/certificate CN=localhost valid/);
}, 30_000);

it('starts on the checked pair when the key is replaced by one not the certificate’s meanwhile', async () => {
  // The files as the last case left them: the pair made then.
  const checked = new X509Certificate(readFileSync(join(dir, 'cert.pem'))).fingerprint256;
  const stray = await otherPair();
  const started = await start(() => {
    replace('key.pem', stray.key);
  });
  expect(await served(started.https!.port)).toBe(checked);
}, 30_000);
