import { spawn } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { nodeArgs } from '../helpers/entry.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { hasCommand, isRoot, realComponent } from '../helpers/real.js';
import { configYaml, seedJournal, sluicectlInProcess, type CliRun } from './helpers.js';

/**
 * sluicectl on a site whose state folder and admin socket are named by the folders systemd
 * gives the unit (`stateDir: ${STATE_DIRECTORY}`, `admin.socket: ${RUNTIME_DIRECTORY}/…`, as
 * docs/configuration.md allows), run from a shell that has neither variable, as an operator's
 * has: it reads the folders systemd/sluiced.service has made for the daemon (StateDirectory=,
 * RuntimeDirectory=), says so when a path under one fails, and never takes `${…}` for a folder
 * under the working directory. The binary runs in a mount namespace of its own whose /var/lib
 * and /run are empty (tmpfs), with the test's folders bound where the unit's are; the host's
 * are untouched. Ground truth: the seeded journal's stuck command listed, and the health a real
 * daemon (sluice-sim behind it, its folders given as systemd gives them) answers on its admin
 * socket.
 */

const ready = realComponent(
  'a mount namespace with tmpfs over /var/lib and /run',
  isRoot && hasCommand('unshare') && hasCommand('mount'),
  'root and util-linux',
);

/** The unit's folders, as systemd/sluiced.service names them (systemd.exec(5), a system unit). */
function unitFolders(): { state: string; runtime: string } {
  const unit = readFileSync(join(ROOT, 'systemd', 'sluiced.service'), 'utf8');
  const setting = (name: string): string => {
    const value = new RegExp(`^${name}=(\\S+)$`, 'm').exec(unit)?.[1];
    expect(value, `systemd/sluiced.service: ${name}=`).toBeDefined();
    return value!;
  };
  return {
    state: `/var/lib/${setting('StateDirectory')}`,
    runtime: `/run/${setting('RuntimeDirectory')}`,
  };
}

let dir: string;
let cleanup: () => void;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('sluice-unit-folders-'));
});

afterAll(() => {
  cleanup();
});

/**
 * The sluicectl binary in a mount namespace where the unit's state and runtime folders are
 * `binds` (test folders), or empty, from the test's working directory, without the unit's
 * variables (or with those in `env`).
 */
