import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { generate } from 'selfsigned';
import { afterEach, beforeEach, expect, it } from 'vitest';
import { startSluiced } from '../config/sluiced.js';
import { tempDir } from '../helpers/fixtures.js';
import { mosquittoAvailable, startMosquitto } from '../helpers/mosquitto.js';
import { makePki, type Pki } from './https-client.js';

/**
 * A broker whose TLS certificate the gateway refuses (a name it does not carry, an end passed):
 * Node's TLS error carries the whole peer certificate, and the intake logged it as it was at every
 * streak of failed attempts (its raw DER bytes, its public key, its fingerprints: kilobytes a
 * line), with a message ("certificate has expired") that did not say whose certificate it was. The
 * log and /readyz now name the broker's certificate, and the log line carries the error's type,
 * message, code and stack alone. Real Mosquitto with a TLS listener, the real daemon.
 */

const DAY = 86_400_000;
let dir: string;
let cleanup: () => void;
let pki: Pki;
beforeEach(async () => {
  ({ dir, cleanup } = tempDir('sluice-mqtt-broker-cert-'));
  pki = await makePki();
});
afterEach(() => {
  pki.cleanup();
  cleanup();
});

async function brokerCertificate(options: {
  altNames: { type: 2 | 7; value?: string; ip?: string }[];
  notAfter?: Date;
}): Promise<{ certFile: string; keyFile: string }> {
  const made = await generate([{ name: 'commonName', value: 'broker' }], {
    keyType: 'ec',
    algorithm: 'sha256',
    ca: { key: pki.serverCa.key, cert: pki.serverCa.cert },
    notBeforeDate: new Date(Date.now() - 2 * DAY),
    notAfterDate: options.notAfter ?? new Date(Date.now() + 30 * DAY),
    extensions: [
      { name: 'basicConstraints', cA: false },
      { name: 'keyUsage', digitalSignature: true },
      { name: 'extKeyUsage', serverAuth: true },
      { name: 'subjectAltName', altNames: options.altNames },
    ],
  });
  const certFile = join(dir, 'broker.crt');
  const keyFile = join(dir, 'broker.key');
  writeFileSync(certFile, made.cert);
  writeFileSync(keyFile, made.private, { mode: 0o600 });
  return { certFile, keyFile };
}

it.runIf(mosquittoAvailable()).each([
  {
    name: 'a name it does not carry',
    altNames: [{ type: 2 as const, value: 'broker.example' }],
    notAfter: undefined,
    code: 'ERR_TLS_CERT_ALTNAME_INVALID',
    says: "Hostname/IP does not match certificate's altnames",
  },
  {
    name: 'an end passed',
    altNames: [{ type: 7 as const, ip: '127.0.0.1' }],
    notAfter: new Date(Date.now() - DAY),
    code: 'CERT_HAS_EXPIRED',
    says: 'certificate has expired',
  },
])(
  "a broker's certificate with $name: the log names the broker's certificate and carries none of it",
  async ({ altNames, notAfter, code, says }) => {
    const files = await brokerCertificate({ altNames, ...(notAfter ? { notAfter } : {}) });
    const broker = await startMosquitto({
      settings: [`certfile ${files.certFile}`, `keyfile ${files.keyFile}`],
    });
    writeFileSync(join(dir, 'ca.pem'), pki.serverCa.cert);
    const config = join(dir, 'sluice.yaml');
    writeFileSync(
      config,
      `
gatewayId: g1
stateDir: state
mqtt: { identity: plant, url: "mqtts://127.0.0.1:${broker.port}", caFile: ca.pem }
identities:
  plant: { devices: ['*'] }
plcs: {}
devices: {}
`,
    );
    const daemon = startSluiced(['--config', config]);
    try {
      const line = await daemon.line((l) => l.includes('"msg":"MQTT connection error"'), 30_000);
      const entry = JSON.parse(line) as {
        err: Record<string, unknown>;
        reason?: string;
        url: string;
      };
      expect(entry.err.code).toBe(code);
      expect(String(entry.err.message)).toContain(says);
      expect(entry.reason).toBe(
        `the broker's TLS certificate: ${String(entry.err.message)} (checked against mqtt.caFile, or the system's CAs without it)`,
      );
      // None of the certificate: no `cert`, no key material, a line of a stack's length.
      expect(Object.keys(entry.err).sort()).toEqual(['code', 'message', 'stack', 'type']);
      expect(line).not.toContain('pubkey');
      expect(line.length).toBeLessThan(3000);
      // The broker saw the handshake fail (its log), and no MQTT connection of the gateway.
      await expect.poll(() => broker.log(), { timeout: 10_000 }).toMatch(/OpenSSL Error|alert/i);
      expect(broker.connectionsOf('sluice-g1')).toBe(0);
    } finally {
      expect(await daemon.stop()).toBe(0);
      await broker.close();
    }
  },
  60_000,
);
