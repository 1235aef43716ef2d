import { spawnSync } from 'node:child_process';
import { appendFileSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate } from '../helpers/loopback-https.js';
import { freePort, until } from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { hasCommand, isRoot, requireReal } from '../helpers/real.js';
import { buildInto } from './build.js';
import { bootContainer, type Container, type InContainer } from './container.js';

/**
 * The README's "Installing as a service" block, run as printed, step by step, by bash as root
 * in a systemd booted in a container (systemd-nspawn over an overlay of this machine's root,
 * sharing its loopback), from a checkout of the package with the reader's cert.pem and key.pem
 * beside it. What the reader does between the lines is done here too: the site file is edited
 * after step 3 (this test's PLC and port, no broker, the state folder and admin socket named
 * by the unit's ${STATE_DIRECTORY} and ${RUNTIME_DIRECTORY}), and the readiness curl of step 5
 * names that port instead of 8443 (which the demo test owns). Not run: step 1's first line
 * (`npm ci && npm run build && npm prune --omit=dev` reinstalls node_modules from the registry;
 * the checkout here is built by the same compiler, with this tree's node_modules). Judged on
 * the container's files and units, and on the simulator's write counter for a command sent
 * with the token step 3 made. test/systemd/install.test.ts goes on from an installed unit: the
 * watchdog, a restart's replay, `systemctl stop`.
 */

const why = !isRoot
  ? 'not root'
  : !hasCommand('systemd-nspawn')
    ? 'no systemd-nspawn (apt-get install systemd-container)'
    : !hasCommand('nsenter')
      ? 'no nsenter (util-linux)'
      : !existsSync('/usr/bin/node')
        ? 'no /usr/bin/node, which the unit runs'
        : !hasCommand('openssl') || !hasCommand('curl')
          ? 'no openssl or curl, which the README runs'
          : null;
if (why !== null) {
  if (requireReal)
    throw new Error(`SLUICE_REQUIRE_REAL=1 but the README install cannot run: ${why}`);
  console.warn(`the README's install block in a systemd container is skipped: ${why}`);
}

