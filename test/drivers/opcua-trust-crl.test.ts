import { X509Certificate } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CertificateAuthority, CertificateManager } from 'node-opcua-pki';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { WriteNotSentError, type DeviceDriver } from '../../src/core/driver.js';
import type { Plant } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import {
  endedUnknownNotResent,
  failFileWatchers,
  writeInController,
  plcCertificate,
  readWithin,
  secureDriver,
  sessionCounter,
  startSecurePlant,
  writeLands,
  type Cleanups,
  until,
} from './opcua-trust.js';

/**
 * An operator revokes a PLC's certificate issued by the plant's CA the way a CA revokes: its
 * certificate revocation list (CRL), which now lists it, is put in the gateway's trusted/crl/ in
 * place of the older one. The gateway must stop talking to that server at once, as when a
 * certificate is removed from trusted/certs/ — not at its next connection, nor only after a
 * restart. node-opcua-pki read the CRL folders only at start and from its folder watchers, which
 * ignore a list written over in place, and the driver looked at trusted/certs/ alone: the session
 * stayed up and writes kept landing.
 *
 * Real parts: sluice-sim's OPC UA PLC with SignAndEncrypt, its certificate issued (from a request
 * made with the simulator's own key) by a CA made with node-opcua-pki, whose revocation lists
 * are its own; the real driver and store. What the server saw is read from the server itself
 * (its session counts) and from the simulator's write counter. As in opcua-trust-revoke, `fs.watch`
 * fails in this process as the kernel makes it fail where inotify instances are used up: the
 * store's watchers cannot help.
 */

let restoreWatch: () => void = () => undefined;
let plant: Plant;
let simPki: string;
let caCertificate: string;
/** The CA's list before and after it revoked the PLC's certificate. */
let listBefore: string;
let listRevoking: string;
let counter: Awaited<ReturnType<typeof sessionCounter>>;
const serverSessions = (): ReturnType<typeof counter.sessions> => counter.sessions();
const cleanups: Cleanups = [];

beforeAll(async () => {
  restoreWatch = failFileWatchers();
  const sim = tempDir('sluice-sim-pki-');
  cleanups.push(sim.cleanup);
  simPki = sim.dir;
  // A first start makes the simulator's key and a self-signed certificate, whose names the
  // CA-issued one keeps (the server's application URI, its hosts: the gateway checks that the
  // certificate names the address it connects to).
  await (await startSecurePlant(simPki)).stop();
  const san = new X509Certificate(readFileSync(plcCertificate(simPki))).subjectAltName ?? '';
  const applicationUri = /URI:([^,]+)/.exec(san)?.[1] ?? '';
  const dns = [...san.matchAll(/DNS:([^,\s]+)/g)].map((m) => m[1] ?? '');
  const ip = [...san.matchAll(/IP Address:([^,\s]+)/g)].map((m) => m[1] ?? '');

  const caDir = tempDir('sluice-ca-');
  cleanups.push(caDir.cleanup);
  const ca = new CertificateAuthority({
    keySize: 2048,
    location: caDir.dir,
    backend: 'native',
    subject: '/CN=Plant CA/O=Sluice test',
  });
  await ca.initialize();
  caCertificate = ca.caCertificate;
  listBefore = join(caDir.dir, 'before.crl');
  copyFileSync(ca.revocationList, listBefore);
  const store = new CertificateManager({
    location: join(simPki, 'ua', 'pki'),
    disableFileWatchers: true,
  });
  await store.initialize();
  const request = await store.createCertificateRequest({
    applicationUri,
    dns,
    ip,
    subject: '/CN=sluice-sim ua',
    validity: 365,
  });
  await store.dispose();
  const issued = join(caDir.dir, 'plc-ua.pem');
  await ca.signCertificateRequest(issued, request, { applicationUri, dns, ip, validity: 365 });
  copyFileSync(issued, plcCertificate(simPki));
  await ca.revokeCertificate(issued, { reason: 'keyCompromise' });
  listRevoking = join(caDir.dir, 'revoking.crl');
  copyFileSync(ca.revocationList, listRevoking);

  plant = await startSecurePlant(simPki);
  counter = await sessionCounter(plant);
}, 60_000);

afterAll(async () => {
  await counter.close();
  for (const c of cleanups.reverse()) await c();
  await plant.stop();
  restoreWatch();
});

