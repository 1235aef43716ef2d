import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/config.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';

/** The `ui` section of the configuration: defaults, roles, and the mistakes it names. */

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-ui-config-'));
});
afterEach(() => {
  cleanup();
});

const BASE = `
gatewayId: g1
stateDir: state
https: { certFile: cert.pem, keyFile: key.pem }
mqtt: { url: mqtt://127.0.0.1:1883, identity: plant }
identities:
  plant: { devices: ['*'] }
  ops: { tokenSha256: ${'a'.repeat(64)}, devices: ['*'] }
plcs:
  p1: { protocol: modbus, host: 127.0.0.1, port: 502 }
devices:
  v1: { plc: p1, profile: valve, base: 0 }
`;

function load(extra: string): ReturnType<typeof loadConfig> {
  const path = join(dir, 'sluice.yaml');
  writeFileSync(path, `${BASE}${extra}`);
  return loadConfig(path, { env: {} });
}

function errorsOf(extra: string): string[] {
  try {
    load(extra);
  } catch (error) {
    if (error instanceof ConfigError) return [...error.errors];
    throw error;
  }
  throw new Error('expected a ConfigError');
}

describe('the ui section', () => {
  it('defaults: served, nobody may log in, 30 min idle, 12 h at most', () => {
    expect(load('').ui).toEqual({
      enabled: true,
      roles: {},
      sessionIdleMinutes: 30,
      sessionMaxHours: 12,
    });
  });

  it('takes roles for identities with a token', () => {
    const ui = load('ui: { roles: { ops: operator }, sessionIdleMinutes: 5 }\n').ui;
    expect(ui.roles).toEqual({ ops: 'operator' });
    expect(ui.sessionIdleMinutes).toBe(5);
  });

  it('names every mistake with its path', () => {
    const errors = errorsOf(
      'ui: { roles: { ghost: viewer, plant: operator, ops: admin }, sessionMaxHours: 0 }\n',
    );
    expect(errors).toEqual(
      expect.arrayContaining([
        expect.stringMatching(/^ui\.roles\.ops: /),
        expect.stringMatching(/^ui\.sessionMaxHours: /),
      ]),
    );
    const cross = errorsOf('ui: { roles: { ghost: viewer, plant: operator } }\n');
    expect(cross).toEqual([
      'ui.roles.ghost: no identity named "ghost"',
      'ui.roles.plant: identity "plant" has no token or certificate CN to log in with',
    ]);
  });

  it('refuses roles where no page is served: no https section', () => {
    // Taken before: the roles were kept, no page was ever served, and --check called it valid.
    const path = join(dir, 'sluice.yaml');
    const withoutHttps = BASE.replace(/^https: .*\n/m, '');
    writeFileSync(path, `${withoutHttps}ui: { roles: { ops: operator } }\n`);
    expect(() => loadConfig(path, { env: {} })).toThrow(
      'ui.roles: given, but there is no https section: the status page is served on the HTTPS listener, so nobody could log in; configure https, or remove ui.roles',
    );
    // Without roles, or with the page turned off, the same file loads.
    for (const ui of ['', 'ui: { enabled: false, roles: { ops: operator } }\n']) {
      writeFileSync(path, `${withoutHttps}${ui}`);
      expect(() => loadConfig(path, { env: {} })).not.toThrow();
    }
  });

  it('the demo site lets the demo token in as an operator', () => {
    const c = loadConfig(join(ROOT, 'devices', 'site.example.yaml'), { env: {} });
    expect(c.ui.roles).toEqual({ demo: 'operator' });
  });
});
