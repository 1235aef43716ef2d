import { copyFileSync, mkdirSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { OPCUACertificateManager } from 'node-opcua';
import { afterAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import type { DeviceDriver } from '../../src/core/driver.js';
import { silentLogger } from '../../src/core/logger.js';
import { buildDrivers } from '../../src/drivers/inventory.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import {
  plcCertificate,
  readWithin,
  secureDriver,
  writeLands,
  type Cleanups,
} from './opcua-trust.js';

/**
 * An OPC UA endpoint URL whose host is an IPv6 address (`opc.tcp://[::1]:port`) reaches its
 * PLC, with security None and SignAndEncrypt: node-opcua's own transport handed the socket the
 * host with its brackets, and every connection failed (`getaddrinfo ENOTFOUND [::1]`). The
 * endpoint URL stays the one configured: it is what the server is given in the HEL message, and
 * what the server certificate's host name check reads (a certificate not naming ::1 is refused).
 * A PLC that drops its connections is reached again.
 *
 * Real parts: sluice-sim's OPC UA PLC listening on ::1, the real driver and its PKI folder, a TCP
 * relay on ::1 in front of the PLC that reads the HEL messages it passes on. Ground truth: the
 * simulator's count of the writes it received and its write log, the HEL messages on the wire.
 */

const cleanups: Cleanups = [];

afterAll(async () => {
  for (const c of cleanups.reverse()) await c();
});

/**
 * A TCP relay on ::1 to `port` on ::1 that keeps the EndpointUrl of every HEL message a client
 * sends (OPC 10000-6, 7.1.2.3: the message header, five UInt32, then the String).
 */
class HelloRelay {
  readonly endpointUrls: string[] = [];
  private readonly sockets = new Set<Socket>();
  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async open(port: number): Promise<HelloRelay> {
    const holder: { relay: HelloRelay | null } = { relay: null };
    const server = createServer((inbound) => {
      const relay = holder.relay!;
      const outbound = createConnection({ host: '::1', port });
      relay.sockets.add(inbound).add(outbound);
      const close = (): void => {
        inbound.destroy();
        outbound.destroy();
      };
      inbound.on('error', close).on('close', close);
      outbound.on('error', close).on('close', close);
      inbound.once('data', (first: Buffer) => {
        if (first.subarray(0, 3).toString('latin1') === 'HEL' && first.length >= 32) {
          const length = first.readInt32LE(28);
          relay.endpointUrls.push(first.subarray(32, 32 + length).toString('utf8'));
        }
      });
      inbound.pipe(outbound);
      outbound.pipe(inbound);
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '::1', resolve);
    });
    const address = server.address();
    const relay = new HelloRelay(
      server,
      typeof address === 'object' && address !== null ? address.port : 0,
    );
    holder.relay = relay;
    return relay;
  }

  get endpointUrl(): string {
    return `opc.tcp://[::1]:${this.port}`;
  }

  async close(): Promise<void> {
    for (const s of this.sockets) s.destroy();
    await new Promise<void>((resolve) => {
      this.server.close(() => {
        resolve();
      });
    });
  }
}

/** sluice-sim's OPC UA PLC `ua` (valve `ua-valve`) on ::1, None and SignAndEncrypt. */
async function plantOnIpv6(simPki: string): Promise<Plant> {
  const plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        ua: {
          protocol: 'opcua',
          host: '::1',
          port: 0,
          securityModes: ['None', 'SignAndEncrypt'],
          devices: { 'ua-valve': { profile: 'valve' } },
        },
      },
    },
    { ephemeralPorts: true, control: false, pkiDir: simPki },
  );
  cleanups.push(() => plant.stop());
  return plant;
}

/** The relay in front of `plant`'s PLC; the PLC's endpoint URL is an IPv6 one. */
async function relayTo(plant: Plant): Promise<{ relay: HelloRelay; namespaceUri: string }> {
  const e = plant.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  expect(e.endpointUrl).toMatch(/^opc\.tcp:\/\/\[::1\]:\d+$/);
  const relay = await HelloRelay.open(Number(new URL(e.endpointUrl).port));
  cleanups.push(() => relay.close());
  return { relay, namespaceUri: e.namespaceUri };
}

/** A folder of its own, removed at the end. */
function folder(prefix: string): string {
  const { dir, cleanup } = tempDir(prefix);
  cleanups.push(cleanup);
  return dir;
}

