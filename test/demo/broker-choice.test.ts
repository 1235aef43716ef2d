import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { brokerChoice } from '../../src/demo/broker-choice.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';

/**
 * The demo's broker for its own site file as shipped and as a user edits it. A ws:// URL put in
 * the site file (not SLUICE_MQTT_URL) started the embedded broker on 1883 all the same, and the
 * banner called the site's broker "(embedded broker)". The demo start with a site file's broker
 * is in test/daemon/demo.test.ts (the broker that wants TLS).
 */
it("takes SLUICE_MQTT_URL first, then the site file's own broker, embeds one only for the site file's as shipped, and none without an mqtt section", () => {
  const { dir, cleanup } = tempDir('sluice-demo-broker-choice-');
  try {
    const shipped = readFileSync(join(ROOT, 'devices', 'site.example.yaml'), 'utf8');
    const site = (url: string): string => {
      const path = join(dir, `site-${url.replace(/\W/g, '-')}.yaml`);
      // Relative paths in the site file resolve from its folder: the copy keeps them.
      writeFileSync(
        path,
        shipped
          .replaceAll('../', `${join(ROOT, 'devices')}/../`)
          .replace('url: mqtt://127.0.0.1:1883', `url: ${url}`),
      );
      return path;
    };
    const choice = (path: string, env: NodeJS.ProcessEnv): string =>
      brokerChoice(env, loadConfig(path, { env }));
    const asShipped = join(ROOT, 'devices', 'site.example.yaml');
    expect(choice(asShipped, {})).toBe('embedded');
    expect(choice(asShipped, { SLUICE_MQTT_URL: '' })).toBe('embedded');
    expect(choice(asShipped, { SLUICE_MQTT_URL: 'mqtt://127.0.0.1:1883' })).toBe('environment');
    expect(choice(asShipped, { SLUICE_MQTT_URL: 'ws://127.0.0.1:9001' })).toBe('environment');
    for (const url of [
      'ws://127.0.0.1:9001',
      'wss://broker.example:443/mqtt',
      'mqtt://127.0.0.1:1884',
    ]) {
      expect(choice(site(url), {}), url).toBe('site');
      expect(choice(site(url), { SLUICE_MQTT_URL: 'mqtt://127.0.0.1:1883' }), url).toBe(
        'environment',
      );
    }
    // No mqtt section: the daemon takes no MQTT command, so no broker (SLUICE_MQTT_URL alone is
    // refused by the configuration, which names the missing section).
    const noMqtt = join(dir, 'site-no-mqtt.yaml');
    writeFileSync(
      noMqtt,
      shipped.replaceAll('../', `${join(ROOT, 'devices')}/../`).replace(/^mqtt:\n(?: .*\n)+/m, ''),
    );
    expect(choice(noMqtt, {})).toBe('none');
    expect(() => choice(noMqtt, { SLUICE_MQTT_URL: 'mqtt://127.0.0.1:1883' })).toThrow(
      /SLUICE_MQTT_URL: overrides mqtt\.url, but the configuration has no mqtt section/,
    );
  } finally {
    cleanup();
  }
});
