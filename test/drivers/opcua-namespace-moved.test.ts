import { afterEach, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { WriteNotSentError, type DeviceDriver, type Readback } from '../../src/core/driver.js';
import { buildDrivers, type Drivers } from '../../src/drivers/inventory.js';
import { startPlant, type Plant, type PlantInput } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * An OPC UA server that restarts with its namespaces in another order (a firmware update that
 * registers another namespace before the controller's, another start order), under a gateway
 * whose client node-opcua reconnects by itself. NodeIds carry the namespace index, so the index
 * read at the first session would address every read and write after the restart to another
 * namespace's nodes, or to none. Real parts: sluice-sim's OPC UA PLC, stopped and started again
 * on the same port (the plant file's namespacesBefore), and the real driver; ground truth is the
 * restarted PLC's write log and its device's state.
 */

const OTHER_NAMESPACE = 'urn:example:plc-firmware:diagnostics';

const cleanups: (() => Promise<void> | void)[] = [];

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function plantConfig(
  port: number,
  options: { name?: string; namespacesBefore?: string[]; initialPosition?: number } = {},
): PlantInput {
  return {
    control: { host: '127.0.0.1', port: 0 },
    plcs: {
      [options.name ?? 'ua']: {
        protocol: 'opcua',
        host: '127.0.0.1',
        port,
        scanMs: 10,
        namespacesBefore: options.namespacesBefore ?? [],
        devices: {
          'ua-valve': { profile: 'valve', initialPosition: options.initialPosition ?? 0 },
        },
      },
    },
  };
}

/**
 * A plant with one OPC UA valve, the driver connected to it, and `restart`, which stops the
 * plant and starts `next` on the same port while the driver keeps its client.
 */
async function connected(): Promise<{
  driver: DeviceDriver;
  lines: Record<string, unknown>[];
  port: number;
  restart: (next: (port: number) => PlantInput) => Promise<Plant>;
}> {
  let plant = await startPlant(plantConfig(0), { ephemeralPorts: true, control: false });
  cleanups.push(() => plant.stop());
  const e = plant.plc('ua').endpoint;
  if (e.protocol !== 'opcua') throw new Error('expected an OPC UA PLC');
  const port = Number(new URL(e.endpointUrl).port);
  const pki = tempDir('sluice-pki-');
  cleanups.push(pki.cleanup);
  const { logger, lines } = recordingLogger();
  const drivers: Drivers = await buildDrivers({
    inventory: inventoryFor(plant),
    profiles: PROFILES,
    pkiDir: pki.dir,
    acceptUnknownCertificates: true,
    clock: systemClock,
    logger,
  });
  cleanups.push(() => drivers.close());
  drivers.start();
  const driver = drivers.bindings[0]!.driver;
  await readWithin(driver, () => true, 20_000);
  return {
    driver,
    lines,
    port,
    restart: async (next) => {
      await plant.stop();
      plant = await startPlant(next(port), { control: false });
      return plant;
    },
  };
}

/** The first readback that `until` accepts; the last error past `ms`. */
async function readWithin(
  driver: DeviceDriver,
  until: (r: Readback) => boolean,
  ms: number,
): Promise<Readback> {
  const end = Date.now() + ms;
  for (;;) {
    try {
      const r = await driver.read();
      if (until(r)) return r;
      if (Date.now() > end) throw new Error(`readback never matched: ${JSON.stringify(r)}`);
    } catch (error) {
      if (Date.now() > end) throw error;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

it('a server back with its namespace at another index is read and written at the new one', async () => {
  const { driver, lines, port, restart } = await connected();
  // The PLC restarts with another namespace registered first: the controller's moves from
  // index 1 to 2. Its valve stands at 40 %, where the first PLC's stood at 0.
  const plant = await restart((port) =>
    plantConfig(port, { namespacesBefore: [OTHER_NAMESPACE], initialPosition: 40 }),
  );
  const device = plant.device('ua-valve');
  // Once node-opcua has reconnected (a new session: the server lost the old one), reads return
  // the restarted PLC's valve.
  const back = await readWithin(driver, () => true, 20_000);
  expect(back.position).toBe(device.position);
  expect(back.position).toBe(40);
  expect(back.state).toBe(device.state);
  // A command written now reaches the valve's own nodes: one write, taken.
  await driver.write({ action: 'open', position: null, seq: 7 });
  const moving = await readWithin(driver, (r) => r.seq === 7, 5_000);
  expect(moving.state).toBe(device.published.state);
  const writes = device.writeLog;
  expect(writes).toHaveLength(1);
  expect(writes[0]).toMatchObject({ seq: 7, outcome: 'accepted' });
  // The change was said, with the endpoint.
  const changed = lines.filter(
    (l) => l.msg === 'opc ua namespace index changed on the new session; the new one is used',
  );
  expect(changed.map((l) => [l.level, l.was, l.now, l.endpointUrl])).toEqual([
    [40, 1, 2, `opc.tcp://127.0.0.1:${port}`],
  ]);
}, 45_000);

it('a server back without the controller namespace gets no write, and the reason is the device health', async () => {
  const { driver, restart } = await connected();
  // Another program on the same address: its namespace is not the controller's (urn:sluice:sim:other).
  const plant = await restart((port) => plantConfig(port, { name: 'other' }));
  const end = Date.now() + 20_000;
  while (!/has no namespace urn:sluice:sim:ua/.test(driver.health().lastError ?? '')) {
    if (Date.now() > end) throw new Error(`no reason given: ${driver.health().lastError}`);
    await driver.read().catch(() => undefined);
    await new Promise((r) => setTimeout(r, 50));
  }
  // Reads fail with the reason (what the device view and /readyz give), and a write is not sent.
  const refused = await driver.read().then(
    () => null,
    (error: unknown) => error,
  );
  expect(refused).toMatchObject({ code: 'DEVICE_UNREACHABLE' });
  expect(String(refused)).toMatch(
    /has no namespace urn:sluice:sim:ua \(it has .*urn:sluice:sim:other/,
  );
  const write = driver.write({ action: 'open', position: null, seq: 8 });
  await expect(write).rejects.toThrow(WriteNotSentError);
  await expect(write).rejects.toMatchObject({ reason: 'no-connection' });
  // Ground truth: the server's device of the same name never received anything.
  expect(plant.device('ua-valve').counters.writesReceived).toBe(0);
}, 45_000);
