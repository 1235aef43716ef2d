import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { buildDrivers } from '../../src/drivers/inventory.js';
import { startPlant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

it('reaches an OPC UA PLC although a killed process left its PKI lock behind', async () => {
  const plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        ua: {
          protocol: 'opcua',
          host: '127.0.0.1',
          port: 0,
          devices: { 'ua-valve': { profile: 'valve' } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const { dir, cleanup } = tempDir();
  // What node-opcua-pki leaves when a process dies holding the store's lock, and while it
  // creates its certificate.
  mkdirSync(join(dir, 'client', 'mutex.lock'), { recursive: true });
  mkdirSync(join(dir, 'client', 'own', 'certs', 'client_certificate.pem.mutex.lock'), {
    recursive: true,
  });
  const drivers = await buildDrivers({
    inventory: inventoryFor(plant),
    profiles: PROFILES,
    pkiDir: dir,
    acceptUnknownCertificates: true,
    clock: systemClock,
    logger: silentLogger,
  });
  try {
    drivers.start();
    const end = Date.now() + 15_000;
    let state: string | null = null;
    while (state === null && Date.now() < end) {
      try {
        state = (await drivers.bindings[0]!.driver.read()).state;
      } catch {
        await new Promise((r) => setTimeout(r, 100));
      }
    }
    expect(state).toBe('CLOSED');
  } finally {
    await drivers.close();
    await plant.stop();
    cleanup();
  }
}, 30_000);
