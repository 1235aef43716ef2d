import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { WriteNotSentError } from '../../src/core/driver.js';
import { silentLogger } from '../../src/core/logger.js';
import { buildDrivers, type Drivers } from '../../src/drivers/inventory.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { releaseClientPki } from '../simulators/opcua-client.js';

/**
 * I3 in the drivers: a command's write that waits for its controller (Modbus: behind another
 * request on the PLC's connection; OPC UA: its trigger behind the code and setpoint) is not sent
 * once its deadline has passed. The gateway's wall clock stepped back meanwhile (an operator,
 * a time daemon) must not give the write its time again: the drivers count the time left on the
 * monotonic clock as well (CommandWrite.timeLeftMs). On sluice-sim, whose write counters are the
 * ground truth: the controller receives nothing of it.
 */

const PLANT = {
  control: { host: '127.0.0.1' as const, port: 0 },
  plcs: {
    mb: {
      protocol: 'modbus' as const,
      host: '127.0.0.1',
      port: 0,
      scanMs: 10,
      devices: { 'mb-valve': { profile: 'valve' as const, base: 0, travelMs: 100 } },
    },
    ua: {
      protocol: 'opcua' as const,
      host: '127.0.0.1',
      port: 0,
      scanMs: 10,
      devices: { 'ua-valve': { profile: 'valve' as const, travelMs: 100 } },
    },
  },
};

/** The gateway's wall clock, which the test steps; the monotonic clock is the system's. */
const shift = { wallMs: 0 };
const stepped: Clock = { ...systemClock, now: () => Date.now() + shift.wallMs };

let plant: Plant;
let drivers: Drivers;
let cleanupPki: () => void;

beforeAll(async () => {
  plant = await startPlant(PLANT, { ephemeralPorts: true });
  const pki = tempDir('sluice-pki-');
  cleanupPki = pki.cleanup;
  drivers = await buildDrivers({
    inventory: inventoryFor(plant),
    profiles: PROFILES,
    pkiDir: pki.dir,
    acceptUnknownCertificates: true,
    clock: stepped,
    logger: silentLogger,
  });
  drivers.start();
  // Both connected before the tests: the OPC UA session opens in the background.
  for (const b of drivers.bindings) {
    const end = Date.now() + 20_000;
    for (;;) {
      try {
        await b.driver.read();
        break;
      } catch (error) {
        if (Date.now() > end) throw error;
        await new Promise((r) => setTimeout(r, 100));
      }
    }
  }
}, 60_000);

afterAll(async () => {
  await drivers.close();
  await plant.stop();
  cleanupPki();
  await releaseClientPki();
});

describe.each([
  // Modbus: a read of the valve held 150 ms on the PLC keeps the connection busy; the write waits
  // behind it in the queue.
  ['Modbus TCP', 'mb-valve', { kind: 'latency', ms: 150, when: 'after', on: 'read' }],
  // OPC UA: the code and setpoint's answer held 300 ms; the trigger waits for it.
  ['OPC UA', 'ua-valve', { kind: 'latency', ms: 300, when: 'after', on: 'write' }],
] as const)('%s: a write waiting for its controller past its deadline', (_name, id, fault) => {
  it('is not sent when the wall clock was stepped back meanwhile: nothing reaches the controller', async () => {
    const valve = plant.device(id);
    const driver = drivers.bindings.find((b) => b.id === id)!.driver;
    const before = valve.counters.writesReceived;
    valve.setFault(fault);
    try {
      const busy = id === 'mb-valve' ? driver.read() : Promise.resolve();
      // 50 ms left, on either clock; the wall clock then goes back ten seconds at once.
      const write = driver.write({
        action: 'open',
        position: null,
        seq: 6161,
        notAfter: stepped.now() + 50,
        timeLeftMs: 50,
      });
      shift.wallMs -= 10_000;
      await expect(write).rejects.toThrow(WriteNotSentError);
      await expect(write).rejects.toMatchObject({ reason: 'deadline' });
      await expect(write).rejects.toThrow(/its deadline passed \d+ ms ago/);
      await busy;
      // Ground truth: no command write with that number, none at all (an OPC UA write counts
      // as received with its trigger), and none later: the driver is done with it.
      expect(valve.writesWithSeq(6161)).toBe(0);
      expect(valve.counters.writesReceived).toBe(before);
    } finally {
      valve.clearFaults();
      shift.wallMs = 0;
    }
  });

  it('with time left on both clocks it goes out once, the wall clock stepped back all the same', async () => {
    const valve = plant.device(id);
    const driver = drivers.bindings.find((b) => b.id === id)!.driver;
    valve.setFault(fault);
    try {
      const busy = id === 'mb-valve' ? driver.read() : Promise.resolve();
      const write = driver.write({
        action: 'open',
        position: null,
        seq: 6262,
        notAfter: stepped.now() + 5_000,
        timeLeftMs: 5_000,
      });
      shift.wallMs -= 10_000;
      await write;
      await busy;
      expect(valve.writesWithSeq(6262)).toBe(1);
    } finally {
      valve.clearFaults();
      shift.wallMs = 0;
    }
  });
});
