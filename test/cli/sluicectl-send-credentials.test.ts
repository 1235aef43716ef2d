import { spawn } from 'node:child_process';
import { copyFileSync, mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Plant } from '../../simulators/plant.js';
import { startSluiced, type Running } from '../config/sluiced.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import {
  freePort,
  mosquittoAvailable,
  startMosquitto,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { hasCommand, isRoot, realComponent } from '../helpers/real.js';
import { makePki, type Pki } from '../intake/https-client.js';
import { sluicectl, type CliRun } from './helpers.js';

/**
 * `sluicectl send` on an installed gateway whose site file names its TLS files as the unit's
 * credentials (`mqtt.caFile: ${CREDENTIALS_DIRECTORY}/sluice_broker-ca.pem`, `https.certFile`
 * likewise; docs/configuration.md allows any path there), run from a shell, which has no
 * CREDENTIALS_DIRECTORY: it reads them where systemd/sluiced.service takes them from
 * (LoadCredential=sluice:/etc/sluice/credentials), as it did the token file already; it read
 * the unexpanded path and failed ("cannot read mqtt.caFile ${CREDENTIALS_DIRECTORY}/…:
 * ENOENT"). When the file is not there the error names it and says where it was looked for.
 * Real parts: Mosquitto over TLS, sluiced given the credentials as systemd gives them
 * (CREDENTIALS_DIRECTORY, files named sluice_<name>), sluice-sim's Modbus PLC, and the
 * sluicectl binary in a mount namespace of its own whose /etc has /etc/sluice/credentials (an
 * overlay over this machine's /etc; the host's is untouched). Ground truth: the simulator's
 * write log.
 */

const ready =
  mosquittoAvailable() &&
  realComponent(
    'a mount namespace with an overlay over /etc',
    isRoot && hasCommand('unshare') && hasCommand('mount'),
    'root and util-linux',
  );

