import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { estimateSkew } from '../../src/core/skew.js';
import { ModbusDeviceDriver, ModbusEndpoint } from '../../src/drivers/modbus.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { profile } from '../helpers/fixtures.js';

/**
 * A controller clock read that waits behind other requests on the PLC's one connection (every
 * device of the PLC shares it): the skew's bracket starts when the request is sent, not when it
 * was queued, so an estimate measured on a busy connection is as tight as one measured idle.
 * On the real simulator, whose clock is set 7 s behind: the estimate must hold the true offset
 * within its own uncertainty (and the controller's whole milliseconds).
 */

const OFFSET_MS = -7_000;
let plant: Plant;
let endpoint: ModbusEndpoint;

beforeAll(async () => {
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        busy: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          scanMs: 20,
          devices: { v0: { profile: 'valve' as const, base: 0 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  plant.plc('busy').setClock({ offsetMs: OFFSET_MS, driftPpm: 0 });
  const e = plant.plc('busy').endpoint;
  if (e.protocol !== 'modbus') throw new Error('expected a Modbus PLC');
  endpoint = new ModbusEndpoint({
    name: 'busy',
    host: e.host,
    port: e.port,
    unitId: e.unitId,
    requestTimeoutMs: 2000,
    // One request per read, so that the reads queued ahead of the clock read take their time.
    combineReads: { enabled: false, maxGap: 16 },
    clock: systemClock,
    logger: silentLogger,
  });
});

afterAll(async () => {
  await endpoint.close();
  await plant.stop();
});

describe('Modbus clock read behind a busy queue', () => {
  it('brackets the skew from the request sent, not from the read queued', async () => {
    const driver = new ModbusDeviceDriver({
      id: 'v0',
      profile: profile('valve'),
      endpoint,
      base: 0,
      clock: systemClock,
    });
    if (driver.readClock === undefined) throw new Error('the valve profile maps a clock');
    // Connected first, so that the connection's set-up is no part of the queue's wait.
    await driver.read();
    const ahead = Array.from({ length: 60 }, () => driver.read());
    const requestedMono = systemClock.elapsed();
    const sample = await driver.readClock();
    const receivedMono = systemClock.elapsed();
    await Promise.all(ahead);

    // The clock read waited behind the 60 reads: its whole bracket is mostly that wait.
    const queued = sample.queuedMs ?? 0;
    expect(queued).toBeGreaterThan((receivedMono - requestedMono) / 2);
    expect(queued).toBeLessThanOrEqual(receivedMono - requestedMono);
    const skew = estimateSkew(sample, { requestedMono, receivedMono }, 1);
    expect(skew.uncertaintyMs).toBeCloseTo((receivedMono - requestedMono - queued) / 2, 6);
    expect(skew.uncertaintyMs).toBeLessThan((receivedMono - requestedMono) / 2);
    // Ground truth: the simulator's clock runs OFFSET_MS from this machine's, stamped in whole
    // milliseconds. The estimate's window holds it.
    expect(Math.abs(skew.offsetMs - OFFSET_MS)).toBeLessThanOrEqual(skew.uncertaintyMs + 1);

    // Without the wait the same sample's window is wider by it, never narrower.
    const unnarrowed = estimateSkew(
      {
        controllerTime: sample.controllerTime,
        requestedAt: sample.requestedAt,
        receivedAt: sample.receivedAt,
      },
      { requestedMono, receivedMono },
      1,
    );
    expect(unnarrowed.uncertaintyMs).toBeCloseTo(skew.uncertaintyMs + queued / 2, 6);
  });
});
