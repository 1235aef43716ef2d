import { execFileSync, spawn } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { stringify } from 'yaml';
import { afterAll, beforeAll, expect, inject, it } from 'vitest';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import { freePort, until } from '../helpers/mosquitto.js';
import { hasCommand, isRoot, realComponent } from '../helpers/real.js';
import { buildInto } from '../systemd/build.js';

/**
 * README.md's "Running the daemon" block, its two node lines run verbatim from a checkout
 * whose dist/ is built: the daemon on /etc/sluice/sluice.yaml, and the same with --check. The
 * site file must be at that path, so each line runs in a mount namespace of its own where /etc
 * is an overlay of the host's (the test's site file written there, the host's /etc untouched).
 * The site: one sluice-sim Modbus PLC, HTTPS on a free loopback port, a state folder in the
 * test's. Judged by what exists on disk (--check creates nothing; the daemon makes its journal),
 * the daemon's HTTPS readiness, a command's write received at the simulator, and its stop.
 *
 * Not run: the block's `npm run build`, which writes this tree's dist/ (other test files run
 * from it) and type-checks for tens of seconds; the checkout's dist/ is the run's compiled tree
 * (test/global-setup.ts), or a build made aside (test/systemd/build.ts).
 */

const ready = realComponent(
  'a mount namespace with an overlay over /etc',
  isRoot && hasCommand('unshare') && hasCommand('mount'),
  'root and util-linux',
);

const TOKEN = 'readme-running-token';

let plant: Plant;
let dir: string;
let cleanup: () => void;
let checkout: string;
let site: string;
let stateDir: string;
let ca: string;
let httpsPort: number;

/** README.md's block under "## Running the daemon". */
function block(): string[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const lines = /## Running the daemon\n\n```sh\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(lines, 'README.md: the block of "Running the daemon"').toBeDefined();
  return lines!.split('\n').filter((l) => l.trim() !== '');
}

/** The line as printed, without its trailing comment (which the shell would drop too). */
function line(pattern: RegExp): string {
  const found = block().filter((l) => pattern.test(l));
  expect(found, pattern.source).toHaveLength(1);
  return found[0]!;
}

beforeAll(async () => {
  if (!ready) return;
  ({ dir, cleanup } = tempDir('sluice-readme-running-'));
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        'modbus-plc': {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          scanMs: 5,
          devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 200 } },
        },
      },
    },
    { ephemeralPorts: true },
  );
  const endpoint = plant.plc('modbus-plc').endpoint;
  if (endpoint.protocol !== 'modbus') throw new Error('modbus-plc is not Modbus');

  checkout = join(dir, 'sluice');
  mkdirSync(checkout);
  cpSync(join(ROOT, 'package.json'), join(checkout, 'package.json'));
  cpSync(join(ROOT, 'devices'), join(checkout, 'devices'), { recursive: true });
  symlinkSync(join(ROOT, 'node_modules'), join(checkout, 'node_modules'));
  const tree = inject('compiledTree');
  if (tree === undefined) await buildInto(join(checkout, 'dist'));
  else symlinkSync(tree, join(checkout, 'dist'));

  const tls = join(dir, 'tls');
  mkdirSync(tls);
  ca = await loopbackCertificate(tls);
  writeFileSync(join(dir, 'token'), `${TOKEN}\n`, { mode: 0o600 });
  httpsPort = await freePort();
  stateDir = join(dir, 'state');
  site = join(dir, 'sluice.yaml');
  writeFileSync(
    site,
    stringify({
      gatewayId: 'readme',
      stateDir,
      https: {
        host: '127.0.0.1',
        port: httpsPort,
        certFile: join(tls, 'cert.pem'),
        keyFile: join(tls, 'key.pem'),
      },
      identities: { scada: { tokenFile: join(dir, 'token'), devices: ['*'] } },
      plcs: {
        'modbus-plc': {
          protocol: 'modbus',
          host: endpoint.host,
          port: endpoint.port,
          unitId: endpoint.unitId,
        },
      },
      devices: { 'inlet-valve': { plc: 'modbus-plc', profile: 'valve', base: 0 } },
    }),
  );
}, 120_000);