describe.runIf(ready)("sluicectl send with TLS files among the unit's credentials", () => {
  let dir: string;
  let cleanup: () => void;
  let pki: Pki;
  let broker: Mosquitto;
  let plant: Plant;
  let daemon: Running;
  let config: string;
  /** The folder the unit loads its credentials from (/etc/sluice/credentials on a gateway). */
  let credentials: string;

  beforeAll(async () => {
    ({ dir, cleanup } = tempDir('sluice-send-credentials-'));
    pki = await makePki();
    broker = await startMosquitto({
      settings: [`certfile ${pki.certFile}`, `keyfile ${pki.keyFile}`],
    });
    credentials = join(dir, 'credentials');
    mkdirSync(credentials, { mode: 0o700 });
    writeFileSync(join(credentials, 'broker-ca.pem'), pki.serverCa.cert);
    const https = join(dir, 'https');
    mkdirSync(https);
    await loopbackCertificate(https);
    copyFileSync(join(https, 'cert.pem'), join(credentials, 'https.pem'));
    copyFileSync(join(https, 'key.pem'), join(credentials, 'https.key'));
    writeFileSync(join(credentials, 'plant.token'), 'send-credentials-token\n', { mode: 0o600 });
    // What systemd hands the daemon: each file as sluice_<name> in $CREDENTIALS_DIRECTORY.
    const unit = join(dir, 'unit-credentials');
    mkdirSync(unit, { mode: 0o700 });
    for (const name of readdirSync(credentials)) {
      copyFileSync(join(credentials, name), join(unit, `sluice_${name}`));
    }
    plant = await startModbusPlant({ v1: { profile: 'valve', base: 0 } });
    const inventory = inventoryFor(plant);
    config = join(dir, 'sluice.yaml');
    writeFileSync(
      config,
      stringify({
        gatewayId: 'creds',
        stateDir: 'state',
        https: {
          host: '127.0.0.1',
          port: await freePort(),
          certFile: '${CREDENTIALS_DIRECTORY}/sluice_https.pem',
          keyFile: '${CREDENTIALS_DIRECTORY}/sluice_https.key',
        },
        mqtt: {
          url: `mqtts://127.0.0.1:${broker.port}`,
          identity: 'plant',
          caFile: '${CREDENTIALS_DIRECTORY}/sluice_broker-ca.pem',
        },
        identities: {
          plant: { tokenFile: '${CREDENTIALS_DIRECTORY}/sluice_plant.token', devices: ['*'] },
        },
        plcs: inventory.plcs,
        devices: inventory.devices,
      }),
    );
    daemon = startSluiced(['--config', config], { CREDENTIALS_DIRECTORY: unit });
    await daemon.line((l) => l.includes('subscribed to the command topics'), 30_000);
  }, 60_000);

  afterAll(async () => {
    await daemon.stop();
    await plant.stop();
    await broker.close();
    pki.cleanup();
    cleanup();
  });

  /**
   * The sluicectl binary, without CREDENTIALS_DIRECTORY, in a mount namespace whose
   * /etc/sluice/credentials is the test's credentials folder.
   */
  function onGateway(args: readonly string[]): Promise<CliRun> {
    const upper = join(dir, `etc-${Math.random().toString(16).slice(2)}`);
    mkdirSync(join(upper, 'upper'), { recursive: true });
    mkdirSync(join(upper, 'work'));
    const script = [
      'set -e',
      `mount -t overlay overlay -o lowerdir=/etc,upperdir=${upper}/upper,workdir=${upper}/work /etc`,
      'mkdir -p /etc/sluice/credentials',
      `mount --bind ${credentials} /etc/sluice/credentials`,
      'exec "$@"',
    ].join('\n');
    const env = Object.fromEntries(
      Object.entries(process.env).filter(
        ([name]) => !name.startsWith('SLUICE_') && name !== 'CREDENTIALS_DIRECTORY',
      ),
    );
    const child = spawn(
      'unshare',
      [
        '-m',
        '--propagation',
        'private',
        'sh',
        '-c',
        script,
        'sh',
        process.execPath,
        ...nodeArgs('src/cli/sluicectl.ts'),
        ...args,
      ],
      { env: { ...env, SLUICECTL_CHECK_WITHIN: '60s' }, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(
          new Error(`sluicectl ${args.join(' ')} did not exit within 30 s\n${stdout}${stderr}`),
        );
      }, 30_000);
      child.once('error', reject);
      child.once('close', (code) => {
        clearTimeout(timer);
        resolve({
          code,
          stdout,
          stderr,
          // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- CliRun's
          json: <T>() => JSON.parse(stdout) as T,
        });
      });
    });
  }

  it('reads mqtt.caFile where the unit takes it from, and the valve moves once', async () => {
    const overMqtt = await onGateway([
      '--config',
      config,
      'send',
      'v1',
      'open',
      '--key',
      'creds-mqtt',
      '--via',
      'mqtt',
      '--json',
    ]);
    expect(overMqtt.stderr).toBe('');
    expect(overMqtt.code).toBe(0);
    expect(overMqtt.json()).toMatchObject({
      via: 'mqtt',
      key: 'creds-mqtt',
      settled: true,
      result: { state: 'confirmed', code: 'OK' },
    });
    // Ground truth: one open written to the PLC.
    expect(plant.device('v1').writeLog.map((w) => w.code)).toEqual([1]);
  }, 60_000);

  it('reads https.certFile where the unit takes it from, and the valve moves once', async () => {
    const overHttps = await onGateway([
      '--config',
      config,
      'send',
      'v1',
      'close',
      '--key',
      'creds-https',
      '--json',
    ]);
    expect(overHttps.stderr).toBe('');
    expect(overHttps.code).toBe(0);
    expect(overHttps.json()).toMatchObject({
      via: 'https',
      key: 'creds-https',
      settled: true,
      result: { state: 'confirmed', code: 'OK' },
    });
    // Ground truth: the open before, then this one close, written to the PLC.
    expect(plant.device('v1').writeLog.map((w) => w.code)).toEqual([1, 2]);
  }, 60_000);

  it('names the file and where it was looked for when it is not there', async () => {
    // This machine's own /etc has no /etc/sluice/credentials.
    const run = await sluicectl(
      ['--config', config, 'send', 'v1', 'open', '--key', 'creds-none', '--via', 'mqtt'],
      { env: { CREDENTIALS_DIRECTORY: undefined } },
    );
    expect(run.code).toBe(1);
    expect(run.stderr).toBe(
      "sluicectl: cannot read mqtt.caFile /etc/sluice/credentials/broker-ca.pem: ENOENT: no such file or directory, open '/etc/sluice/credentials/broker-ca.pem' (the site names it ${CREDENTIALS_DIRECTORY}/sluice_broker-ca.pem, one of the unit's credentials: CREDENTIALS_DIRECTORY is set for the service alone, so sluicectl reads it where systemd/sluiced.service takes it from, LoadCredential=sluice:/etc/sluice/credentials; that folder is root's: run with sudo)\n",
    );
  }, 30_000);
});
