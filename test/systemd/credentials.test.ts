import { spawnSync } from 'node:child_process';
import { readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterEach, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.js';
import { tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { SLUICED, cleanEnv } from '../config/sluiced.js';

/**
 * Under systemd/sluiced.service the secrets come through LoadCredential=: the site file names
 * them under ${CREDENTIALS_DIRECTORY}, which systemd sets for the unit's processes.
 */

const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});

function site(): string {
  const { dir, cleanup } = tempDir('sluice-credentials-');
  cleanups.push(cleanup);
  const path = join(dir, 'sluice.yaml');
  writeFileSync(
    path,
    stringify({
      gatewayId: 'line2',
      stateDir: '${STATE_DIRECTORY}',
      https: {
        certFile: 'tls/cert.pem',
        keyFile: '${CREDENTIALS_DIRECTORY}/sluice_https.key',
      },
      mqtt: {
        url: 'mqtt://127.0.0.1:1883',
        identity: 'scada',
        username: 'line2',
        passwordFile: '${CREDENTIALS_DIRECTORY}/sluice_mqtt.password',
      },
      admin: { socket: '${RUNTIME_DIRECTORY}/admin.sock' },
      identities: {
        scada: { tokenFile: '${CREDENTIALS_DIRECTORY}/sluice_scada.token', devices: ['*'] },
      },
      plcs: { mb: { protocol: 'modbus', host: '127.0.0.1', port: 502 } },
      devices: { 'inlet-valve': { plc: 'mb', profile: 'valve', base: 0 } },
    }),
  );
  return path;
}

it('reads secrets from $CREDENTIALS_DIRECTORY and state from $STATE_DIRECTORY', () => {
  const path = site();
  const config = loadConfig(path, {
    env: {
      CREDENTIALS_DIRECTORY: '/run/credentials/sluiced.service',
      STATE_DIRECTORY: '/var/lib/sluice',
      RUNTIME_DIRECTORY: '/run/sluice',
    },
  });
  expect(config.https?.keyFile).toBe('/run/credentials/sluiced.service/sluice_https.key');
  expect(config.https?.certFile).toBe(join(path, '..', 'tls/cert.pem'));
  expect(config.mqtt?.passwordFile).toBe('/run/credentials/sluiced.service/sluice_mqtt.password');
  expect(config.identities.scada?.tokenFile).toBe(
    '/run/credentials/sluiced.service/sluice_scada.token',
  );
  expect(config.stateDir).toBe('/var/lib/sluice');
  expect(config.journal.path).toBe('/var/lib/sluice/journal.db');
  expect(config.admin.socket).toBe('/run/sluice/admin.sock');
});