function inUnitFolders(
  binds: { state?: string; runtime?: string },
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<CliRun> {
  const unit = unitFolders();
  const script = [
    'set -e',
    'mount -t tmpfs tmpfs /var/lib',
    'mount -t tmpfs tmpfs /run',
    `mkdir -p ${unit.state} ${unit.runtime}`,
    ...(binds.state === undefined ? [] : [`mount --bind ${binds.state} ${unit.state}`]),
    ...(binds.runtime === undefined ? [] : [`mount --bind ${binds.runtime} ${unit.runtime}`]),
    'exec "$@"',
  ].join('\n');
  const base = Object.fromEntries(
    Object.entries(process.env).filter(
      ([name]) =>
        !name.startsWith('SLUICE_') && name !== 'STATE_DIRECTORY' && name !== 'RUNTIME_DIRECTORY',
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
    {
      env: { ...base, SLUICECTL_CHECK_WITHIN: '60s', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(new Error(`sluicectl ${args.join(' ')} did not exit within 30 s\n${stdout}${stderr}`));
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

/** A site file whose state folder is `stateDir`, in a folder of its own. */
function site(name: string, stateDir: string): string {
  const folder = join(dir, name);
  mkdirSync(folder);
  const path = join(folder, 'sluice.yaml');
  writeFileSync(path, configYaml(stateDir));
  return path;
}

it.runIf(ready)(
  "stuck reads the journal in the unit's state folder when STATE_DIRECTORY is not set here",
  async () => {
    const state = join(dir, 'unit-state');
    mkdirSync(state);
    seedJournal(join(state, 'journal.db'), Date.now());
    const config = site('stuck', '${STATE_DIRECTORY}');

    const run = await inUnitFolders({ state }, ['--config', config, 'stuck']);
    // The seeded journal's stuck command: exit 3, as monitoring expects of it.
    expect(run.stdout).toMatch(/^k-stuck\s/m);
    expect(run.code).toBe(3);
    // No daemon here: the warning names the socket in the unit's folder, and where that came from.
    expect(run.stderr).toBe(
      "sluicectl: sluiced is not running (nothing listens at /var/lib/sluice/admin.sock): no open command is being settled; when it starts it takes each one up by reading its device, never by writing it again. reverify and resolve need it running (systemctl status sluiced) (STATE_DIRECTORY is not set here: sluicectl took ${STATE_DIRECTORY} for /var/lib/sluice, the folder of the shipped unit's StateDirectory=sluice; set STATE_DIRECTORY if the daemon's unit has another)\n",
    );

    // A STATE_DIRECTORY set here is the operator's, and wins.
    const other = join(dir, 'other-state');
    const theirs = await inUnitFolders({ state }, ['--config', config, 'stuck'], {
      STATE_DIRECTORY: other,
    });
    expect(theirs.code).toBe(1);
    expect(theirs.stderr).toBe(
      `sluicectl: no journal at ${join(other, 'journal.db')}: check --journal, or journal.path and stateDir in the configuration\n`,
    );
  },
  60_000,
);

it.runIf(ready)(
  'a path under a folder taken for the unit says which variable and which folder it took',
  async () => {
    const config = site('nothing', '${STATE_DIRECTORY}');
    const run = await inUnitFolders({}, ['--config', config, 'stuck']);
    expect(run.code).toBe(1);
    expect(run.stderr).toBe(
      "sluicectl: no journal at /var/lib/sluice/journal.db: check --journal, or journal.path and stateDir in the configuration (STATE_DIRECTORY is not set here: sluicectl took ${STATE_DIRECTORY} for /var/lib/sluice, the folder of the shipped unit's StateDirectory=sluice; set STATE_DIRECTORY if the daemon's unit has another)\n",
    );
  },
  60_000,
);

it('refuses a path under a folder the shipped unit does not make, naming its variable', async () => {
  const config = site('configuration', '${CONFIGURATION_DIRECTORY}/state');
  const run = await sluicectlInProcess(['--config', config, 'stuck'], {
    env: { CONFIGURATION_DIRECTORY: undefined },
  });
  expect(run.code).toBe(1);
  expect(run.stderr).toBe(
    "sluicectl: the journal ${CONFIGURATION_DIRECTORY}/state/journal.db: CONFIGURATION_DIRECTORY is not set here, and the shipped unit (systemd/sluiced.service) makes no such folder: set CONFIGURATION_DIRECTORY to the folder the daemon's unit has (or give --journal PATH)\n",
  );
});

it.runIf(ready)(
  "health reaches the daemon at the unit's runtime folder, with the token in its state folder",
  async () => {
    const plant: Plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          mb: {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 200 } },
          },
        },
      },
      { ephemeralPorts: true, control: false },
    );
    const folder = join(dir, 'daemon');
    mkdirSync(folder);
    await loopbackCertificate(folder);
    const inventory = inventoryFor(plant);
    const config = join(folder, 'sluice.yaml');
    writeFileSync(
      config,
      stringify({
        gatewayId: 'unitfolders',
        stateDir: '${STATE_DIRECTORY}',
        admin: { socket: '${RUNTIME_DIRECTORY}/admin.sock' },
        https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        identities: {},
        plcs: inventory.plcs,
        devices: inventory.devices,
      }),
    );
    // The daemon's folders as systemd makes them and names them for the unit.
    const state = join(folder, 'state');
    const runtime = join(folder, 'run');
    mkdirSync(state, { mode: 0o700 });
    mkdirSync(runtime, { mode: 0o750 });
    const daemon = await Daemon.start(
      loadConfig(config, { env: { STATE_DIRECTORY: state, RUNTIME_DIRECTORY: runtime } }),
      { logger: pino({ level: 'silent' }) },
    );
    try {
      const health = await inUnitFolders({ state, runtime }, [
        '--config',
        config,
        'health',
        '--json',
      ]);
      expect(health.stderr).toBe('');
      // The daemon's own readiness document, as its admin endpoint answers it.
      expect(health.json()).toMatchObject({ checks: { journal: { ok: true } } });
    } finally {
      await daemon.stop();
      await plant.stop();
    }
  },
  60_000,
);
