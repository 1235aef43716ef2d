import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, renameSync, rmSync } from 'node:fs';
import { OPCUACertificateManager } from 'node-opcua';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import type { DeviceDriver } from '../../src/core/driver.js';
import { pino } from 'pino';
import { silentLogger } from '../../src/core/logger.js';
import { buildDrivers, type Drivers, type Inventory } from '../../src/drivers/inventory.js';
import { startPlant, type Plant, type PlantInput } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { realComponent } from '../helpers/real.js';
import { TcpLink } from '../helpers/tcp-link.js';
import {
  linkedDriver,
  readWithin,
  secureDriver,
  startSecurePlant,
  untrusted,
  writeLands,
} from './opcua-trust.js';

/**
 * OPC UA message security: Sign and SignAndEncrypt work, and a server certificate the gateway
 * has never seen is refused (it lands in the PKI's rejected/ folder) until an operator moves it
 * to trusted/. Only the demo accepts unknown certificates.
 */

let plant: Plant;
const cleanups: (() => Promise<void> | void)[] = [];

beforeAll(async () => {
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        ua: {
          protocol: 'opcua',
          host: '127.0.0.1',
          port: 0,
          // None stays on for discovery (GetEndpoints runs on an unsecured channel).
          securityModes: ['None', 'Sign', 'SignAndEncrypt'],
          devices: { 'ua-valve': { profile: 'valve' } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
}, 30_000);

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
  await plant.stop();
});

async function drivers(
  mode: 'Sign' | 'SignAndEncrypt',
  policy: 'Basic256Sha256' | 'Aes128_Sha256_RsaOaep',
  acceptUnknownCertificates: boolean,
  on: Plant = plant,
): Promise<{ drivers: Drivers; pkiDir: string }> {
  const e = on.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  const inventory: Inventory = {
    plcs: {
      ua: {
        protocol: 'opcua',
        endpointUrl: e.endpointUrl,
        namespaceUri: e.namespaceUri,
        securityMode: mode,
        securityPolicy: policy,
        requestTimeoutMs: 2000,
      },
    },
    devices: { 'ua-valve': { plc: 'ua', profile: 'valve' } },
  };
  const { dir, cleanup } = tempDir('sluice-pki-');
  const d = await buildDrivers({
    inventory,
    profiles: PROFILES,
    pkiDir: dir,
    acceptUnknownCertificates,
    clock: systemClock,
    logger: process.env.SLUICE_TEST_DEBUG === '1' ? pino({ level: 'debug' }) : silentLogger,
  });
  cleanups.push(cleanup, () => d.close());
  d.start();
  return { drivers: d, pkiDir: dir };
}

describe('OPC UA security', () => {
  it.each([
    ['Sign', 'Basic256Sha256'],
    ['SignAndEncrypt', 'Basic256Sha256'],
    ['SignAndEncrypt', 'Aes128_Sha256_RsaOaep'],
  ] as const)(
    'reads and writes with %s / %s',
    async (mode, policy) => {
      const { drivers: d } = await drivers(mode, policy, true);
      const driver = d.bindings[0]!.driver;
      expect(await readWithin(driver, 20_000)).not.toBeNull();
      const device = plant.device('ua-valve');
      const before = device.counters.writesReceived;
      await driver.write({ action: 'stop', position: null, seq: 100 + before });
      expect(device.counters.writesReceived).toBe(before + 1);
    },
    30_000,
  );

  it('refuses an unknown server certificate until an operator trusts it', async () => {
    const { drivers: d, pkiDir } = await drivers('SignAndEncrypt', 'Basic256Sha256', false);
    const driver = d.bindings[0]!.driver;
    // No read gets through, until and after the driver has refused the certificate (its health
    // names the refusal): the refusal ends the wait, not a fixed 4 s.
    const end = Date.now() + 20_000;
    while (!/is not trusted: it was put in/.test(driver.health().lastError ?? '')) {
      if (Date.now() > end) throw new Error(`no refusal: ${driver.health().lastError}`);
      expect(await readWithin(driver, 1)).toBeNull();
      await new Promise((r) => setTimeout(r, 50));
    }
    // The operator is told what to do, and where.
    await expect(driver.read()).rejects.toThrow(
      /server certificate of opc\.tcp:\/\/\S+ \(.*CN=.*\) is not trusted: it was put in \S+rejected; to trust it, move it to \S+trusted\/certs/,
    );
    const rejected = join(pkiDir, 'client', 'rejected');
    expect(existsSync(rejected)).toBe(true);
    const certs = readdirSync(rejected).filter((f) => f.endsWith('.pem') || f.endsWith('.der'));
    expect(certs.length).toBeGreaterThan(0);
    for (const cert of certs) {
      renameSync(join(rejected, cert), join(pkiDir, 'client', 'trusted', 'certs', cert));
    }
    expect(await readWithin(driver, 20_000)).not.toBeNull();
  }, 45_000);
});