/** The README's install block, as its numbered steps. */
function readmeSteps(): Map<number, string> {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const block = /## Installing as a service[\s\S]*?```sh\n([\s\S]*?)```/.exec(readme)?.[1];
  if (block === undefined) throw new Error('README: no install block');
  const steps = new Map<number, string>();
  for (const step of block.split(/\n\n(?=# \d\. )/)) {
    const n = /^# (\d)\. /.exec(step)?.[1];
    if (n === undefined) throw new Error(`README: an install step without its number:\n${step}`);
    steps.set(Number(n), step.trimEnd());
  }
  return steps;
}

describe.runIf(why === null)(
  "the README's install block, in a systemd booted in a container",
  () => {
    let plant: Plant;
    let dir: string;
    let cleanup: () => void;
    let root: string;
    let checkout: string;
    let container: Container | null = null;

    /** A script run by bash inside the container (all of its namespaces), as root there. */
    const inside = (script: string, options: { check?: boolean } = {}): Promise<InContainer> =>
      container!.run(script, options);

    beforeAll(async () => {
      ({ dir, cleanup } = tempDir('sluice-install-readme-'));
      plant = await startPlant(
        {
          control: { host: '127.0.0.1', port: 0 },
          plcs: {
            'line2-plc': {
              protocol: 'modbus',
              host: '127.0.0.1',
              port: 0,
              devices: {
                'inlet-valve': { profile: 'valve', base: 0, travelMs: 300 },
                'drain-valve': { profile: 'valve', base: 100, travelMs: 300 },
              },
            },
          },
        },
        { ephemeralPorts: true, control: false },
      );

      // The reader's checkout, built, with the certificate and key the README installs, at
      // /srv/sluice-checkout in the container (its /tmp is a tmpfs of its own). Its node_modules
      // is this tree's, bound read-only: step 1's cp -a copies it to /opt/sluice as printed, and
      // a first copy into the checkout took 3-5 s.
      checkout = '/srv/sluice-checkout';
      container = await bootContainer(
        dir,
        'sluice-readme',
        async (into) => {
          const here = join(into, checkout);
          mkdirSync(join(here, 'node_modules'), { recursive: true });
          await buildInto(join(here, 'dist'));
          const cp = spawnSync('cp', [
            '-a',
            ...['package.json', 'devices', 'docs', 'README.md', 'systemd'].map((f) =>
              join(ROOT, f),
            ),
            here,
          ]);
          expect(cp.status, String(cp.stderr)).toBe(0);
          await loopbackCertificate(here);
        },
        { [`${checkout}/node_modules`]: join(ROOT, 'node_modules') },
      );
      root = container.root;
    }, 240_000);

    afterAll(async () => {
      await container?.stop();
      await plant.stop();
      cleanup();
      // A container's poweroff beside other work on two cores has taken over a minute.
    }, 120_000);

    it('runs as printed: the service up on READY, its status, log, readiness and health; a command moves the valve once', async () => {
      const steps = readmeSteps();
      expect([...steps.keys()]).toEqual([1, 2, 3, 4, 5]);
      const inCheckout = (step: string): string => `set -e\ncd '${checkout}'\n${step}`;

      // 1. The copy to /opt/sluice (the build line aside: see above).
      const build = 'npm ci && npm run build && npm prune --omit=dev';
      expect(steps.get(1)!.split('\n')).toContain(build);
      await inside(inCheckout(steps.get(1)!.replace(`${build}\n`, '')));
      expect((await inside('ls /opt/sluice')).stdout.split('\n').sort()).toEqual(
        ['', 'README.md', 'devices', 'dist', 'docs', 'node_modules', 'package.json'].sort(),
      );

      // 2. The user, the folders, the unit.
      await inside(inCheckout(steps.get(2)!));
      expect((await inside('id -u sluice')).stdout.trim()).toMatch(/^\d+$/);
      expect((await inside('stat -c "%U %a" /usr/local/bin/sluicectl')).stdout).toBe('root 755\n');

      // 3. The site file and the secrets, each with the owner and mode the README promises.
      await inside(inCheckout(steps.get(3)!));
      expect(
        (
          await inside(
            'stat -c "%n %U %G %a" /etc/sluice /etc/sluice/sluice.yaml /etc/sluice/sluiced.env /etc/sluice/tls /etc/sluice/credentials /etc/sluice/credentials/*',
          )
        ).stdout,
      ).toBe(
        [
          '/etc/sluice root sluice 750',
          '/etc/sluice/sluice.yaml root sluice 640',
          '/etc/sluice/sluiced.env root sluice 640',
          '/etc/sluice/tls root sluice 750',
          '/etc/sluice/credentials root root 700',
          '/etc/sluice/credentials/https.key root root 600',
          '/etc/sluice/credentials/mqtt.password root root 600',
          '/etc/sluice/credentials/scada.token root root 600',
          '',
        ].join('\n'),
      );
      const token = readFileSync(join(root, 'etc/sluice/credentials/scada.token'), 'utf8').trim();
      expect(token).toMatch(/^[0-9a-f]{64}$/);
      // "then edit it": this test's PLC and port, no broker (its owner and mode stay). The port
      // is the unit's environment file's (SLUICE_HTTPS_PORT), over another in the site file: the
      // check of step 4 must check the configuration the service runs, that file's included.
      // The state folder and the admin socket by the unit's variables, as configuration.md
      // allows: the check of step 4 and sluicectl of step 5, run from root's shell, which has
      // neither, must find the folders the unit gives the daemon.
      const port = await freePort();
      const sitePath = join(root, 'etc/sluice/sluice.yaml');
      const site = parse(readFileSync(sitePath, 'utf8')) as Record<string, unknown>;
      site.stateDir = '${STATE_DIRECTORY}';
      site.admin = { socket: '${RUNTIME_DIRECTORY}/admin.sock' };
      site.https = {
        ...(site.https as Record<string, unknown>),
        host: '127.0.0.1',
        port: port === 8444 ? 8445 : 8444,
      };
      appendFileSync(join(root, 'etc/sluice/sluiced.env'), `SLUICE_HTTPS_PORT=${port}\n`);
      delete site.mqtt;
      const inventory = inventoryFor(plant);
      site.plcs = inventory.plcs;
      site.devices = inventory.devices;
      writeFileSync(sitePath, stringify(site));

      // 4. The check as the service runs it, then enable and start: back once READY came.
      const started = await inside(inCheckout(steps.get(4)!));
      expect(started.stdout).toContain(
        'sluiced: /etc/sluice/sluice.yaml: configuration is valid (nothing was created)',
      );
      expect(started.stdout).toMatch(new RegExp(`^ {2}HTTPS {5}127\\.0\\.0\\.1:${port}(,|$)`, 'm'));
      expect(started.stdout).toMatch(
        /^ {2}state {5}\/var\/lib\/sluice \(journal \/var\/lib\/sluice\/journal\.db\)/m,
      );
      expect(
        (await inside('systemctl show sluiced -p ActiveState -p SubState -p User')).stdout
          .trim()
          .split('\n')
          .sort(),
      ).toEqual(['ActiveState=active', 'SubState=running', 'User=sluice']);

      // 5. Each line of the status step, as printed.
      const lines = steps
        .get(5)!
        .split('\n')
        .filter((l) => !l.startsWith('#'));
      const line = (start: string): string => {
        const found = lines.find((l) => l.startsWith(start));
        expect(found, start).toBeDefined();
        return found!;
      };
      const status = await inside(line('systemctl status sluiced'));
      expect(status.stdout).toMatch(/^\s*Active: active \(running\)/m);
      expect(status.stdout).toMatch(
        new RegExp(
          `^\\s*Status: "(ready|not ready \\([^"]*\\)): HTTPS on 127\\.0\\.0\\.1:${port}; 0 recovered command\\(s\\) settled"$`,
          'm',
        ),
      );
      // `-f` follows until Ctrl-C: what it shows in its first seconds, the start's JSON lines.
      const follow = await inside(`timeout -s INT 3 ${line('journalctl -u sluiced -f -o cat')}`, {
        check: false,
      });
      const logged = follow.stdout
        .split('\n')
        .filter((l) => l.startsWith('{'))
        .map((l) => JSON.parse(l) as { msg?: string });
      expect(logged.length, follow.stdout + follow.stderr).toBeGreaterThan(0);
      expect(logged.every((l) => typeof l.msg === 'string')).toBe(true);
      // Ready once the monitor has read every valve (every second).
      const readyz = line('curl --cacert /etc/sluice/tls/cert.pem https://127.0.0.1:8443/readyz');
      const ready = await until(
        async () => {
          const r = await inside(readyz.replace('127.0.0.1:8443', `127.0.0.1:${port}`), {
            check: false,
          });
          return r.status === 0 && r.stdout.startsWith('{"status":"ready"') ? r : undefined;
        },
        15_000,
        'the README readiness curl: ready',
      );
      // (Its stderr has curl's progress meter, shown when stdout is not a terminal.)
      expect(JSON.parse(ready.stdout)).toMatchObject({ status: 'ready' });
      // sluicectl from step 2, on root's PATH, with the site file it reads by default.
      const health = await inside(line('sluicectl health'), { check: false });
      expect(health.stderr).toBe('');
      expect(health.status).toBe(0);
      expect(health.stdout).toMatch(/^journal\s+ok\s/m);

      // The token step 3 made opens a valve, once.
      const valve = plant.device('inlet-valve');
      const answer = await httpsRequest(
        { port, ca: readFileSync(join(root, checkout, 'cert.pem'), 'utf8'), token },
        'POST',
        '/v1/commands',
        { 'idempotency-key': 'readme-install-1' },
        { device: 'inlet-valve', action: 'open' },
      );
      expect(answer.status, answer.body).toBe(200);
      expect(answer.json()).toMatchObject({ state: 'confirmed', code: 'OK' });
      expect(valve.counters.writesReceived).toBe(1);
      expect(valve.writesWithSeq(Number(answer.json().seq))).toBe(1);

      await inside('systemctl stop sluiced');
    }, 240_000);
  },
);
