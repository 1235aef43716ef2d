import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Plant } from '../../simulators/plant.js';
import { startSluiced, type Running } from '../config/sluiced.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * A token rotated by an operator at an ordinary path (identities.scada.tokenFile:
 * <dir>/tokens/scada), then `systemctl reload sluiced` (SIGHUP): the reload reads the file again
 * and from then on the new token is accepted and the old one refused, while a command in flight
 * across the reload goes on and is confirmed, written once. A file the reload cannot use (empty,
 * gone) keeps the token in use and an error names it: a reload never locks every client out. A
 * token under ${CREDENTIALS_DIRECTORY} (systemd's copy, made at start) is not read again, and the
 * reload still warns of it (reload-token-files.test.ts). Real sluiced (a process), sluice-sim,
 * real TLS; ground truth: the intake's answers to each token, and the simulator's write log.
 * (MQTT commands carry no token: the MQTT intake's identity is named by mqtt.identity, which a
 * reload leaves as it is.)
 */

const OLD = 'scada-token-before-rotation';
const NEW = 'scada-token-after-rotation';
const OPS = 'ops-token-from-credentials';

let plant: Plant;
let dir: string;
let cleanup: () => void;
let credentials: string;
let tokenFile: string;
let ca: string;
let daemon: Running;
let port: number;

interface LogLine {
  level: number;
  msg: string;
  files?: string[];
  file?: string;
  identity?: string;
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-reload-rotation-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 2_500 } });
  ca = await loopbackCertificate(dir);
  credentials = join(dir, 'credentials');
  mkdirSync(credentials, { mode: 0o700 });
  writeFileSync(join(credentials, 'sluice_ops.token'), `${OPS}\n`, { mode: 0o600 });
  mkdirSync(join(dir, 'tokens'), { mode: 0o700 });
  tokenFile = join(dir, 'tokens', 'scada');
  writeFileSync(tokenFile, `${OLD}\n`, { mode: 0o600 });
  const inventory = inventoryFor(plant);
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'rotation',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: {
        scada: { tokenFile: 'tokens/scada', devices: ['*'] },
        ops: { tokenFile: '${CREDENTIALS_DIRECTORY}/sluice_ops.token', devices: ['*'] },
      },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  daemon = startSluiced(['--config', configPath], { CREDENTIALS_DIRECTORY: credentials });
  const started = await daemon.line((l) => l.includes('"msg":"sluiced started"'), 60_000);
  port = (JSON.parse(started) as { https: { port: number } }).https.port;
}, 90_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

const status = async (token: string): Promise<number> =>
  (await httpsRequest({ port, ca, token }, 'GET', '/v1/devices')).status;

/** Writes the file as an operator's script does (beside, renamed over). */
function rotate(text: string): void {
  writeFileSync(`${tokenFile}.new`, text, { mode: 0o600 });
  renameSync(`${tokenFile}.new`, tokenFile);
}

/** SIGHUP; resolves with the reload's lines once it is done. */
async function reload(): Promise<LogLine[]> {
  const from = daemon.lines.length;
  daemon.signal('SIGHUP');
  await daemon.line(
    (l) => daemon.lines.lastIndexOf(l) >= from && l.includes('"msg":"reload done"'),
    15_000,
  );
  return daemon.lines.slice(from).map((l) => JSON.parse(l) as LogLine);
}

describe('a token file at an ordinary path rotated, then a reload', () => {
  it('takes the new token and refuses the old one; a command in flight is confirmed, written once', async () => {
    expect(await status(OLD)).toBe(200);
    expect(await status(OPS)).toBe(200);
    const valve = plant.device('inlet-valve');

    // A command in flight across the reload: written, travelling, its request waiting.
    const inFlight = httpsRequest(
      { port, ca, token: OLD },
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'rotation-open-1', prefer: 'wait=20' },
      { device: 'inlet-valve', action: 'open' },
    );
    await until(
      () => (valve.snapshot().state === 'OPENING' ? true : undefined),
      10_000,
      'inlet-valve OPENING',
    );

    rotate(`${NEW}\n`);
    const lines = await reload();
    // The reload happened while the valve travelled, its command's request still waiting.
    expect(valve.snapshot().state).toBe('OPENING');
    expect(await status(NEW)).toBe(200);
    expect(await status(OLD)).toBe(401);
    // The other identity's token (a credential, not read again) is untouched.
    expect(await status(OPS)).toBe(200);

    const replaced = lines.find((l) => l.msg.startsWith('reload: token file read again'));
    expect(replaced).toMatchObject({ level: 30, identity: 'scada', file: tokenFile });
    // The warning of 0084777 names only what the reload did not read: the credential.
    const warned = lines.find((l) =>
      l.msg.startsWith('reload: token and password files are read at start only'),
    );
    expect(warned).toMatchObject({
      level: 40,
      files: [`identities.ops.tokenFile: ${join(credentials, 'sluice_ops.token')}`],
    });
    // No line carries a token.
    expect(lines.some((l) => [OLD, NEW].some((t) => JSON.stringify(l).includes(t)))).toBe(false);

    const answer = await inFlight;
    expect(answer.status).toBe(200);
    expect(answer.json()).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(valve.snapshot().state).toBe('OPEN');
    expect(valve.writeLog).toHaveLength(1);
    // The command is the identity's, whichever of its tokens asks.
    const read = await httpsRequest(
      { port, ca, token: NEW },
      'GET',
      '/v1/commands/rotation-open-1',
    );
    expect(read.status).toBe(200);
    expect(read.json()).toMatchObject({ state: 'confirmed' });
    expect(valve.writeLog).toHaveLength(1);
  }, 60_000);

  it('keeps the token in use when the file is empty or gone, and says which file', async () => {
    rotate('\n');
    let lines = await reload();
    expect(lines.find((l) => l.level === 50 && l.file === tokenFile)?.msg).toContain('is empty');
    expect(await status(NEW)).toBe(200);

    rotate(`${NEW}\n`);
    renameSync(tokenFile, `${tokenFile}.aside`);
    lines = await reload();
    expect(lines.find((l) => l.level === 50 && l.file === tokenFile)?.msg).toContain(
      'cannot be read',
    );
    expect(await status(NEW)).toBe(200);
    expect(await status(OLD)).toBe(401);
  }, 60_000);
});
