import { execFileSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { generate } from 'selfsigned';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import {
  addVethNamespace,
  removeVethNamespace,
  run,
  vethNamespace,
  vethNamespaceAvailable,
  type VethNamespace,
} from '../helpers/veth-namespace.js';
import { sluicectl, untilFirstReadbacks } from './helpers.js';

/**
 * `sluicectl send --via https` to a daemon whose HTTPS listener binds a link-local IPv6 address
 * with its zone (`https.host: fe80::…%IFACE`, the only form the configuration takes for one):
 * the command reaches the intake through the interface the zone names and is confirmed, the
 * server's certificate is checked against the gateway's names (its CA, never the address), and
 * the messages that name the intake write its URL as RFC 6874 does, `https://[fe80::…%25IFACE]:PORT`
 * (they wrote `https://fe80::…%IFACE:PORT`, which no URL parser reads as a host and port).
 * A real veth pair (its other end in a network namespace of the test's own, so that the link
 * is up), the real daemon and sluicectl processes, sluice-sim; ground truth: the simulator's
 * write counter and valve. Skipped when not root (iproute2 and a namespace are needed); a
 * failure under SLUICE_REQUIRE_REAL=1.
 */

const real = vethNamespaceAvailable();
const TOKEN = 'cli-zoned-token';
/** The listener's link-local address on this end of the pair (the zone is added to it). */
const ADDRESS = 'fe80::5:1';

let dir: string;
let cleanup: () => void;
let link: VethNamespace;
let plant: Plant;
let daemon: Daemon;
let cliConfig: string;
let otherCa: string;
let host: string;

beforeAll(async () => {
  if (!real) return;
  ({ dir, cleanup } = tempDir('sluice-ctl-zoned-'));
  link = vethNamespace('zoned', 'z', 217);
  addVethNamespace(link);
  // nodad: usable at once, not after duplicate address detection.
  run('ip', '-6', 'addr', 'add', `${ADDRESS}/64`, 'dev', link.hostLink, 'nodad');
  host = `${ADDRESS}%${link.hostLink}`;
  plant = await startModbusPlant({ 'zone-valve': { profile: 'valve', base: 0, travelMs: 200 } });
  const pems = await generate([{ name: 'commonName', value: 'gw-9.plant' }], {
    keyType: 'ec',
    curve: 'P-256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 2, value: 'gw-9.plant' }] }],
  });
  writeFileSync(join(dir, 'cert.pem'), pems.cert);
  writeFileSync(join(dir, 'key.pem'), pems.private);
  // Another self-signed certificate for the same name: not the gateway's, not to be trusted.
  const other = await generate([{ name: 'commonName', value: 'gw-9.plant' }], {
    keyType: 'ec',
    curve: 'P-256',
  });
  otherCa = join(dir, 'other.pem');
  writeFileSync(otherCa, other.cert);
  writeFileSync(join(dir, 'token'), `${TOKEN}\n`, { mode: 0o600 });
  const inventory = inventoryFor(plant);
  const site = {
    gatewayId: 'zoned',
    stateDir: 'state',
    https: { host, port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
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
  cliConfig = join(dir, 'sluicectl.yaml');
  writeFileSync(cliConfig, stringify({ ...site, https: { ...site.https, port } }));
  await untilFirstReadbacks(daemon);
}, 60_000);

afterAll(async () => {
  if (!real) return;
  await daemon.stop();
  await plant.stop();
  removeVethNamespace(link);
  cleanup();
});

describe.runIf(real)('sluicectl send --via https to a zoned link-local listener', () => {
  it('is confirmed through the zone, checks the certificate, and names the intake by a URL RFC 6874 reads', async () => {
    // The listener is bound to the address on the interface its zone names, as the kernel
    // lists it.
    const listening = execFileSync('ss', ['-ltnH', `sport = :${daemon.https?.port}`], {
      encoding: 'utf8',
    });
    expect(listening).toContain(`[${ADDRESS}]%${link.hostLink}:${daemon.https?.port}`);

    const valve = plant.device('zone-valve');
    const before = valve.counters.writesReceived;
    const tokenFile = join(dir, 'token');
    const sent = await sluicectl(
      [
        '--config',
        cliConfig,
        'send',
        'zone-valve',
        'open',
        '--key',
        'zoned-1',
        '--via',
        'https',
        '--token-file',
        tokenFile,
      ],
      { timeoutMs: 40_000 },
    );
    expect({ code: sent.code, stderr: sent.stderr }).toEqual({ code: 0, stderr: '' });
    expect(sent.stdout).toMatch(/^CONFIRMED over https \(HTTP 200\)/);
    expect(valve.counters.writesReceived).toBe(before + 1);
    expect(valve.snapshot().state).toBe('OPEN');

    // The chain is still checked: a CA that did not issue the gateway's certificate is refused
    // before anything is sent, and the message names the intake by its URL.
    const untrusted = await sluicectl(
      [
        '--config',
        cliConfig,
        'send',
        'zone-valve',
        'close',
        '--key',
        'zoned-2',
        '--via',
        'https',
        '--token-file',
        tokenFile,
        '--ca',
        otherCa,
      ],
      { timeoutMs: 40_000 },
    );
    expect(untrusted.code).toBe(1);
    // RFC 6874: the address in brackets, its zone after "%25" (the percent sign encoded).
    const url = `https://[${ADDRESS}%25${link.hostLink}]:${daemon.https?.port}`;
    expect(untrusted.stderr).toMatch(/^sluicectl: cannot reach the HTTPS intake at /);
    expect(untrusted.stderr).toContain(`at ${url}: `);
    expect(valve.counters.writesReceived).toBe(before + 1);
  }, 90_000);
});
