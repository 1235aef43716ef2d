import { existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { tempDir } from '../helpers/fixtures.js';
import { mosquittoAvailable, startMosquitto } from '../helpers/mosquitto.js';
import { makePki } from '../intake/https-client.js';
import { runSluiced, startSluiced } from './sluiced.js';

/**
 * `mqtt.caFile` pins the broker a site trusts. MQTT.js ignores it on a URL that is not TLS
 * (mqtt://, ws:// without a client certificate, tcp://): the intake connected in the clear and
 * never checked the broker against the CA the operator gave. `sluiced --check` (and the start)
 * refuse the pair; a TLS URL is taken. A client certificate (`mqtt.certFile`, `mqtt.keyFile`)
 * on mqtt:// or ws:// made MQTT.js speak TLS all the same, while the configuration, the log and
 * /readyz said mqtt:// (a plain listener reset every handshake under that name): refused too,
 * naming mqtts:// (wss://).
 */

let dir: string;
let cleanup: () => void;
beforeEach(async () => {
  ({ dir, cleanup } = tempDir('sluice-mqtt-tls-'));
  const pems = await generate([{ name: 'commonName', value: 'broker' }], {
    keyType: 'ec',
    curve: 'P-256',
  });
  writeFileSync(join(dir, 'ca.pem'), pems.cert);
  writeFileSync(join(dir, 'client.pem'), pems.cert);
  writeFileSync(join(dir, 'client.key'), pems.private);
});
afterEach(() => {
  cleanup();
});

function site(mqtt: string): string {
  const path = join(dir, 'sluice.yaml');
  writeFileSync(
    path,
    `
gatewayId: g1
stateDir: state
mqtt: { identity: plant, ${mqtt} }
identities:
  plant: { devices: ['*'] }
plcs: {}
devices: {}
`,
  );
  return path;
}

function check(mqtt: string): ReturnType<typeof runSluiced> {
  return runSluiced(['--config', site(mqtt), '--check']);
}

it.each(['mqtt://127.0.0.1:1883', 'ws://127.0.0.1:9001', 'tcp://127.0.0.1:1883'])(
  'refuses a CA file with %s, which is not TLS',
  (url) => {
    const r = check(`url: "${url}", caFile: ca.pem`);
    expect(r.status, r.stderr).toBe(2);
    expect(r.stderr).toContain(
      `mqtt.caFile: given, but mqtt.url ${url} is not TLS: the connection would be unencrypted and the broker never checked against the CA; use mqtts:// (or wss://), or drop mqtt.caFile`,
    );
  },
);

it.each([
  ['mqtts://127.0.0.1:8883', 'caFile: ca.pem'],
  ['wss://127.0.0.1:9001', 'caFile: ca.pem'],
  ['mqtts://127.0.0.1:8883', 'caFile: ca.pem, certFile: client.pem, keyFile: client.key'],
  ['wss://127.0.0.1:9001', 'certFile: client.pem, keyFile: client.key'],
])('takes TLS files with %s (%s)', (url, files) => {
  const r = check(`url: "${url}", ${files}`);
  expect(r.stderr).not.toContain('mqtt.caFile');
  expect(r.status, r.stderr).toBe(0);
});

it.each([
  ['mqtt://127.0.0.1:8883', 'MQTT.js would speak TLS on it all the same', 'mqtts://'],
  ['ws://127.0.0.1:9001', 'MQTT.js would speak TLS on it all the same', 'wss://'],
  ['tcp://127.0.0.1:8883', 'MQTT.js refuses the pair with it', 'mqtts://'],
])('refuses a client certificate with %s, which is not TLS', (url, why, fix) => {
  const r = check(`url: "${url}", caFile: ca.pem, certFile: client.pem, keyFile: client.key`);
  expect(r.status, r.stderr).toBe(2);
  const scheme = url.slice(0, url.indexOf('//') + 2);
  expect(r.stderr).toContain(
    `mqtt.url: ${url}: a client certificate (mqtt.certFile, mqtt.keyFile) needs TLS, which ${scheme} is not, and ${why}`,
  );
  expect(r.stderr).toContain(`: use ${fix}\n`);
  expect(existsSync(join(dir, 'state'))).toBe(false);
});

it.runIf(mosquittoAvailable())(
  'a client certificate with mqtt:// is refused at start, before the broker is reached; with mqtts:// the broker takes it',
  async () => {
    // A Mosquitto listener that takes TLS with a client certificate only, as a site's may.
    const pki = await makePki();
    const broker = await startMosquitto({
      settings: [
        `cafile ${pki.clientCaFile}`,
        `certfile ${pki.certFile}`,
        `keyfile ${pki.keyFile}`,
        'require_certificate true',
      ],
    });
    try {
      const client = await pki.client('gateway-g1');
      writeFileSync(join(dir, 'client.pem'), client.cert);
      writeFileSync(join(dir, 'client.key'), client.key);
      writeFileSync(join(dir, 'ca.pem'), pki.serverCa.cert);
      const files = 'caFile: ca.pem, certFile: client.pem, keyFile: client.key';

      // mqtt://: MQTT.js connected with TLS all the same, and the log said mqtt://.
      const refused = runSluiced(['--config', site(`url: "${broker.url}", ${files}`)]);
      expect(refused.status, refused.stderr).toBe(2);
      expect(refused.stderr).toContain(
        `mqtt.url: ${broker.url}: a client certificate (mqtt.certFile, mqtt.keyFile) needs TLS, which mqtt:// is not`,
      );
      // Nothing made, nothing reached: no state folder, no connection at the broker.
      expect(existsSync(join(dir, 'state'))).toBe(false);
      expect(broker.connectionsOf('sluice-g1')).toBe(0);

      // The fix the message names: mqtts://, with the same files, connects.
      const tlsUrl = `mqtts://127.0.0.1:${broker.port}`;
      const daemon = startSluiced(['--config', site(`url: "${tlsUrl}", ${files}`)]);
      try {
        await daemon.line((l) => l.includes('subscribed to the command topics'), 20_000);
        expect(broker.connectionsOf('sluice-g1')).toBe(1);
        const started = daemon.lines.find((l) => l.includes('"msg":"sluiced started"')) ?? '';
        expect((JSON.parse(started) as { mqtt: string }).mqtt).toBe(tlsUrl);
      } finally {
        expect(await daemon.stop()).toBe(0);
      }
    } finally {
      await broker.close();
      pki.cleanup();
    }
  },
  60_000,
);
