import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Plant } from '../../simulators/plant.js';
import { startSluiced, type Running } from '../config/sluiced.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * A token file renewed in place, the daemon reloaded (SIGHUP, `systemctl reload sluiced`): token
 * and password files are read at start only, and under $CREDENTIALS_DIRECTORY (LoadCredential=)
 * systemd hands a reload its old copy anyway. The reload said nothing of them, so an operator
 * who rotated a token and reloaded took the new one for in use. Now every reload names them and
 * says that a restart takes a new one. Real sluiced (a process) with the token as the shipped
 * unit passes it (${CREDENTIALS_DIRECTORY}/sluice_scada.token), sluice-sim, real TLS; ground
 * truth: the intake's answers to the old and the new token after the reload, and after a
 * restart.
 */

const OLD = 'scada-token-before-renewal';
const NEW = 'scada-token-after-renewal';

let plant: Plant;
let dir: string;
let cleanup: () => void;
let configPath: string;
let credentials: string;
let ca: string;
let daemon: Running | null = null;

async function start(): Promise<number> {
  daemon = startSluiced(['--config', configPath], { CREDENTIALS_DIRECTORY: credentials });
  const started = await daemon.line((l) => l.includes('"msg":"sluiced started"'), 60_000);
  return (JSON.parse(started) as { https: { port: number } }).https.port;
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-reload-token-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0 } });
  ca = await loopbackCertificate(dir);
  credentials = join(dir, 'credentials');
  mkdirSync(credentials, { mode: 0o700 });
  writeFileSync(join(credentials, 'sluice_scada.token'), `${OLD}\n`, { mode: 0o600 });
  const inventory = inventoryFor(plant);
  configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'reloadtoken',
      stateDir: 'state',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: {
        scada: { tokenFile: '${CREDENTIALS_DIRECTORY}/sluice_scada.token', devices: ['*'] },
      },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
}, 30_000);

afterAll(async () => {
  await daemon?.stop();
  await plant.stop();
  cleanup();
}, 30_000);

describe('a token file renewed, then a reload', () => {
  it('the reload says the token is read at start only; the old token stays in use until a restart', async () => {
    let port = await start();
    const status = async (token: string): Promise<number> =>
      (await httpsRequest({ port, ca, token }, 'GET', '/v1/devices')).status;
    expect(await status(OLD)).toBe(200);

    // Renewed as an agent does it: written beside, renamed over.
    const file = join(credentials, 'sluice_scada.token');
    writeFileSync(`${file}.new`, `${NEW}\n`, { mode: 0o600 });
    renameSync(`${file}.new`, file);
    const running = daemon!;
    const from = running.lines.length;
    running.signal('SIGHUP');
    await running.line(
      (l) => running.lines.lastIndexOf(l) >= from && l.includes('"msg":"reload done"'),
      15_000,
    );
    const warned = running.lines
      .slice(from)
      .map((l) => JSON.parse(l) as { level: number; msg: string; files?: string[] })
      .find((l) => l.msg.startsWith('reload: token and password files are read at start only'));
    expect(warned).toMatchObject({
      level: 40,
      files: [`identities.scada.tokenFile: ${file}`],
    });
    expect(warned?.msg).toContain('takes effect with a restart (systemctl restart sluiced)');
    expect(warned?.msg).toContain('LoadCredential=');
    // What the log says is what the intake does: the old token still, the new one not yet.
    expect(await status(OLD)).toBe(200);
    expect(await status(NEW)).toBe(401);

    await running.stop();
    port = await start();
    expect(await status(NEW)).toBe(200);
    expect(await status(OLD)).toBe(401);
  }, 90_000);
});
