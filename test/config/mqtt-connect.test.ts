import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { tempDir } from '../helpers/fixtures.js';
import { runSluiced } from './sluiced.js';

/**
 * What the MQTT intake sends in its CONNECT must be sendable: a client id or user name with a
 * character MQTT forbids or lets a broker refuse (Mosquitto drops such a CONNECT unanswered), a
 * string or password longer than MQTT carries (MQTT.js throws at every CONNECT), a topic root
 * too long for the Will's and results' topics. Each was taken, and the intake never connected
 * (test/intake/mqtt-connect-refused.test.ts: what the intake says when a broker refuses all
 * the same). Refused by `sluiced --check`, every one at once, with its field.
 */

let dir: string;
let cleanup: () => void;
beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-mqtt-connect-'));
});
afterEach(() => {
  cleanup();
});

function check(mqtt: string): ReturnType<typeof runSluiced> {
  const path = join(dir, 'sluice.yaml');
  writeFileSync(
    path,
    `
gatewayId: g1
stateDir: state
mqtt: { url: "mqtt://127.0.0.1:1883", identity: plant, ${mqtt} }
identities:
  plant: { devices: ['*'] }
plcs: {}
devices: {}
`,
  );
  return runSluiced(['--config', path, '--check']);
}

describe('the MQTT CONNECT in the configuration', () => {
  it('refuses control characters and lengths MQTT cannot carry, naming each field', () => {
    const r = check(
      [
        'clientId: "gw\\0a"',
        'username: "plant\\tgateway"',
        `topicRoot: "${'r'.repeat(65_400)}"`,
      ].join(', '),
    );
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toContain(
      'mqtt.clientId: cannot be sent to an MQTT broker: has a control character (U+0000 at 2)',
    );
    expect(r.stderr).toContain(
      'mqtt.username: cannot be sent to an MQTT broker: has a control character (U+0009 at 5)',
    );
    expect(r.stderr).toContain(
      'mqtt.topicRoot: cannot be sent to an MQTT broker: 65400 bytes of UTF-8, longer than MQTT allows (65334 bytes, leaving 201 for the rest of the longest topic)',
    );
    expect(existsSync(join(dir, 'state'))).toBe(false);
  });

  it('refuses a password file longer than an MQTT password', () => {
    const password = join(dir, 'password');
    writeFileSync(password, `${'p'.repeat(65_536)}\n`);
    const r = check(`username: plant, passwordFile: ${password}`);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toContain(
      `mqtt.passwordFile: ${password}: 65536 bytes, longer than an MQTT password may be (65535 bytes)`,
    );
  });

  it('takes a Unicode user name, the longest password and the longest topic root that fits', () => {
    writeFileSync(join(dir, 'password'), `${'p'.repeat(65_535)}\n`);
    const r = check(
      `username: "Wasserwerk-Süd ✓", clientId: "gw-1", topicRoot: "${'r'.repeat(65_334)}", passwordFile: ${join(dir, 'password')}`,
    );
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
  });

  it('refuses a non-character', () => {
    const r = check('username: "plant\\uFFFE"');
    expect(r.status).toBe(2);
    expect(r.stderr).toContain(
      'mqtt.username: cannot be sent to an MQTT broker: has a Unicode non-character (U+FFFE at 5)',
    );
  });

  it('refuses a client certificate on tcp://, which MQTT.js refuses at start', () => {
    const path = join(dir, 'sluice.yaml');
    writeFileSync(
      path,
      `
gatewayId: g1
stateDir: state
mqtt: { url: "tcp://127.0.0.1:8883", identity: plant, certFile: c.pem, keyFile: k.pem }
identities:
  plant: { devices: ['*'] }
plcs: {}
devices: {}
`,
    );
    const tcp = runSluiced(['--config', path, '--check']);
    expect(tcp.status, tcp.stderr).toBe(2);
    expect(tcp.stderr).toContain(
      'mqtt.url: tcp://127.0.0.1:8883: a client certificate (mqtt.certFile, mqtt.keyFile) needs TLS',
    );
  });
});