it('names every path whose systemd folder is not set', () => {
  const path = site();
  let error: unknown;
  try {
    loadConfig(path, { env: { STATE_DIRECTORY: '/var/lib/sluice' } });
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(ConfigError);
  const message = (error as Error).message;
  // Each names the field that holds the path.
  expect(message).toContain(
    'https.keyFile: "${CREDENTIALS_DIRECTORY}/sluice_https.key": CREDENTIALS_DIRECTORY is not set',
  );
  expect(message).toContain('"${CREDENTIALS_DIRECTORY}/sluice_mqtt.password"');
  expect(message).toContain('"${RUNTIME_DIRECTORY}/admin.sock": RUNTIME_DIRECTORY is not set');
});

it('lets sluicectl, which reads no secret, load the same file outside the unit', () => {
  const path = site();
  const config = loadConfig(path, {
    env: { STATE_DIRECTORY: '/var/lib/sluice', RUNTIME_DIRECTORY: '/run/sluice' },
    unitDirectories: 'optional',
  });
  expect(config.journal.path).toBe('/var/lib/sluice/journal.db');
  expect(config.https?.keyFile).toBe('${CREDENTIALS_DIRECTORY}/sluice_https.key');
});

/** The refusal of a path that names a variable other than systemd's unit folders. */
const unsupported = (field: string, path: string): string =>
  `${field}: "${path}": only \${CREDENTIALS_DIRECTORY}, \${STATE_DIRECTORY}, \${RUNTIME_DIRECTORY} and \${CONFIGURATION_DIRECTORY} are expanded, and only at the start of a path; no other variable is: write the folder out`;

it('refuses a path with any other variable, naming the field, rather than taking it for a folder of that name', () => {
  const { dir, cleanup } = tempDir('sluice-variables-');
  cleanups.push(cleanup);
  const path = join(dir, 'sluice.yaml');
  writeFileSync(
    path,
    stringify({
      gatewayId: 'line2',
      stateDir: '${HOME}/sluice',
      mqtt: { url: 'mqtt://127.0.0.1:1883', identity: 'scada', passwordFile: '$HOME/mqtt.pw' },
      identities: {
        scada: { tokenFile: '${CREDENTIALS_DIRECTORY}/${TOKEN}', devices: ['*'] },
      },
      plcs: { mb: { protocol: 'modbus', host: '127.0.0.1', port: 502 } },
      devices: { 'inlet-valve': { plc: 'mb', profile: 'valve', base: 0 } },
    }),
  );
  let error: unknown;
  try {
    loadConfig(path, { env: { HOME: '/root', CREDENTIALS_DIRECTORY: '/run/credentials/x' } });
  } catch (e) {
    error = e;
  }
  expect(error).toBeInstanceOf(ConfigError);
  expect((error as ConfigError).errors).toEqual([
    unsupported('stateDir', '${HOME}/sluice'),
    unsupported('mqtt.passwordFile', '$HOME/mqtt.pw'),
    unsupported('identities.scada.tokenFile', '${CREDENTIALS_DIRECTORY}/${TOKEN}'),
  ]);
  // sluicectl, which tolerates an unset unit folder, is refused the same: it would look for
  // the journal in a folder named "${HOME}".
  expect(() => loadConfig(path, { env: { HOME: '/root' }, unitDirectories: 'optional' })).toThrow(
    unsupported('stateDir', '${HOME}/sluice'),
  );
});

it('sluiced refuses it at start and under --check, and creates no folder named after the variable', async () => {
  const { dir, cleanup } = tempDir('sluice-variables-');
  cleanups.push(cleanup);
  await loopbackCertificate(dir);
  writeFileSync(join(dir, 'token'), 'plant-token\n');
  const path = join(dir, 'sluice.yaml');
  writeFileSync(
    path,
    stringify({
      gatewayId: 'line2',
      stateDir: '${HOME}/sluice',
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      identities: { scada: { tokenFile: 'token', devices: ['*'] } },
      plcs: { mb: { protocol: 'modbus', host: '127.0.0.1', port: 1 } },
      devices: { 'inlet-valve': { plc: 'mb', profile: 'valve', base: 0 } },
    }),
  );
  const before = readdirSync(dir).sort();
  for (const args of [['--check'], []]) {
    // Run from the site's folder: the daemon had created ./${HOME}/sluice in its working
    // directory, and --check had printed that as the journal's folder.
    const r = spawnSync(process.execPath, [...SLUICED, '--config', path, ...args], {
      cwd: dir,
      encoding: 'utf8',
      env: cleanEnv(),
      timeout: 30_000,
    });
    expect({ args, status: r.status, stdout: r.stdout }).toEqual({ args, status: 2, stdout: '' });
    expect(r.stderr).toBe(
      `sluiced: ${path}: invalid configuration:\n  ${unsupported('stateDir', '${HOME}/sluice')}\n`,
    );
    expect(readdirSync(dir).sort()).toEqual(before);
  }
}, 60_000);

it("expands and resolves clock.ptp's socket paths like every other path", () => {
  // They were passed on as written: `clientSocketDir: ${RUNTIME_DIRECTORY}` made pmc bind its
  // reply socket in a folder literally named so, and the gateway clock stayed UNKNOWN.
  const { dir, cleanup } = tempDir('sluice-ptp-paths-');
  cleanups.push(cleanup);
  const path = join(dir, 'sluice.yaml');
  writeFileSync(
    path,
    stringify({
      gatewayId: 'line2',
      stateDir: '/var/lib/sluice',
      clock: { source: 'ptp', ptp: { udsPath: 'ptp4l', clientSocketDir: '${RUNTIME_DIRECTORY}' } },
      mqtt: { url: 'mqtt://127.0.0.1:1883', identity: 'scada' },
      identities: { scada: { devices: ['*'] } },
      plcs: { mb: { protocol: 'modbus', host: '127.0.0.1', port: 502 } },
      devices: { 'inlet-valve': { plc: 'mb', profile: 'valve', base: 0 } },
    }),
  );
  const config = loadConfig(path, { env: { RUNTIME_DIRECTORY: '/run/sluice' } });
  expect(config.clock.ptp).toMatchObject({
    udsPath: join(dir, 'ptp4l'),
    clientSocketDir: '/run/sluice',
    pmc: '/usr/sbin/pmc',
  });
  expect(config.clock.chrony.chronyc).toBe('chronyc');
  expect(() => loadConfig(path, { env: {} })).toThrow(
    'clock.ptp.clientSocketDir: "${RUNTIME_DIRECTORY}": RUNTIME_DIRECTORY is not set',
  );
});
