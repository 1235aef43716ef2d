import { X509Certificate } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, readFileSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { OPCUACertificateManager } from 'node-opcua';
import { afterAll, describe, expect, it } from 'vitest';
import type { DeviceDriver } from '../../src/core/driver.js';
import { startPlant, type Plant, type PlantInput } from '../../simulators/plant.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  opensslServerCertificate,
  plcCertificate,
  readWithin,
  secureDriver,
  sessionCounter,
  startSecurePlant,
  writeLands,
  type Cleanups,
} from './opcua-trust.js';

/**
 * An OPC UA server certificate must belong to the endpoint it is presented at (OPC 10000-4,
 * 6.1.3; docs/configuration.md, OPC UA certificates): trusted by the gateway's PKI is not
 * enough. It must name the host of the endpoint URL (unless the PLC's acceptHostNameMismatch
 * says otherwise) and have been made for the application URI the server describes itself with;
 * pinned (serverCertificateSha256), it must be that very certificate, trusted or not, and
 * nothing else is — at the first connection and at every one after, a server whose certificate
 * was replaced included. Real parts: sluice-sim's OPC UA PLC (SignAndEncrypt) serving the
 * certificate each case gives it, the real driver and its PKI folder. Ground truth: the
 * simulator's count of the writes it received, and the PKI's folders.
 */

const cleanups: Cleanups = [];

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/**
 * A PKI folder for sluice-sim whose PLC `ua` serves a self-signed certificate made for
 * `applicationUri` (default: the simulator's own, urn:sluice-sim:ua) naming the hosts given.
 */
async function simPkiWith(names: {
  readonly applicationUri?: string;
  readonly dns: string[];
  readonly ip: string[];
}): Promise<string> {
  const { dir, cleanup } = tempDir('sluice-sim-pki-');
  cleanups.push(cleanup);
  const store = new OPCUACertificateManager({
    rootFolder: join(dir, 'ua', 'pki'),
    automaticallyAcceptUnknownCertificate: true,
    disableFileWatchers: true,
  });
  await store.initialize();
  await store.createSelfSignedCertificate({
    applicationUri: names.applicationUri ?? 'urn:sluice-sim:ua',
    dns: names.dns,
    ip: names.ip,
    outputFile: plcCertificate(dir),
    subject: '/CN=sluice-sim-ua',
    startDate: new Date(Date.now() - 86_400_000),
    validity: 30,
  });
  await store.dispose();
  return dir;
}

/** sluice-sim on `simPki` (a fresh PKI: the simulator's own certificate), stopped at the end. */
async function plantOn(simPki?: string): Promise<{ plant: Plant; simPki: string }> {
  let dir = simPki;
  if (dir === undefined) {
    const made = tempDir('sluice-sim-pki-');
    cleanups.push(made.cleanup);
    dir = made.dir;
  }
  const plant = await startSecurePlant(dir);
  cleanups.push(() => plant.stop());
  return { plant, simPki: dir };
}

/** The driver to `plant`'s PLC at 127.0.0.1, its PKI trusting the certificates `trust` names. */
async function driverTo(
  plant: Plant,
  trust: string[],
  plc: { serverCertificateSha256?: string; acceptHostNameMismatch?: boolean } = {},
): Promise<{ driver: DeviceDriver; pkiDir: string }> {
  const e = plant.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  return secureDriver(e.endpointUrl, e.namespaceUri, cleanups, {
    plc,
    before: (pkiDir) => {
      const trusted = join(pkiDir, 'client', 'trusted', 'certs');
      mkdirSync(trusted, { recursive: true });
      trust.forEach((file, i) => {
        copyFileSync(file, join(trusted, `operator-${i}.pem`));
      });
    },
  });
}

/** Waits until the driver's last error matches `refusal` (asking it to connect meanwhile). */
async function refusedWith(driver: DeviceDriver, refusal: RegExp): Promise<string> {
  const end = Date.now() + 20_000;
  while (!refusal.test(driver.health().lastError ?? '')) {
    if (Date.now() > end) throw new Error(`no such refusal: ${driver.health().lastError}`);
    await driver.read().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
  }
  return driver.health().lastError ?? '';
}

