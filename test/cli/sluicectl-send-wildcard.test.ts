import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { generate } from 'selfsigned';
import { stringify } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { sluicectl, untilFirstReadbacks } from './helpers.js';

/**
 * `sluicectl send` on a gateway as the shipped systemd/sluice.yaml sets it up: HTTPS on the
 * wildcard address, with a certificate that names the gateway (`gw-7.plant`), as a plant's
 * certificate does, not the loopback address sluicectl reaches a wildcard listener on. The real
 * daemon and sluice-sim; the simulator's write counter is the ground truth.
 */

const TOKEN = 'cli-wildcard-token';

let dir: string;
let cleanup: () => void;
let plant: Plant;
let daemon: Daemon;
let cliConfig: string;
let otherCa: string;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-ctl-wildcard-'));
  plant = await startModbusPlant({ 'gw-valve': { profile: 'valve', base: 0, travelMs: 200 } });
  const pems = await generate([{ name: 'commonName', value: 'gw-7.plant' }], {
    keyType: 'ec',
    curve: 'P-256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 2, value: 'gw-7.plant' }] }],
  });
  writeFileSync(join(dir, 'cert.pem'), pems.cert);
  writeFileSync(join(dir, 'key.pem'), pems.private);
  // Another self-signed certificate for the same name: not the gateway's, not to be trusted.
  const other = await generate([{ name: 'commonName', value: 'gw-7.plant' }], {
    keyType: 'ec',
    curve: 'P-256',
  });
  otherCa = join(dir, 'other.pem');
  writeFileSync(otherCa, other.cert);
  writeFileSync(join(dir, 'token'), `${TOKEN}\n`, { mode: 0o600 });
  const inventory = inventoryFor(plant);
  const site = {
    gatewayId: 'wildcard',
    stateDir: 'state',
    https: { host: '0.0.0.0', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
    identities: {
      plant: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] },
    },
    plcs: inventory.plcs,
    devices: inventory.devices,
  };
  const configPath = join(dir, 'sluice.yaml');
  writeFileSync(configPath, stringify(site));
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
  const port = daemon.https?.port;
  if (port === undefined) throw new Error('the daemon has no HTTPS listener');
  // The daemon's own site, with the port it was given.
  cliConfig = join(dir, 'sluicectl.yaml');
  writeFileSync(cliConfig, stringify({ ...site, https: { ...site.https, port } }));
  await untilFirstReadbacks(daemon);
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
});

it("reaches a wildcard listener on loopback and takes the certificate that names the gateway, not another's", async () => {
  const valve = plant.device('gw-valve');
  const before = valve.counters.writesReceived;
  const tokenFile = join(dir, 'token');
  const sent = await sluicectl([
    '--config',
    cliConfig,
    'send',
    'gw-valve',
    'open',
    '--key',
    'wildcard-1',
    '--token-file',
    tokenFile,
  ]);
  expect({ code: sent.code, stderr: sent.stderr }).toEqual({ code: 0, stderr: '' });
  expect(sent.stdout).toMatch(/^CONFIRMED over https \(HTTP 200\)/);
  expect(valve.counters.writesReceived).toBe(before + 1);
  expect(valve.snapshot().state).toBe('OPEN');

  // The chain is still checked: a CA that did not issue the gateway's certificate is refused,
  // before anything is sent.
  const untrusted = await sluicectl([
    '--config',
    cliConfig,
    'send',
    'gw-valve',
    'close',
    '--key',
    'wildcard-2',
    '--token-file',
    tokenFile,
    '--ca',
    otherCa,
  ]);
  expect(untrusted.code).toBe(1);
  expect(untrusted.stderr).toMatch(
    /^sluicectl: cannot reach the HTTPS intake at https:\/\/127\.0\.0\.1:\d+: /,
  );
  expect(valve.counters.writesReceived).toBe(before + 1);
}, 60_000);
