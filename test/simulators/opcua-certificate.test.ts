import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { OPCUACertificateManager } from 'node-opcua';
import { afterAll, expect, it } from 'vitest';
import { keptCertificateProblem } from '../../simulators/opcua-server.js';
import { startPlant } from '../../simulators/plant.js';
import type { PlantInput } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { connectOpcua, opcuaEndpoint, releaseClientPki } from './opcua-client.js';

/**
 * A plant given a PKI folder of its own (ownsPki: the demo's .state/demo/sim-pki) keeps its OPC
 * UA server's certificate and key there: a second start serves the same certificate instead of
 * making a new one (an RSA key and a certificate, most of a second), and a kept one that can no
 * longer serve (expired; made for another host, or without the loopback addresses; its key lost
 * or another's) is made anew. The certificate it makes names the loopback addresses, so that a
 * client checking the endpoint URL's host against it connects. Ground truth: the certificate the
 * running server presents to a client (GetEndpoints), and the files.
 */

const PLANT: PlantInput = {
  control: { host: '127.0.0.1', port: 0 },
  plcs: {
    ua: {
      protocol: 'opcua',
      host: '127.0.0.1',
      port: 0,
      devices: { 'ua-valve': { profile: 'valve' } },
    },
  },
};

const { dir, cleanup } = tempDir('sluice-sim-kept-pki-');
const own = join(dir, 'ua', 'pki', 'own');
const certificateFile = join(own, 'certs', 'certificate.pem');
const keyFile = join(own, 'private', 'private_key.pem');

afterAll(async () => {
  await releaseClientPki();
  cleanup();
});

/** Starts the plant on `dir`, and returns the certificate its server presents to a client. */
async function presentedAtStart(): Promise<X509Certificate> {
  const plant = await startPlant(PLANT, {
    ephemeralPorts: true,
    control: false,
    pkiDir: dir,
    ownsPki: true,
  });
  try {
    const ua = await connectOpcua(opcuaEndpoint(plant.plc('ua').endpoint).endpointUrl);
    try {
      const endpoints = await ua.client.getEndpoints();
      const der = endpoints[0]?.serverCertificate;
      if (der === undefined) throw new Error('the server presented no certificate');
      return new X509Certificate(der);
    } finally {
      await ua.close();
    }
  } finally {
    await plant.stop();
  }
}

const onDisk = (): X509Certificate => new X509Certificate(readFileSync(certificateFile));

it('serves the certificate it kept at the next start, and replaces one that expired', async () => {
  const first = await presentedAtStart();
  expect(first.fingerprint256).toBe(onDisk().fingerprint256);
  const key = readFileSync(keyFile, 'utf8');

  // Started again on the same folder: the same certificate and key, served as they were.
  const second = await presentedAtStart();
  expect(second.fingerprint256).toBe(first.fingerprint256);
  expect(readFileSync(keyFile, 'utf8')).toBe(key);

  // The kept certificate expired (made again from the same key, for the same names, valid for
  // a day two years ago): the next start makes a new one, valid now, with a new key.
  const manager = new OPCUACertificateManager({ rootFolder: join(dir, 'ua', 'pki') });
  await manager.initialize();
  const names = (first.subjectAltName ?? '').split(', ');
  rmSync(certificateFile);
  await manager.createSelfSignedCertificate({
    applicationUri: names.find((n) => n.startsWith('URI:'))!.slice('URI:'.length),
    dns: names.filter((n) => n.startsWith('DNS:')).map((n) => n.slice('DNS:'.length)),
    outputFile: certificateFile,
    subject: '/CN=expired',
    startDate: new Date(Date.now() - 2 * 365 * 86_400_000),
    validity: 1,
  });
  await manager.dispose();
  const expired = onDisk();
  expect(Date.parse(expired.validTo)).toBeLessThan(Date.now());

  const third = await presentedAtStart();
  expect(third.fingerprint256).toBe(onDisk().fingerprint256);
  expect(third.fingerprint256).not.toBe(expired.fingerprint256);
  expect(third.fingerprint256).not.toBe(first.fingerprint256);
  expect(Date.parse(third.validTo)).toBeGreaterThan(Date.now());
  expect(readFileSync(keyFile, 'utf8')).not.toBe(key);
}, 60_000);

