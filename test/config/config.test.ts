import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import { runSluiced } from './sluiced.js';

const SITE = join(ROOT, 'devices', 'site.example.yaml');
let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-config-'));
});
afterEach(() => {
  cleanup();
});

function write(text: string): string {
  const path = join(dir, 'sluice.yaml');
  writeFileSync(path, text);
  return path;
}

function errorsOf(fn: () => unknown): string[] {
  try {
    fn();
  } catch (error) {
    if (error instanceof ConfigError) return [...error.errors];
    throw error;
  }
  throw new Error('expected a ConfigError');
}

const MINIMAL = `
gatewayId: g1
stateDir: state
mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }
identities:
  plant: { devices: ['*'] }
plcs:
  p1: { protocol: modbus, host: 127.0.0.1, port: 502 }
devices:
  v1: { plc: p1, profile: valve, base: 0 }
`;

describe('loadConfig', () => {
  it('loads the demo site with defaults and paths resolved against the file', () => {
    const c = loadConfig(SITE, { env: {} });
    expect(c.gatewayId).toBe('demo');
    expect(c.stateDir).toBe(join(ROOT, '.state', 'demo'));
    expect(c.journal.path).toBe(join(ROOT, '.state', 'demo', 'journal.db'));
    expect(c.journal.retentionHours).toBe(48);
    expect(c.https).toMatchObject({ port: 8443, certFile: join(ROOT, '.state/demo/tls/cert.pem') });
    expect(c.mqtt).toMatchObject({ protocolVersion: 'auto', identity: 'demo' });
    expect(Object.keys(c.devices)).toEqual([
      'inlet-valve',
      'drain-valve',
      'outlet-valve',
      'dosing-actuator',
    ]);
  });

  it('takes environment overrides over the file, and flags over both', () => {
    const c = loadConfig(SITE, {
      env: { SLUICE_MQTT_URL: 'mqtts://broker.plant:8883', SLUICE_LOG_LEVEL: 'debug' },
      overrides: { log: { level: 'warn' } },
    });
    expect(c.mqtt?.url).toBe('mqtts://broker.plant:8883');
    expect(c.log.level).toBe('warn');
  });

  it('reports every error at once, each with its path', () => {
    const path = write(`
gatewayId: "bad id"
stateDir: state
surprise: true
https: { port: 99999, certFile: c.pem }
identities:
  plant: { devices: [] , tokenSha256: nothex }
plcs:
  p1: { protocol: profibus }
devices:
  v1: { plc: p1, profile: valve }
`);
    const errors = errorsOf(() => loadConfig(path, { env: {} }));
    const joined = errors.join('\n');
    for (const p of [
      'gatewayId:',
      'https.port:',
      'https.keyFile:',
      'identities.plant.devices:',
      'identities.plant.tokenSha256:',
      'plcs.p1.protocol:',
    ]) {
      expect(joined).toContain(p);
    }
    expect(joined).toMatch(/surprise/);
  });

  it('takes https.trustedProxies as addresses and ranges, none by default; refuses a name or a bad prefix', () => {
    const https = (extra: string): string =>
      write(`${MINIMAL}https: { certFile: c.pem, keyFile: k.pem${extra} }\n`);
    expect(loadConfig(https(''), { env: {} }).https?.trustedProxies).toEqual([]);
    expect(
      loadConfig(https(", trustedProxies: [10.0.4.2, '10.0.5.0/24', 'fd00::/64', '::1']"), {
        env: {},
      }).https?.trustedProxies,
    ).toEqual(['10.0.4.2', '10.0.5.0/24', 'fd00::/64', '::1']);
    const errors = errorsOf(() =>
      loadConfig(https(", trustedProxies: [proxy.plant, '10.0.5.0/33', '10.0.5.0/24/1', '::/0']"), {
        env: {},
      }),
    );
    expect(errors).toEqual([
      'https.trustedProxies.0: "proxy.plant" is not an IP address or a range (address/prefix length)',
      'https.trustedProxies.1: "10.0.5.0/33": the prefix length must be 1–32 (0 would believe any client\'s X-Forwarded-For)',
      'https.trustedProxies.2: "10.0.5.0/24/1" is not an IP address or a range (address/prefix length)',
      'https.trustedProxies.3: "::/0": the prefix length must be 1–128 (0 would believe any client\'s X-Forwarded-For)',
    ]);
  });

  it('cross-checks names: identities, devices, PLCs', () => {
    const path = write(
      MINIMAL.replace(
        'mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }',
        'mqtt: { url: mqtt://127.0.0.1:1883, identity: nobody }',
      )
        .replace("plant: { devices: ['*'] }", 'plant: { devices: [v9] }')
        .replace('v1: { plc: p1,', 'v1: { plc: p9,'),
    );
    const errors = errorsOf(() => loadConfig(path, { env: {} }));
    expect(errors).toContain('mqtt.identity: no identity named "nobody"');
    expect(errors).toContain('identities.plant.devices.0: no device named "v9"');
    expect(errors).toContain('devices.v1.plc: no PLC named "p9"');
    expect(errors.some((e) => e.startsWith('identities.plant: needs tokenSha256'))).toBe(true);
  });

  it('cross-checks names that are also built-in object properties (toString, constructor) like any other', () => {
    // A name is looked up in the file's own sections, never in what every object inherits: a
    // PLC, device, identity or role named like one of Object.prototype's members exists only
    // when the file says so.
    const path = write(
      MINIMAL.replace(
        'mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }',
        'mqtt: { url: mqtt://127.0.0.1:1883, identity: constructor }',
      )
        .replace("plant: { devices: ['*'] }", 'plant: { devices: [toString] }')
        .replace('v1: { plc: p1,', 'v1: { plc: valueOf,'),
    );
    const errors = errorsOf(() => loadConfig(path, { env: {} }));
    expect(errors).toContain('mqtt.identity: no identity named "constructor"');
    expect(errors).toContain('identities.plant.devices.0: no device named "toString"');
    expect(errors).toContain('devices.v1.plc: no PLC named "valueOf"');
  });

  it('names the environment variable behind an invalid value, and refuses one for a section the file lacks', () => {
    expect(
      errorsOf(() => loadConfig(write(MINIMAL), { env: { SLUICE_HTTPS_PORT: '8443' } })),
    ).toEqual([
      'SLUICE_HTTPS_PORT: overrides https.port, but the configuration has no https section: configure https in the file, or unset SLUICE_HTTPS_PORT',
    ]);
    expect(
      errorsOf(() =>
        loadConfig(write(MINIMAL), {
          env: { SLUICE_LOG_LEVEL: 'verbose', SLUICE_GATEWAY_ID: 'a b' },
        }),
      ),
    ).toEqual([
      'gatewayId: letters, digits, ".", "_", "-" (set by the environment: SLUICE_GATEWAY_ID="a b")',
      expect.stringMatching(
        /^log\.level: Invalid option: .* \(set by the environment: SLUICE_LOG_LEVEL="verbose"\)$/,
      ),
    ]);
    // A flag wins over the variable: its value is not the environment's.
    expect(
      errorsOf(() =>
        loadConfig(write(MINIMAL.replace('gatewayId: g1', 'gatewayId: "a b"')), {
          env: { SLUICE_LOG_LEVEL: 'debug' },
          overrides: { log: { level: 'loud' } },
        }),
      ),
    ).toEqual([
      'gatewayId: letters, digits, ".", "_", "-"',
      expect.not.stringContaining('environment'),
    ]);
    // Empty is unset, for every variable.
    const c = loadConfig(write(MINIMAL), {
      env: { SLUICE_HTTPS_PORT: '', SLUICE_STATE_DIR: '', SLUICE_GATEWAY_ID: '' },
    });
    expect(c.https).toBeUndefined();
    expect(c.gatewayId).toBe('g1');
  });

  it('refuses a password in mqtt.url, and never prints it, from the file or the environment', () => {
    // MQTT.js takes a password from the URL; the URL is logged at every start and connection
    // error and printed by --check. It was taken, and printed there.
    const refusal = (shown: string): string =>
      `mqtt.url: carries a password (user:…@ in ${shown}), which would be printed wherever the URL is shown (the log at every start and connection error, sluiced --check): give the user as mqtt.username and the password in the file mqtt.passwordFile (under systemd, \${CREDENTIALS_DIRECTORY}/…), and the URL without them`;
    const inFile = MINIMAL.replace('mqtt://127.0.0.1:1883', 'mqtts://line2:s3cret@broker:8883');
    expect(errorsOf(() => loadConfig(write(inFile), { env: {} }))).toEqual([
      refusal('mqtts://line2:***@broker:8883'),
    ]);
    expect(
      errorsOf(() =>
        loadConfig(write(MINIMAL), { env: { SLUICE_MQTT_URL: 'ws://line2:s3cret@broker/mqtt' } }),
      ),
    ).toEqual([
      `${refusal('ws://line2:***@broker/mqtt')} (set by the environment: SLUICE_MQTT_URL="ws://line2:***@broker/mqtt")`,
    ]);
    // A value refused for its form is echoed without its password too.
    const misspelt = errorsOf(() =>
      loadConfig(write(MINIMAL), { env: { SLUICE_MQTT_URL: 'mqtt//line2:s3cret@broker' } }),
    );
    expect(misspelt).toEqual([
      'mqtt.url: an mqtt://, mqtts://, ws:// or wss:// URL (set by the environment: SLUICE_MQTT_URL="mqtt//line2:***@broker")',
      `${refusal('mqtt//line2:***@broker')} (set by the environment: SLUICE_MQTT_URL="mqtt//line2:***@broker")`,
    ]);
    expect(misspelt.join('\n')).not.toContain('s3cret');
    // The user info runs to the last `@` (MQTT.js takes `op@line2` as the user, `s3cret` as the
    // password): read to the first, a user with an `@` hid the password, which was taken and
    // shown, and a password with an `@` was shown from it on.
    for (const [url, shown] of [
      ['mqtt://op@line2:s3cret@broker:1883', 'mqtt://op@line2:***@broker:1883'],
      ['ws://line2:s3c@ret@broker/mqtt', 'ws://line2:***@broker/mqtt'],
    ] as const) {
      const errors = errorsOf(() => loadConfig(write(MINIMAL), { env: { SLUICE_MQTT_URL: url } }));
      expect(errors).toEqual([
        `${refusal(shown)} (set by the environment: SLUICE_MQTT_URL="${shown}")`,
      ]);
      expect(errors.join('\n')).not.toMatch(/s3c|ret@/);
    }
    // A user alone is no secret.
    expect(
      loadConfig(write(MINIMAL.replace('mqtt://127.0.0.1', 'mqtt://line2@127.0.0.1')), { env: {} })
        .mqtt?.url,
    ).toBe('mqtt://line2@127.0.0.1:1883');
  });

  it('refuses a clientId in the query of mqtt.url, which MQTT.js would connect with', () => {
    const refusal =
      "mqtt.url: carries a clientId in its query, which MQTT.js would connect with over the gateway's own (mqtt.clientId, or the one made from gatewayId): give it as mqtt.clientId, and the URL without it";
    for (const url of [
      'mqtt://127.0.0.1:1883?clientId=other-gw',
      'wss://broker/mqtt?x=1&clientId=a',
    ]) {
      expect(errorsOf(() => loadConfig(write(MINIMAL), { env: { SLUICE_MQTT_URL: url } }))).toEqual(
        [`${refusal} (set by the environment: SLUICE_MQTT_URL="${url}")`],
      );
    }
    // Another query (a WebSocket broker's, say) is the broker's business.
    expect(
      loadConfig(write(MINIMAL), { env: { SLUICE_MQTT_URL: 'wss://broker/mqtt?token=1' } }).mqtt
        ?.url,
    ).toBe('wss://broker/mqtt?token=1');
  });

  it('reports YAML syntax errors with their line', () => {
    const path = write('gatewayId: g1\nstateDir: [unclosed\n');
    expect(errorsOf(() => loadConfig(path, { env: {} }))[0]).toMatch(/^\(yaml\) line \d+/);
  });

  it('reports a missing file', () => {
    expect(errorsOf(() => loadConfig(join(dir, 'nope.yaml'), { env: {} }))[0]).toMatch(/ENOENT/);
  });
});

