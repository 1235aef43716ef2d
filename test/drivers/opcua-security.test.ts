import { existsSync, readdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import type { DeviceDriver } from '../../src/core/driver.js';
import { pino } from 'pino';
import { silentLogger } from '../../src/core/logger.js';
import { buildDrivers, type Drivers, type Inventory } from '../../src/drivers/inventory.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';

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
): Promise<{ drivers: Drivers; pkiDir: string }> {
  const e = plant.plc('ua').endpoint;
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

async function readWithin(driver: DeviceDriver, ms: number): Promise<string | null> {
  const end = Date.now() + ms;
  while (Date.now() < end) {
    try {
      return (await driver.read()).state;
    } catch {
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return null;
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
    expect(await readWithin(driver, 4_000)).toBeNull();
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