it('names the loopback addresses and its application URI, and makes anew a kept one that does not', async () => {
  // A client that checks the endpoint URL's host against the certificate (OPC 10000-4, 6.1.3;
  // sluiced does) reaches the PLC by 127.0.0.1, ::1 or localhost.
  const made = await presentedAtStart();
  expect(made.checkIP('127.0.0.1')).toBe('127.0.0.1');
  expect(made.checkIP('::1')).toBe('::1');
  expect(made.checkHost('localhost', { subject: 'never' })).toBe('localhost');
  const names = (made.subjectAltName ?? '').split(', ');
  expect(names).toContain('URI:urn:sluice-sim:ua');

  // One kept from a start that did not name them (the same application URI and host names,
  // valid, its own key): the next start makes a new one that does.
  const manager = new OPCUACertificateManager({ rootFolder: join(dir, 'ua', 'pki') });
  await manager.initialize();
  rmSync(certificateFile);
  await manager.createSelfSignedCertificate({
    applicationUri: 'urn:sluice-sim:ua',
    dns: names.filter((n) => n.startsWith('DNS:')).map((n) => n.slice('DNS:'.length)),
    outputFile: certificateFile,
    subject: '/CN=no-loopback',
    startDate: new Date(),
    validity: 365,
  });
  await manager.dispose();
  const unnamed = onDisk();
  expect(unnamed.checkIP('127.0.0.1')).toBeUndefined();
  const next = await presentedAtStart();
  expect(next.fingerprint256).not.toBe(unnamed.fingerprint256);
  expect(next.checkIP('127.0.0.1')).toBe('127.0.0.1');
  expect(next.checkIP('::1')).toBe('::1');
}, 60_000);

it('starts past a lock left by a start killed while it made the certificate', async () => {
  // The certificate not written yet, node-opcua's lock directory for it left behind: without
  // its removal the start waited for the lock to look stale (minutes).
  rmSync(certificateFile);
  mkdirSync(`${certificateFile}.mutex.lock`);
  const made = await presentedAtStart();
  expect(made.fingerprint256).toBe(onDisk().fingerprint256);
}, 30_000);

it('says why a kept certificate and key cannot serve', () => {
  const { dir: other, cleanup: removeOther } = tempDir('sluice-sim-kept-pair-');
  try {
    const cert = join(other, 'certificate.pem');
    const key = join(other, 'private_key.pem');
    copyFileSync(certificateFile, cert);
    copyFileSync(keyFile, key);
    const names = (onDisk().subjectAltName ?? '').split(', ');
    const uri = names.find((n) => n.startsWith('URI:'))!.slice('URI:'.length);
    const dnsNames = names.filter((n) => n.startsWith('DNS:')).map((n) => n.slice(4));
    const wanted = { applicationUri: uri, dnsNames, now: Date.now() };
    expect(keptCertificateProblem(cert, key, wanted)).toBeNull();
    expect(keptCertificateProblem(cert, key, { ...wanted, applicationUri: 'urn:x:other' })).toBe(
      'the certificate was made for another application URI than urn:x:other',
    );
    expect(keptCertificateProblem(cert, key, { ...wanted, dnsNames: ['renamed-host'] })).toBe(
      'the certificate does not name renamed-host',
    );
    expect(keptCertificateProblem(cert, key, { ...wanted, ipAddresses: ['::1', '10.9.8.7'] })).toBe(
      'the certificate does not name 10.9.8.7',
    );
    expect(
      keptCertificateProblem(cert, key, { ...wanted, now: Date.parse(onDisk().validTo) }),
    ).toMatch(/^the certificate expired on /);
    // Another RSA key: the user PKI's, beside it.
    copyFileSync(join(dir, 'ua', 'user-pki', 'own', 'private', 'private_key.pem'), key);
    expect(keptCertificateProblem(cert, key, wanted)).toBe(
      'the private key does not belong to the certificate',
    );
    rmSync(key);
    expect(keptCertificateProblem(cert, key, wanted)).toBe(
      'the private key cannot be read (ENOENT)',
    );
    writeFileSync(cert, 'not a certificate');
    expect(keptCertificateProblem(cert, key, wanted)).toBe(
      'the certificate file holds no readable certificate',
    );
    rmSync(cert);
    expect(keptCertificateProblem(cert, key, wanted)).toBeNull();
  } finally {
    removeOther();
  }
});