describe('sluiced --config', () => {
  it('exits 2 on an invalid configuration, lists the errors with paths, and touches nothing', () => {
    const path = write(
      MINIMAL.replace('port: 502', 'port: -1').replace('stateDir: state', 'stateDir: never-made'),
    );
    const r = runSluiced(['--config', path]);
    expect(r.status).toBe(2);
    expect(r.stderr).toContain('plcs.p1.port:');
    expect(existsSync(join(dir, 'never-made'))).toBe(false);
  }, 30_000);

  it('exits 2 on a --shutdown-bound that is not whole milliseconds, before it creates anything', () => {
    // Taken as NaN, `10s` made the stop's force timer fire at once: every SIGTERM ended the
    // daemon with exit 1 before an in-flight command could settle. Refused at once instead.
    const path = write(MINIMAL.replace('stateDir: state', 'stateDir: never-made'));
    for (const bound of ['10s', 'abc', '-1', '1e4', '99999999999']) {
      const r = runSluiced(['--config', path, '--shutdown-bound', bound], 15_000);
      expect(r.status, `--shutdown-bound ${bound}: ${r.stderr}`).toBe(2);
      expect(r.stderr).toContain(
        `sluiced: --shutdown-bound "${bound}": expected whole milliseconds`,
      );
      expect(existsSync(join(dir, 'never-made'))).toBe(false);
    }
    const good = runSluiced(['--config', path, '--shutdown-bound', '2500', '--check']);
    expect(good.status).toBe(0);
  }, 120_000);

  it('--check refuses a password in mqtt.url without printing it', () => {
    const path = write(MINIMAL.replace('mqtt://127.0.0.1:1883', 'mqtt://line2:s3cret@127.0.0.1:1'));
    const r = runSluiced(['--config', path, '--check']);
    expect(r.status).toBe(2);
    expect(r.stdout).toBe('');
    expect(r.stderr).toContain(
      'mqtt.url: carries a password (user:…@ in mqtt://line2:***@127.0.0.1:1)',
    );
    expect(r.stderr + r.stdout).not.toContain('s3cret');
  }, 30_000);

  it('--check validates a good configuration and exits 0', () => {
    const r = runSluiced(['--config', write(MINIMAL), '--check']);
    expect(r.stdout).toContain('configuration is valid');
    expect(r.status).toBe(0);
    expect(existsSync(join(dir, 'state'))).toBe(false);
  }, 30_000);
});