/** The files of a folder of the gateway's PKI (none when it does not exist). */
function pkiFiles(pkiDir: string, ...folder: string[]): string[] {
  const dir = join(pkiDir, 'client', ...folder);
  return existsSync(dir) ? readdirSync(dir) : [];
}

const sha256 = (file: string): string => new X509Certificate(readFileSync(file)).fingerprint256;

describe('OPC UA server certificate bound to its endpoint', () => {
  it("a trusted certificate that does not name the endpoint URL's host is refused; acceptHostNameMismatch takes it", async () => {
    // PLC B's certificate (another line's address), trusted by the operator, answering at the
    // address the gateway has for PLC ua.
    const { plant, simPki } = await plantOn(
      await simPkiWith({ dns: ['plc-b.line2'], ip: ['10.0.0.22'] }),
    );
    const { driver, pkiDir } = await driverTo(plant, [plcCertificate(simPki)]);
    const refusal = await refusedWith(driver, /BadCertificateHostNameInvalid/);
    expect(refusal).toMatch(
      /the server certificate of opc\.tcp:\/\/127\.0\.0\.1:\d+ \(CN=sluice-sim-ua; SHA-1 [0-9a-f]{40}\) is refused: it does not name 127\.0\.0\.1, the host of the endpoint URL \(it names plc-b\.line2, 10\.0\.0\.22\)/,
    );
    expect(refusal).toMatch(/pin its certificate \(plcs\.ua\.serverCertificateSha256\)/);
    expect(await writeLands(plant, driver)).toBe(false);
    // Not offered for trust either: a certificate for another host is no decision to make here.
    expect(pkiFiles(pkiDir, 'rejected')).toEqual([]);

    // The operator accepts the mismatch for this PLC: the trusted certificate is taken.
    const relaxed = await driverTo(plant, [plcCertificate(simPki)], {
      acceptHostNameMismatch: true,
    });
    expect(await readWithin(relaxed.driver, 20_000)).not.toBeNull();
    expect(await writeLands(plant, relaxed.driver)).toBe(true);
  }, 90_000);

  it('a certificate made for another application than the server presenting it is refused', async () => {
    // An HMI's certificate (its own application URI), naming the PLC's address, trusted.
    const { plant, simPki } = await plantOn(
      await simPkiWith({
        applicationUri: 'urn:plant:hmi-3',
        dns: ['localhost'],
        ip: ['127.0.0.1'],
      }),
    );
    const { driver } = await driverTo(plant, [plcCertificate(simPki)]);
    const refusal = await refusedWith(driver, /BadCertificateUriInvalid/);
    expect(refusal).toMatch(
      /is refused: it was made for the application urn:plant:hmi-3, not for urn:sluice-sim:ua, the application URI of the server presenting it/,
    );
    expect(await writeLands(plant, driver)).toBe(false);
  }, 60_000);

  it('a pinned certificate is taken without the trust store, whatever host it names', async () => {
    const { plant, simPki } = await plantOn(
      await simPkiWith({ dns: ['plc-b.line2'], ip: ['10.0.0.22'] }),
    );
    // Pinned as openssl writes it (upper case, in pairs); trusted/certs/ holds nothing.
    const { driver, pkiDir } = await driverTo(plant, [], {
      serverCertificateSha256: sha256(plcCertificate(simPki)),
    });
    expect(await readWithin(driver, 20_000)).not.toBeNull();
    expect(await writeLands(plant, driver)).toBe(true);
    expect(pkiFiles(pkiDir, 'rejected')).toEqual([]);
    expect(pkiFiles(pkiDir, 'trusted', 'certs')).toEqual([]);
  }, 60_000);

  it('a pin that does not match refuses the server, also one the trust store trusts', async () => {
    const { plant, simPki } = await plantOn();
    const other = 'ab'.repeat(32);
    const { driver } = await driverTo(plant, [plcCertificate(simPki)], {
      serverCertificateSha256: other,
    });
    const presented = sha256(plcCertificate(simPki)).replaceAll(':', '').toLowerCase();
    const refusal = await refusedWith(driver, /is not the certificate pinned/);
    expect(refusal).toContain(
      `is refused: it is not the certificate pinned for PLC ua (plcs.ua.serverCertificateSha256 ${other}; this one's SHA-256 is ${presented}): another server answers at this address, or the PLC's certificate was replaced`,
    );
    expect(refusal).toMatch(/\(BadCertificateUntrusted\)$/);
    expect(await writeLands(plant, driver)).toBe(false);
  }, 60_000);
});

