import { execFileSync, spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { STOP_MARGIN_MS } from '../../src/daemon/prepare.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { hasCommand, isRoot, realComponent } from '../helpers/real.js';
import { buildInto } from './build.js';

/**
 * systemd/sluiced.service as systemd reads it: `systemd-analyze verify` clean, `systemd-analyze
 * security` at or under 1.5, the settings the daemon relies on (notify, watchdog, an
 * unprivileged user, its folders, credentials, a stop timeout that covers the drain), the
 * sysusers and tmpfiles files applied to a scratch root, and the README's layout: the
 * ExecStart path exists once the package is built into /opt/sluice, and that build checks the
 * shipped site file.
 */

const UNIT = join(ROOT, 'systemd', 'sluiced.service');
const MAX_EXPOSURE = 1.5;
const analyze = realComponent(
  'systemd-analyze',
  hasCommand('systemd-analyze'),
  'apt-get install systemd',
);
const unit = readFileSync(UNIT, 'utf8');

/** Every value of a setting in the unit, in order. */
function values(name: string): string[] {
  return [...unit.matchAll(new RegExp(`^${name}=(.*)$`, 'gm'))].map((m) => m[1] ?? '');
}

function seconds(value: string | undefined): number {
  const m = /^(\d+)(s|min)?$/.exec(value ?? '');
  if (m === null) throw new Error(`not a duration in seconds or minutes: ${value}`);
  return Number(m[1]) * (m[2] === 'min' ? 60 : 1);
}

describe.runIf(analyze)('systemd-analyze', () => {
  it(`scores the unit's exposure at ${MAX_EXPOSURE} or lower`, () => {
    const r = spawnSync('systemd-analyze', ['security', '--offline=true', UNIT], {
      encoding: 'utf8',
    });
    const match = /Overall exposure level for sluiced\.service: ([\d.]+)/.exec(r.stdout);
    expect(match, r.stdout + r.stderr).not.toBeNull();
    expect(Number(match![1]), r.stdout).toBeLessThanOrEqual(MAX_EXPOSURE);
  });

  it('verifies the unit without a word', () => {
    const r = spawnSync('systemd-analyze', ['verify', UNIT], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
    // Other units of the host may draw remarks; none may be about this one.
    const remarks = (r.stdout + r.stderr).split('\n').filter((l) => /sluiced/.test(l));
    expect(remarks).toEqual([]);
  });
});

describe('the unit', () => {
  it('runs the built daemon as the unprivileged user sluice, with sd_notify readiness and a watchdog', () => {
    expect(values('ExecStart')).toEqual([
      '/usr/bin/node /opt/sluice/dist/src/daemon/cli.js --config /etc/sluice/sluice.yaml',
    ]);
    expect(values('Type')).toEqual(['notify']);
    // READY and WATCHDOG come from the main PID (unix-dgram), so no other process may notify.
    expect(values('NotifyAccess')).toEqual(['main']);
    expect(seconds(values('WatchdogSec')[0])).toBeGreaterThanOrEqual(10);
    expect(values('Restart')).toEqual(['on-failure']);
    // 2: an invalid configuration; 3: a journal damaged, not a journal, or of a newer Sluice.
    expect(values('RestartPreventExitStatus')).toEqual(['2 3']);
    expect(values('User')).toEqual(['sluice']);
    expect(values('DynamicUser')).toEqual([]);
    // V8's JIT needs writable executable memory: this option kills Node.
    expect(values('MemoryDenyWriteExecute')).toEqual([]);
  });

  it('keeps the journal under StateDirectory, the admin socket under RuntimeDirectory, secrets as credentials', () => {
    expect(values('StateDirectory')).toEqual(['sluice']);
    expect(values('StateDirectoryMode')).toEqual(['0700']);
    expect(values('RuntimeDirectory')).toEqual(['sluice']);
    expect(values('LoadCredential')).toEqual(['sluice:/etc/sluice/credentials']);
    const site = readFileSync(join(ROOT, 'systemd', 'sluice.yaml'), 'utf8');
    expect(site).toMatch(/^stateDir: \/var\/lib\/sluice$/m);
    expect(site).toMatch(/^ {2}socket: \/run\/sluice\/admin\.sock$/m);
    expect(site).toMatch(/keyFile: \$\{CREDENTIALS_DIRECTORY\}\/sluice_https\.key/);
    expect(site).toMatch(/passwordFile: \$\{CREDENTIALS_DIRECTORY\}\/sluice_mqtt\.password/);
  });

  it('gives the graceful drain time to finish before systemd kills', () => {
    // The CLI's default --shutdown-bound (its command line is parsed in prepare.ts), and the
    // margin after it at which the process exits by itself.
    const cli = readFileSync(join(ROOT, 'src', 'daemon', 'prepare.ts'), 'utf8');
    const bound = /'--shutdown-bound <ms>'.*'(\d+)'\)/.exec(cli);
    expect(bound).not.toBeNull();
    const drainS = Number(bound![1]) / 1000;
    expect(seconds(values('TimeoutStopSec')[0])).toBeGreaterThan(drainS + STOP_MARGIN_MS / 1000);
    expect(values('KillSignal')).toEqual(['SIGTERM']);
    // A reload is SIGHUP (the TLS files read again, src/daemon/tls-reload.ts), never a restart.
    expect(values('ExecReload')).toEqual(['/bin/kill -HUP $MAINPID']);
    // READY waits at most 45 s for recovered commands (src/daemon/daemon.ts).
    expect(seconds(values('TimeoutStartSec')[0])).toBeGreaterThan(45);
  });
});

const sysusers =
  realComponent('root (to apply sysusers.d to a scratch root)', isRoot, 'run the tests as root') &&
  realComponent(
    'systemd-sysusers and systemd-tmpfiles',
    hasCommand('systemd-sysusers') && hasCommand('systemd-tmpfiles'),
    'apt-get install systemd',
  );

describe.runIf(sysusers)('sysusers.d and tmpfiles.d, applied to a scratch root', () => {
  const { dir, cleanup } = tempDir('sluice-sysroot-');
  afterAll(cleanup);

  it('creates the user sluice and /etc/sluice with root-only credentials', () => {
    mkdirSync(join(dir, 'etc'));
    // With --root, a relative file name is looked up inside the root: read from stdin.
    execFileSync('systemd-sysusers', [`--root=${dir}`, '-'], {
      input: readFileSync(join(ROOT, 'systemd/sysusers.d/sluice.conf')),
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    const passwd = readFileSync(join(dir, 'etc/passwd'), 'utf8');
    const user = /^sluice:x:(\d+):(\d+):[^:]*:\/var\/lib\/sluice:\/usr\/sbin\/nologin$/m.exec(
      passwd,
    );
    expect(user, passwd).not.toBeNull();
    expect(Number(user![1])).toBeGreaterThan(0);
    expect(Number(user![1])).toBeLessThan(1000);
    execFileSync('systemd-tmpfiles', ['--create', `--root=${dir}`, '-'], {
      input: readFileSync(join(ROOT, 'systemd/tmpfiles.d/sluice.conf')),
      stdio: ['pipe', 'ignore', 'pipe'],
    });
    const etc = statSync(join(dir, 'etc/sluice'));
    expect(etc.mode & 0o777).toBe(0o750);
    expect(etc.uid).toBe(0);
    expect(etc.gid).toBe(Number(user![2]));
    const credentials = statSync(join(dir, 'etc/sluice/credentials'));
    expect(credentials.mode & 0o777).toBe(0o700);
    expect(credentials.uid).toBe(0);
    expect(credentials.gid).toBe(0);
  });
});

describe('the README layout', () => {
  const { dir, cleanup } = tempDir('sluice-opt-');
  afterAll(cleanup);

  it('has the ExecStart path once built into /opt/sluice, and that build checks the shipped site file', async () => {
    // The layout README.md's install section makes: the package root as /opt/sluice, with
    // dist/ as `npm run build` makes it, node_modules/ and devices/.
    const opt = join(dir, 'opt', 'sluice');
    mkdirSync(opt, { recursive: true });
    await buildInto(join(opt, 'dist'));
    for (const shared of ['node_modules', 'devices', 'package.json']) {
      symlinkSync(join(ROOT, shared), join(opt, shared));
    }
    const [node, script, ...args] = values('ExecStart')[0]!.split(' ');
    expect(existsSync(node!)).toBe(true);
    const installed = script!.replace(/^\/opt\/sluice\//, `${opt}/`);
    expect(existsSync(installed), installed).toBe(true);

    // The shipped site file, with its /etc and /var paths moved into the scratch root and
    // the credentials systemd would hand over.
    const credentials = join(dir, 'credentials');
    mkdirSync(credentials);
    await loopbackCertificate(dir);
    renameSync(join(dir, 'key.pem'), join(credentials, 'sluice_https.key'));
    writeFileSync(join(credentials, 'sluice_mqtt.password'), 'broker-secret\n');
    writeFileSync(join(credentials, 'sluice_scada.token'), 'scada-token\n');
    const site = readFileSync(join(ROOT, 'systemd', 'sluice.yaml'), 'utf8')
      .replaceAll('/etc/sluice/tls/cert.pem', join(dir, 'cert.pem'))
      .replaceAll('/etc/sluice/tls/broker-ca.pem', join(dir, 'cert.pem'))
      .replaceAll('/var/lib/sluice', join(dir, 'var/lib/sluice'))
      .replaceAll('/run/sluice', join(dir, 'run/sluice'));
    const sitePath = join(dir, 'sluice.yaml');
    writeFileSync(sitePath, site);
    const check = spawnSync(
      process.execPath,
      [installed, ...args.slice(0, 1), sitePath, '--check'],
      {
        encoding: 'utf8',
        env: { PATH: process.env.PATH, CREDENTIALS_DIRECTORY: credentials },
      },
    );
    expect(check.status, check.stdout + check.stderr).toBe(0);
    expect(check.stdout).toMatch(/configuration is valid/);
    expect(check.stdout).toMatch(/gateway {3}line2/);
    // --check created nothing.
    expect(existsSync(join(dir, 'var'))).toBe(false);
  }, 120_000);
});