/**
 * A server certificate outside its validity period is refused with the dates, whatever the trust
 * settings: the demo's acceptance of unknown certificates does not extend to an expired one.
 */
describe('OPC UA server certificate outside its validity period', () => {
  const DAY = 86_400_000;

  /** A plant whose OPC UA server presents a certificate valid for two days from `startDate`. */
  async function plantWithCertificate(startDate: Date): Promise<Plant> {
    const { dir, cleanup } = tempDir('sluice-sim-pki-');
    cleanups.push(cleanup);
    const store = new OPCUACertificateManager({
      rootFolder: join(dir, 'ua', 'pki'),
      automaticallyAcceptUnknownCertificate: true,
      disableFileWatchers: true,
    });
    await store.initialize();
    await store.createSelfSignedCertificate({
      applicationUri: 'urn:sluice-sim:ua',
      dns: ['localhost'],
      ip: ['127.0.0.1'],
      outputFile: join(dir, 'ua', 'pki', 'own', 'certs', 'certificate.pem'),
      subject: '/CN=sluice-sim-ua',
      startDate,
      validity: 2,
    });
    await store.dispose();
    const p = await startSecurePlant(dir);
    cleanups.push(() => p.stop());
    return p;
  }

  /** The driver's last error once it names a certificate refusal (null: none within `ms`). */
  async function refusalWithin(driver: DeviceDriver, ms: number): Promise<string | null> {
    const end = Date.now() + ms;
    while (Date.now() < end) {
      const last = driver.health().lastError;
      if (last?.includes('server certificate') === true) return last;
      await new Promise((r) => setTimeout(r, 100));
    }
    return null;
  }

  it('an expired one is refused, with the day it expired, also where unknown certificates are accepted', async () => {
    const p = await plantWithCertificate(new Date(Date.now() - 10 * DAY));
    const { drivers: d, pkiDir } = await drivers('SignAndEncrypt', 'Basic256Sha256', true, p);
    const driver = d.bindings[0]!.driver;
    const refusal = await refusalWithin(driver, 15_000);
    expect(refusal).toMatch(
      /server certificate of opc\.tcp:\/\/\S+ \(CN=sluice-sim-ua; SHA-1 [0-9a-f]{40}\) is refused: it expired on \d{4}-\d\d-\d\dT/,
    );
    expect(refusal).toMatch(/Renew the PLC's certificate/);
    await expect(driver.read()).rejects.toThrow(/it expired on/);
    // Not made trusted on the way (the store's trusted folder holds nothing).
    const trusted = join(pkiDir, 'client', 'trusted', 'certs');
    expect(existsSync(trusted) ? readdirSync(trusted) : []).toEqual([]);
  }, 45_000);

  it('one not yet valid is refused, with the day it becomes valid', async () => {
    const p = await plantWithCertificate(new Date(Date.now() + 10 * DAY));
    const { drivers: d } = await drivers('SignAndEncrypt', 'Basic256Sha256', false, p);
    const driver = d.bindings[0]!.driver;
    const refusal = await refusalWithin(driver, 15_000);
    expect(refusal).toMatch(/is refused: it is not valid before \d{4}-\d\d-\d\dT/);
    expect(refusal).toMatch(/set the PLC's or the gateway's clock right/);
  }, 45_000);

  it('a gateway clock stepped back an hour after a refused attempt does not hold the next one', async () => {
    // The backoff is a duration (SPEC §6): on the wall clock, the step made it an hour long.
    const stepped = { ...systemClock, offset: 0, now: () => Date.now() + stepped.offset };
    // A certificate valid since yesterday: the step back leaves it valid.
    const p = await plantWithCertificate(new Date(Date.now() - DAY));
    const e = p.plc('ua').endpoint;
    if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
    const { driver, pkiDir } = await secureDriver(e.endpointUrl, e.namespaceUri, cleanups, {
      clock: stepped,
    });
    // The PLC's certificate is not trusted yet: an attempt fails, and the backoff holds the next.
    const end = Date.now() + 15_000;
    while (!/is not trusted: it was put in/.test(driver.health().lastError ?? '')) {
      if (Date.now() > end) throw new Error(`no refusal: ${driver.health().lastError}`);
      await driver.read().catch(() => undefined);
      await new Promise((r) => setTimeout(r, 50));
    }
    // The gateway's clock steps back an hour; the operator trusts the certificate.
    stepped.offset = -3_600_000;
    const rejected = join(pkiDir, 'client', 'rejected');
    const trusted = join(pkiDir, 'client', 'trusted', 'certs');
    mkdirSync(trusted, { recursive: true });
    for (const cert of readdirSync(rejected)) renameSync(join(rejected, cert), join(trusted, cert));
    // Within the backoff's steps (0.5 s doubling), not an hour, the gateway connects.
    expect(await readWithin(driver, 20_000)).not.toBeNull();
  }, 45_000);
});

/**
 * A PLC that restarts with another certificate (a firmware update, a new PKI): node-opcua's
 * reconnection retries a refused certificate at once, without its backoff.
 */
describe('OPC UA server back with a certificate the gateway does not trust', () => {
  it('says so, retries at the backoff pace, and connects once an operator trusts it', async () => {
    const plantConfig = (port: number): PlantInput => ({
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
    const first = tempDir('sluice-sim-pki-');
    const second = tempDir('sluice-sim-pki-');
    cleanups.push(first.cleanup, second.cleanup);
    let p = await startPlant(plantConfig(0), {
      ephemeralPorts: true,
      control: false,
      pkiDir: first.dir,
    });
    const stopPlant = () => p.stop();
    cleanups.push(() => stopPlant());
    const e = p.plc('ua').endpoint;
    if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
    const port = Number(new URL(e.endpointUrl).port);
    // The gateway reaches the PLC through a link that counts its connections.
    const link = await TcpLink.open({ host: '127.0.0.1', port });
    cleanups.push(() => link.close());
    // The operator trusted the PLC's first certificate.
    const { driver, pkiDir } = await secureDriver(
      `opc.tcp://127.0.0.1:${link.port}`,
      e.namespaceUri,
      cleanups,
      {
        before: (pkiDir) => {
          const trusted = join(pkiDir, 'client', 'trusted', 'certs');
          mkdirSync(trusted, { recursive: true });
          copyFileSync(
            join(first.dir, 'ua', 'pki', 'own', 'certs', 'certificate.pem'),
            join(trusted, 'first.pem'),
          );
        },
      },
    );
    expect(await readWithin(driver, 20_000)).not.toBeNull();

    // The PLC restarts on the same port with a new certificate.
    await p.stop();
    p = await startPlant(plantConfig(port), { control: false, pkiDir: second.dir });

    // The reason reaches the device's health (and /readyz): the certificate is not trusted.
    const end = Date.now() + 20_000;
    while (!/is not trusted: it was put in/.test(driver.health().lastError ?? '')) {
      if (Date.now() > end) throw new Error(`no refusal: ${driver.health().lastError}`);
      await new Promise((r) => setTimeout(r, 50));
    }
    // Later attempts follow the backoff (0.5 s, then doubling), not one at once after another:
    // the next three connections through the link (one an attempt) take more than a second,
    // reads asking for the connection all the while.
    const from = link.accepted;
    const since = Date.now();
    while (link.accepted < from + 3) {
      await driver.read().catch(() => undefined);
      await new Promise((r) => setTimeout(r, 10));
    }
    expect(Date.now() - since).toBeGreaterThan(1_000);

    // The operator trusts the new certificate: the gateway connects.
    const rejected = join(pkiDir, 'client', 'rejected');
    const trusted = join(pkiDir, 'client', 'trusted', 'certs');
    for (const cert of readdirSync(rejected)) renameSync(join(rejected, cert), join(trusted, cert));
    expect(await readWithin(driver, 30_000)).toBe('CLOSED');
  }, 90_000);
});

/**
 * trusted/certs/ is the operator's decision. A copy of the same certificate left in rejected/
 * (copied to trusted/ instead of moved, or put back there by a connection attempt while the
 * operator moved it) must not keep the PLC refused; a certificate taken out of trusted/ must not
 * stay trusted.
 */
describe('OPC UA server certificate trust and the PKI folders', () => {
  it('one an operator copied to trusted/ rather than moved is trusted; the refused copy is removed', async () => {
    const { driver, pkiDir } = await linkedDriver(plant, cleanups);
    await untrusted(driver);
    const rejected = join(pkiDir, 'client', 'rejected');
    const trusted = join(pkiDir, 'client', 'trusted', 'certs');
    const certs = readdirSync(rejected);
    expect(certs).toHaveLength(1);
    // Copied under a name of the operator's: the same certificate, another file.
    copyFileSync(join(rejected, certs[0]!), join(trusted, 'plc-ua.pem'));
    expect(await readWithin(driver, 20_000)).not.toBeNull();
    expect(await writeLands(plant, driver)).toBe(true);
    // The operator's file stays; the refused copy is gone.
    expect(readdirSync(trusted)).toEqual(['plc-ua.pem']);
    expect(readdirSync(rejected)).toEqual([]);
  }, 60_000);

  it('a refused copy the gateway cannot remove is named in the refusal, and the PLC stays refused', async (ctx) => {
    const { driver, pkiDir } = await linkedDriver(plant, cleanups);
    await untrusted(driver);
    const rejected = join(pkiDir, 'client', 'rejected');
    const trusted = join(pkiDir, 'client', 'trusted', 'certs');
    const [cert] = readdirSync(rejected);
    const copy = join(rejected, cert!);
    // An immutable file: one the gateway's user (root here) cannot remove. The file system
    // decides whether it can be made so: where it cannot, skipped with why, and a failure under
    // SLUICE_REQUIRE_REAL=1.
    try {
      execFileSync('chattr', ['+i', copy], { stdio: 'ignore' });
    } catch {
      const what = `an immutable file (chattr +i ${copy})`;
      realComponent(what, false, 'root, on a file system with the flag: ext4, xfs; not tmpfs');
      ctx.skip(`${what} is not available`);
    }
    cleanups.push(() => {
      execFileSync('chattr', ['-i', copy], { stdio: 'ignore' });
    });
    copyFileSync(copy, join(trusted, 'plc-ua.pem'));
    const errors = driver.health().errorCount;
    const end = Date.now() + 20_000;
    const named = (): boolean =>
      driver.health().errorCount > errors &&
      (driver.health().lastError ?? '').includes(`'${copy}'`);
    while (!named()) {
      if (Date.now() > end)
        throw new Error(`no refusal naming the copy: ${driver.health().lastError}`);
      await driver.read().catch(() => undefined);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(driver.health().lastError).toMatch(
      /is not trusted: \S+trusted\/certs holds it, but so does '.+', which the gateway could not remove; remove it to trust the certificate/,
    );
    expect(await writeLands(plant, driver)).toBe(false);
  }, 60_000);

  it('one removed from trusted/ while the session is up is refused at the next connection', async () => {
    const { driver, link, pkiDir } = await linkedDriver(plant, cleanups);
    await untrusted(driver);
    const rejected = join(pkiDir, 'client', 'rejected');
    const trusted = join(pkiDir, 'client', 'trusted', 'certs');
    const [cert] = readdirSync(rejected);
    renameSync(join(rejected, cert!), join(trusted, cert!));
    expect(await readWithin(driver, 20_000)).not.toBeNull();
    // The operator revokes it; the connection drops and is made again.
    rmSync(join(trusted, cert!));
    const from = link.accepted;
    const errors = driver.health().errorCount;
    link.down();
    link.up();
    const refusal = await untrusted(driver, errors);
    expect(link.accepted).toBeGreaterThan(from);
    expect(refusal).toMatch(/is not trusted/);
    expect(await writeLands(plant, driver)).toBe(false);
    // Put in rejected/ again, for the operator to see.
    expect(readdirSync(rejected)).toHaveLength(1);
  }, 60_000);
});