/** A write with `seq` that the driver sends, within `ms` (the link coming back meanwhile). */
async function writeWithin(driver: DeviceDriver, seq: number, ms: number): Promise<void> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      await driver.write({ action: 'open', position: null, seq });
      return;
    } catch (error) {
      if (Date.now() > end) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

describe('OPC UA endpoint URL with an IPv6 address', () => {
  it('security None: reads and writes reach the PLC, again after it dropped its connections', async () => {
    const plant = await plantOnIpv6(folder('sluice-sim-pki-'));
    const { relay } = await relayTo(plant);
    const inventory = inventoryFor(plant);
    const plc = inventory.plcs['ua'];
    if (plc?.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
    inventory.plcs['ua'] = { ...plc, endpointUrl: relay.endpointUrl, requestTimeoutMs: 2000 };
    const drivers = await buildDrivers({
      inventory,
      profiles: PROFILES,
      pkiDir: folder('sluice-pki-'),
      acceptUnknownCertificates: false,
      clock: systemClock,
      logger: silentLogger,
    });
    cleanups.push(() => drivers.close());
    drivers.start();
    const driver = drivers.bindings[0]!.driver;

    expect(await readWithin(driver, 20_000)).toBe('CLOSED');
    expect(await writeLands(plant, driver)).toBe(true);
    // The server is given the endpoint URL as configured.
    expect(relay.endpointUrls.length).toBeGreaterThan(0);
    expect(new Set(relay.endpointUrls)).toEqual(new Set([relay.endpointUrl]));

    // The PLC's module drops off the network for a while: the link comes back, and a write
    // sent on it reaches the controller once.
    const hellos = relay.endpointUrls.length;
    plant.plc('ua').refuseConnections({ ms: 300 });
    await writeWithin(driver, 77, 20_000);
    expect(plant.device('ua-valve').writesWithSeq(77)).toBe(1);
    expect(relay.endpointUrls.length).toBeGreaterThan(hellos);
    expect(new Set(relay.endpointUrls)).toEqual(new Set([relay.endpointUrl]));
  }, 60_000);

  it('SignAndEncrypt: the trusted certificate naming ::1 is taken, and writes reach the PLC', async () => {
    const simPki = folder('sluice-sim-pki-');
    const plant = await plantOnIpv6(simPki);
    const { relay, namespaceUri } = await relayTo(plant);
    const { driver } = await secureDriver(relay.endpointUrl, namespaceUri, cleanups, {
      before: (pkiDir) => {
        const trusted = join(pkiDir, 'client', 'trusted', 'certs');
        mkdirSync(trusted, { recursive: true });
        copyFileSync(plcCertificate(simPki), join(trusted, 'plc-ua.pem'));
      },
    });
    expect(await readWithin(driver, 20_000)).toBe('CLOSED');
    expect(await writeLands(plant, driver)).toBe(true);
    expect(relay.endpointUrls.length).toBeGreaterThan(0);
    expect(new Set(relay.endpointUrls)).toEqual(new Set([relay.endpointUrl]));
  }, 60_000);

  it("SignAndEncrypt: a trusted certificate that does not name ::1 is refused, by the URL's host", async () => {
    // The PLC serves another host's certificate (plc-b.line2, 10.0.0.22), trusted.
    const simPki = folder('sluice-sim-pki-');
    const store = new OPCUACertificateManager({
      rootFolder: join(simPki, 'ua', 'pki'),
      automaticallyAcceptUnknownCertificate: true,
      disableFileWatchers: true,
    });
    await store.initialize();
    await store.createSelfSignedCertificate({
      applicationUri: 'urn:sluice-sim:ua',
      dns: ['plc-b.line2'],
      ip: ['10.0.0.22'],
      outputFile: plcCertificate(simPki),
      subject: '/CN=sluice-sim-ua',
      startDate: new Date(Date.now() - 86_400_000),
      validity: 30,
    });
    await store.dispose();
    const plant = await plantOnIpv6(simPki);
    const { relay, namespaceUri } = await relayTo(plant);
    const { driver } = await secureDriver(relay.endpointUrl, namespaceUri, cleanups, {
      before: (pkiDir) => {
        const trusted = join(pkiDir, 'client', 'trusted', 'certs');
        mkdirSync(trusted, { recursive: true });
        copyFileSync(plcCertificate(simPki), join(trusted, 'plc-ua.pem'));
      },
    });
    const end = Date.now() + 20_000;
    while (!/BadCertificateHostNameInvalid/.test(driver.health().lastError ?? '')) {
      if (Date.now() > end) throw new Error(`no refusal: ${driver.health().lastError}`);
      await driver.read().catch(() => undefined);
      await new Promise((r) => setTimeout(r, 50));
    }
    expect(driver.health().lastError).toContain(
      `the server certificate of ${relay.endpointUrl} (CN=sluice-sim-ua; SHA-1 `,
    );
    expect(driver.health().lastError).toMatch(
      /is refused: it does not name ::1, the host of the endpoint URL \(it names plc-b\.line2, 10\.0\.0\.22\)/,
    );
    expect(await writeLands(plant, driver)).toBe(false);
  }, 60_000);
});
