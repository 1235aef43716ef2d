import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { stringify } from 'yaml';
import { afterEach, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.js';
import { tempDir } from '../helpers/fixtures.js';

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
  expect(message).toContain(
    '"${CREDENTIALS_DIRECTORY}/sluice_https.key": CREDENTIALS_DIRECTORY is not set',
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
