import { afterEach, describe, expect, it } from 'vitest';
import type { ClockPolicy } from '../../src/core/lane.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * SPEC §6: a controller clock flagged beyond its bound is flagged on an estimate, and the flag
 * stands no longer than the estimate does. After a reconnect (the controller may have restarted
 * with its clock set right) the clock is measured again before anything is judged by it; when
 * it cannot be read, nothing is known of it, and a write is not refused CLOCK_SKEW for an
 * offset it had on the connection before — a clock step must cause no false failure.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

const bounded: ClockPolicy = {
  onUnsynced: 'reject',
  maxControllerSkewMs: () => 1_000,
  gateway: null,
};

describe('a controller clock flag that no longer stands (SPEC §6)', () => {
  it('flagged 5 s off, then the PLC restarts with its clock right and the clock cannot be read: the write runs', async () => {
    h = await SimHarness.start({ clockPolicy: bounded });
    const plc = h.plant.plc('mb');
    plc.setFault({ kind: 'clock', offsetMs: 5_000 });
    h.submit('k1', { device: 'v1', action: 'open' });
    expect(await h.settled('k1')).toMatchObject({ state: 'rejected', code: 'CLOCK_SKEW' });
    expect(h.pipeline.device('v1')?.clockOff).not.toBeNull();

    // The PLC restarts, its clock set right; its clock register can no longer be read. A
    // double for that read alone: the simulator refuses a PLC's reads all together, status
    // reads included, and a command needs those.
    const binding = h.drivers.bindings.find((b) => b.id === 'v1')!;
    Object.defineProperty(binding.driver, 'readClock', {
      configurable: true,
      value: () => Promise.reject(new Error('Modbus exception 2 (illegal data address)')),
    });
    const connections = plc.connectionsAccepted;
    plc.powerCycle({ clockOffsetMs: 0 });

    h.submit('k2', { device: 'v1', action: 'open' });
    const r = await h.settled('k2');
    expect(r, JSON.stringify(r)).toMatchObject({ state: 'confirmed' });
    expect(plc.connectionsAccepted).toBeGreaterThan(connections);
    // Ground truth: the write reached the controller once, and the valve is open.
    expect(h.device('v1').writeLog.map((w) => w.seq)).toEqual([r.seq]);
    expect(h.device('v1').state).toBe('OPEN');
    expect(h.pipeline.device('v1')?.clockOff).toBeNull();
    // The history records the clocks the write was judged on: not the skew of before.
    expect(h.notes('k2').join('\n')).toMatch(/dispatched: seq \d+; .*controller skew unknown/);
  });
});