afterAll(async () => {
  if (!ready) return;
  await plant.stop();
  cleanup();
});

/**
 * `command` run by a shell in the checkout, in a mount namespace whose /etc is the host's
 * with the site file at /etc/sluice/sluice.yaml (an overlay: the host's /etc is not written).
 */
function inNamespace(command: string, name: string) {
  // The overlay's upper and work folders on a tmpfs of the namespace's: an overlay cannot
  // have them on an overlayfs, which /tmp is in many containers.
  const layer = join(dir, `etc-${name}`);
  mkdirSync(layer);
  const script = [
    'set -e',
    `mount -t tmpfs tmpfs ${layer}`,
    `mkdir ${layer}/upper ${layer}/work`,
    `mount -t overlay overlay -o lowerdir=/etc,upperdir=${layer}/upper,workdir=${layer}/work /etc`,
    'mkdir -p /etc/sluice',
    `cp ${site} /etc/sluice/sluice.yaml`,
    `cd ${checkout}`,
    'exec sh -c "$README_LINE"',
  ].join('\n');
  const child = spawn('unshare', ['-m', '--propagation', 'private', 'sh', '-c', script], {
    env: { ...process.env, README_LINE: command },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  });
  const out: string[] = [];
  createInterface({ input: child.stdout }).on('line', (l) => out.push(l));
  createInterface({ input: child.stderr }).on('line', (l) => out.push(l));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  return { child, out, exited };
}

it.runIf(ready)(
  'README "Running the daemon": --check creates nothing; the daemon runs the site and stops on SIGTERM',
  async () => {
    // --check: valid, and nothing created (no state folder, no journal).
    const check = inNamespace(line(/--config \/etc\/sluice\/sluice\.yaml --check\b/), 'check');
    expect(await check.exited, check.out.join('\n')).toBe(0);
    expect(check.out).toContain(
      'sluiced: /etc/sluice/sluice.yaml: configuration is valid (nothing was created)',
    );
    expect(check.out.join('\n')).toMatch(/inlet-valve +modbus-plc +valve +base 0/);
    expect(existsSync(stateDir), 'the state folder').toBe(false);

    // The daemon: ready over HTTPS, a command written once to the PLC, then SIGTERM.
    const daemon = inNamespace(
      line(/^node dist\/src\/daemon\/cli\.js --config \/etc\/sluice\/sluice\.yaml +# sluiced$/),
      'daemon',
    );
    try {
      const target = { port: httpsPort, ca, token: TOKEN };
      await until(
        async () => {
          if (daemon.child.exitCode !== null) throw new Error(daemon.out.join('\n'));
          try {
            return (await httpsRequest(target, 'GET', '/readyz')).status === 200 ? true : undefined;
          } catch {
            return undefined;
          }
        },
        30_000,
        'the daemon ready over HTTPS',
      );
      expect(existsSync(join(stateDir, 'journal.db')), 'the journal made').toBe(true);
      const answer = await httpsRequest(
        target,
        'POST',
        '/v1/commands',
        { 'idempotency-key': 'readme-running-1' },
        { device: 'inlet-valve', action: 'open' },
      );
      expect(answer.status, answer.body).toBe(200);
      const valve = plant.device('inlet-valve');
      expect(valve.counters.writesReceived).toBe(1);
      expect(valve.writesWithSeq(answer.json().seq as number)).toBe(1);
      // SIGTERM to sluiced (as systemd or kill sends it), whose shell passes its exit on.
      const pid = execFileSync(
        'pgrep',
        ['-g', String(daemon.child.pid), '-f', '^node dist/src/daemon/cli.js'],
        {
          encoding: 'utf8',
        },
      ).trim();
      expect(pid, 'one sluiced process').toMatch(/^\d+$/);
      process.kill(Number(pid), 'SIGTERM');
      expect(await daemon.exited, daemon.out.join('\n')).toBe(0);
    } finally {
      try {
        process.kill(-daemon.child.pid!, 'SIGKILL');
      } catch {
        // stopped
      }
    }
  },
  90_000,
);
