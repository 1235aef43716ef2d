import { afterAll, beforeAll, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { buildDrivers, type Drivers } from '../../src/drivers/inventory.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * A read that finds the OPC UA session still opening waits for it (up to the request timeout),
 * as a Modbus read waits for its connection: it used to fail at once ("not connected …
 * (connecting)"), and the daemon's monitor read every OPC UA device again only a period (1 s)
 * later, at every start. On sluice-sim's OPC UA server; ground truth is the read's values
 * against the simulator's own device state.
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
          scanMs: 10,
          devices: { 'ua-valve': { profile: 'valve', travelMs: 300, travelTimeoutMs: 10_000 } },
        },
      },
    },
    { ephemeralPorts: true },
  );
}, 60_000);

afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
  await plant.stop();
});

async function drivers(): Promise<Drivers> {
  const pki = tempDir('sluice-pki-');
  cleanups.push(pki.cleanup);
  const built = await buildDrivers({
    inventory: inventoryFor(plant),
    profiles: PROFILES,
    pkiDir: pki.dir,
    acceptUnknownCertificates: true,
    clock: systemClock,
    logger: silentLogger,
  });
  cleanups.push(() => built.close());
  return built;
}

it('the first status and clock reads, made as the session begins to open, wait for it and answer', async () => {
  const d = await drivers();
  d.start();
  const valve = d.bindings.find((b) => b.id === 'ua-valve')!.driver;
  // Both at once, before the session can be open: each waits for the one session.
  const [status, clock] = await Promise.all([valve.read(), valve.readClock!()]);
  expect(status.state).toBe(plant.device('ua-valve').snapshot().state);
  expect(Math.abs(clock.controllerTime - Date.now())).toBeLessThan(60_000);
  expect(valve.health()).toMatchObject({ connected: true, errorCount: 0, lastError: null });
}, 30_000);
