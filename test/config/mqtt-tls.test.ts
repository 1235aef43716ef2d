import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { tempDir } from '../helpers/fixtures.js';
import { runSluiced } from './sluiced.js';

/**
 * `mqtt.caFile` pins the broker a site trusts. MQTT.js ignores it on a URL that is not TLS
 * (mqtt://, ws:// without a client certificate, tcp://): the intake connected in the clear and
 * never checked the broker against the CA the operator gave. `sluiced --check` (and the start)
 * refuse the pair; a TLS URL, or a client certificate (with which MQTT.js speaks TLS on
 * mqtt:// too), is taken.
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

function check(mqtt: string): ReturnType<typeof runSluiced> {
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
  return runSluiced(['--config', path, '--check']);
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
  ['mqtt://127.0.0.1:8883', 'caFile: ca.pem, certFile: client.pem, keyFile: client.key'],
])('takes a CA file with %s (%s)', (url, files) => {
  const r = check(`url: "${url}", ${files}`);
  expect(r.stderr).not.toContain('mqtt.caFile');
  expect(r.status, r.stderr).toBe(0);
});