/**
 * The PLC at the gateway's address restarts (a replacement, a PKI reset) with another
 * certificate that the trust store trusts: the binding is checked again, and the new server gets
 * nothing.
 */
describe('OPC UA server whose certificate was replaced between two connections', () => {
  const plantAt = (port: number): PlantInput => ({
    control: { host: '127.0.0.1', port: 0 },
    plcs: {
      ua: {
        protocol: 'opcua',
        host: '127.0.0.1',
        port,
        securityModes: ['None', 'SignAndEncrypt'],
        devices: { 'ua-valve': { profile: 'valve' } },
      },
    },
  });

  it.each([
    ['pinned: the new certificate is not the pinned one', 'pin'],
    ['not pinned: the new certificate names another host', 'host'],
  ] as const)(
    '%s',
    async (_, binding) => {
      const first = await plantOn();
      const firstCertificate = plcCertificate(first.simPki);
      const e = first.plant.plc('ua').endpoint;
      if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
      const port = Number(new URL(e.endpointUrl).port);
      // The replacement's PKI: its own certificate for the pin, another host's otherwise.
      const secondPki =
        binding === 'pin'
          ? tempDir('sluice-sim-pki-')
          : {
              dir: await simPkiWith({ dns: ['plc-b.line2'], ip: ['10.0.0.22'] }),
              cleanup: () => {},
            };
      cleanups.push(secondPki.cleanup);
      // The replacement's certificate, made now (a plant start makes it), is trusted as well.
      if (binding === 'pin') await (await startSecurePlant(secondPki.dir)).stop();
      const { driver } = await driverTo(
        first.plant,
        [firstCertificate, plcCertificate(secondPki.dir)],
        binding === 'pin'
          ? { serverCertificateSha256: sha256(firstCertificate).replaceAll(':', '').toLowerCase() }
          : {},
      );
      expect(await readWithin(driver, 20_000)).not.toBeNull();
      expect(await writeLands(first.plant, driver)).toBe(true);

      await first.plant.stop();
      const second = await startPlant(plantAt(port), { control: false, pkiDir: secondPki.dir });
      cleanups.push(() => second.stop());
      await refusedWith(
        driver,
        binding === 'pin'
          ? /is not the certificate pinned for PLC ua/
          : /does not name 127\.0\.0\.1/,
      );
      expect(await writeLands(second, driver)).toBe(false);
      expect(second.device('ua-valve').counters.writesReceived).toBe(0);
    },
    90_000,
  );
});

/**
 * Another server takes the address while the driver reconnects (a twin line's PLC: the same
 * program and namespace, its own application URI urn:line2:ua, a certificate naming the address,
 * trusted): node-opcua re-establishes the link with the new server's certificate and keeps the
 * endpoint descriptions the first server gave. The certificate is checked against the
 * description of the server presenting it, read again on the new channel (OPC 10000-4, 6.1.3),
 * as a first connection to that server checks it. Ground truth: the second server's count of
 * the writes it received, and of its sessions.
 */