/**
 * The driver to the PLC, whose PKI trusts the plant's CA (trusted/certs/plant-ca.pem) with the
 * CA's list from before the revocation (trusted/crl/plant-ca.crl), with a session up and a
 * write landed; and the driver's log lines.
 */
async function caTrustingDriver(requestTimeoutMs?: number): Promise<{
  driver: DeviceDriver;
  crl: string;
  logged: Record<string, unknown>[];
}> {
  const e = plant.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  const { logger, lines } = recordingLogger();
  let crl = '';
  const { driver } = await secureDriver(e.endpointUrl, e.namespaceUri, cleanups, {
    logger,
    ...(requestTimeoutMs === undefined ? {} : { requestTimeoutMs }),
    before: (dir) => {
      const trusted = join(dir, 'client', 'trusted');
      mkdirSync(join(trusted, 'certs'), { recursive: true });
      mkdirSync(join(trusted, 'crl'), { recursive: true });
      copyFileSync(caCertificate, join(trusted, 'certs', 'plant-ca.pem'));
      crl = join(trusted, 'crl', 'plant-ca.crl');
      copyFileSync(listBefore, crl);
    },
  });
  expect(await readWithin(driver, 20_000)).not.toBeNull();
  expect(await writeLands(plant, driver)).toBe(true);
  return { driver, crl, logged: lines };
}

it('a revocation list that revokes the server certificate closes the session at once: logged, nothing more reaches the server, a reconnection refused', async () => {
  const before = await serverSessions();
  const { driver, crl, logged } = await caTrustingDriver();
  expect((await serverSessions()).current).toBe(before.current + 1);
  const opened = (await serverSessions()).cumulated;

  // The CA's newer list, written over the older one. No request of the driver's is asked for:
  // an idle session is cut too; the event is the server seeing it closed.
  copyFileSync(listRevoking, crl);
  await until('the server to see the session closed', async () => {
    return (await serverSessions()).current === before.current;
  });
  const health = driver.health();
  expect(health.connected).toBe(false);
  expect(health.lastError).toContain(`revocation list '${crl}' changed`);
  expect(health.lastError).toMatch(/is revoked: a certificate revocation list of its CA/);
  const line = logged.find(
    (l) => l.msg === 'opc ua server certificate no longer trusted: session closed',
  );
  expect(line).toMatchObject({
    endpointUrl: expect.stringMatching(/^opc\.tcp:/) as unknown,
    revocationLists: [crl],
    status: 'BadCertificateRevoked',
  });

  // Writes do not reach the PLC; the next connection, at the backoff's pace, is refused.
  expect(await writeLands(plant, driver)).toBe(false);
  const errors = driver.health().errorCount;
  await until('a refused reconnection', async () => {
    await driver.read().catch(() => undefined);
    const h = driver.health();
    return h.errorCount > errors && /is revoked: .*BadCertificateRevoked/.test(h.lastError ?? '');
  });
  expect(await writeLands(plant, driver)).toBe(false);
  const after = await serverSessions();
  expect(after.current).toBe(before.current);
  expect(after.cumulated).toBe(opened);
}, 60_000);

it('a write asked for right after the list is put in place does not reach the server', async () => {
  const before = await serverSessions();
  const { driver, crl } = await caTrustingDriver();
  copyFileSync(listRevoking, crl);
  const device = plant.device('ua-valve');
  const written = device.counters.writesReceived;
  const error = await driver.write({ action: 'stop', position: null, seq: 3000 + written }).then(
    () => null,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(WriteNotSentError);
  expect(String(error)).toMatch(/is revoked/);
  await until('the server to see the session closed', async () => {
    return (await serverSessions()).current === before.current;
  });
  expect(device.counters.writesReceived).toBe(written);
}, 60_000);

it('a write in flight when the list revokes the certificate ends with its outcome unknown, and is not sent again', async () => {
  const before = await serverSessions();
  const { driver, crl } = await caTrustingDriver(10_000);
  const inFlight = await writeInController(plant, driver, cleanups);
  copyFileSync(listRevoking, crl);
  await until('the server to see the session closed', async () => {
    return (await serverSessions()).current === before.current;
  });
  await endedUnknownNotResent(plant, driver, inFlight);
}, 60_000);