describe('OPC UA server replaced by another application while the driver reconnects', () => {
  const line2 = 'urn:line2:ua';

  /** The driver to a first sluice-sim, then that one stopped and a second started on its port. */
  async function replaced(second: { simPki: string }): Promise<{
    driver: DeviceDriver;
    plant: Plant;
  }> {
    const first = await plantOn();
    const e = first.plant.plc('ua').endpoint;
    if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
    const port = Number(new URL(e.endpointUrl).port);
    const { driver } = await driverTo(first.plant, [
      plcCertificate(first.simPki),
      plcCertificate(second.simPki),
    ]);
    expect(await readWithin(driver, 20_000)).not.toBeNull();
    expect(await writeLands(first.plant, driver)).toBe(true);
    await first.plant.stop();
    const plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          ua: {
            protocol: 'opcua',
            host: '127.0.0.1',
            port,
            applicationUri: line2,
            securityModes: ['None', 'SignAndEncrypt'],
            devices: { 'ua-valve': { profile: 'valve' } },
          },
        },
      },
      { control: false, pkiDir: second.simPki },
    );
    cleanups.push(() => plant.stop());
    return { driver, plant };
  }

  it('its certificate, made for the application it describes itself with, is taken at the reconnection', async () => {
    const { driver, plant } = await replaced({
      simPki: await simPkiWith({ applicationUri: line2, dns: ['localhost'], ip: ['127.0.0.1'] }),
    });
    const end = Date.now() + 20_000;
    while (!(await writeLands(plant, driver))) {
      if (Date.now() > end) throw new Error(`no write landed: ${driver.health().lastError}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    // The write landed on the session the reconnection made: the server saw that one of the
    // driver's, and the counter's own. Held to the first server's application URI, the
    // reconnection was given up and a new connection made another.
    const counter = await sessionCounter(plant);
    cleanups.push(() => counter.close());
    expect((await counter.sessions()).cumulated).toBe(2);
  }, 90_000);

  it("a certificate made for the first server's application is refused: the server presenting it is another", async () => {
    const { driver, plant } = await replaced({
      simPki: await simPkiWith({ dns: ['localhost'], ip: ['127.0.0.1'] }),
    });
    const refusal = await refusedWith(driver, /BadCertificateUriInvalid/);
    expect(refusal).toMatch(
      /is refused: it was made for the application urn:sluice-sim:ua, not for urn:line2:ua, the application URI of the server presenting it/,
    );
    expect(await writeLands(plant, driver)).toBe(false);
    expect(plant.device('ua-valve').counters.writesReceived).toBe(0);
  }, 90_000);
});

/**
 * An IPv4 address and its IPv4-mapped IPv6 form (::ffff:127.0.0.1) name one host: a connection
 * to either reaches it over IPv4. A certificate may name the PLC's address in the mapped form
 * where the endpoint URL gives its IPv4 address; the host name check takes them as the same
 * address. Real parts: sluice-sim's OPC UA PLC serving a certificate made by openssl (node-opcua's
 * certificate maker writes ::ffff:127.0.0.1 as 0:0:0:0:0:0:FFFF:127), and the real driver. The
 * other way round (an endpoint URL with the mapped address) cannot be connected to: see
 * opcua-binding-address.test.ts. Ground truth: the simulator's count of the writes it received.
 */
describe("OPC UA certificate naming the IPv4-mapped form of the endpoint URL's address", () => {
  it('endpoint URL 127.0.0.1, certificate naming ::ffff:127.0.0.1: taken', async () => {
    const { dir: simPki, cleanup } = tempDir('sluice-sim-pki-');
    cleanups.push(cleanup);
    opensslServerCertificate(join(simPki, 'ua', 'pki'), {
      applicationUri: 'urn:sluice-sim:ua',
      ip: ['::ffff:127.0.0.1'],
    });
    expect(new X509Certificate(readFileSync(plcCertificate(simPki))).subjectAltName).toBe(
      'URI:urn:sluice-sim:ua, IP Address:0:0:0:0:0:FFFF:7F00:1',
    );
    const { plant } = await plantOn(simPki);
    const { driver } = await driverTo(plant, [plcCertificate(simPki)]);
    expect(await readWithin(driver, 20_000)).not.toBeNull();
    expect(await writeLands(plant, driver)).toBe(true);
  }, 60_000);
});
