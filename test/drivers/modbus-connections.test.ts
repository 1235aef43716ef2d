import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { inventorySchema, shareConnections, type Inventory } from '../../src/drivers/inventory.js';
import { modbusDrivers } from '../helpers/plant-inventory.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A Modbus PLC given two connections (plcs.<name>.connections): the harness's pipeline on a
 * real journal file, with the daemon's own inventory code, against sluice-sim's PLC `mb` (v1 at
 * register 0, v2 at 100, a1 at 200: v1 and v2 on the first connection, a1 on the second). The
 * simulator notes which client connection wrote each device's registers (SimDevice.writers):
 * the ground truth for which connection carries a device.
 */

let h: SimHarness;

beforeAll(async () => {
  h = await SimHarness.start({ travelMs: 0, connections: 2 });
});

afterAll(async () => {
  await h.close();
});

const health = (id: string) => {
  const binding = h.drivers.bindings.find((b) => b.id === id);
  if (binding === undefined) throw new Error(`no device ${id}`);
  return binding.driver.health();
};

/** The valves open or close; the actuator moves (to 40 % on open, 70 % on close). */
const body = (id: string, action: 'open' | 'close') =>
  id === 'a1'
    ? { device: id, action: 'move', position: action === 'open' ? 40 : 70 }
    : { device: id, action };

describe('a Modbus PLC with two connections', () => {
  it('carries each device on one connection, neighbours in address order together', async () => {
    expect(h.drivers.modbus.map((e) => e.name)).toEqual(['mb#1', 'mb#2']);
    const ids = ['v1', 'v2', 'a1'];
    for (const id of ids) expect(h.submit(`k-${id}`, body(id, 'open')).kind).toBe('new');
    for (const id of ids) {
      const record = await h.settled(`k-${id}`);
      expect({ id, state: record.state }).toEqual({ id, state: 'confirmed' });
    }
    // Ground truth: one write per command, and which connection wrote it.
    const writers: Record<string, string[]> = {};
    for (const id of ids) {
      const device = h.device(id);
      expect({ id, writes: device.counters.writesReceived }).toEqual({ id, writes: 1 });
      writers[id] = device.writers;
      expect({ id, connections: device.writers.length }).toEqual({ id, connections: 1 });
    }
    const peer = (id: string): string => writers[id]?.[0] ?? '';
    expect(peer('v1')).toBe(peer('v2'));
    expect(peer('a1')).not.toBe(peer('v1'));
  });

  it('has each connection time out on its own: the other carries its devices meanwhile', async () => {
    // The PLC drops every read of v1 unanswered, as a stalled link would: v1's command waits
    // on the first connection (each read timing out there), and the second connection's
    // device a1 is commanded meanwhile.
    const v1 = h.device('v1');
    v1.setFault({ kind: 'drop', on: 'read', count: 1_000_000 });
    try {
      h.submit('k-v1-2', body('v1', 'close'));
      const timedOut = Date.now() + 5_000;
      while (!/timed out/i.test(health('v1').lastError ?? '')) {
        if (Date.now() > timedOut) throw new Error('the first connection never timed out');
        await new Promise((r) => setTimeout(r, 10));
      }
      const errorsOnA1 = health('a1').errorCount;
      h.submit('k-a1-2', body('a1', 'close'));
      expect((await h.settled('k-a1-2')).state).toBe('confirmed');
      // v1 is still waiting for a read: its command, and its connection's error.
      expect(h.pipeline.get({ scope: 'plant', key: 'k-v1-2' })?.state).toBe('accepted');
      expect(health('v1').lastError).toMatch(/^mb#1: read .*timed out/i);
      // The second connection saw none of it.
      expect(health('a1').errorCount).toBe(errorsOnA1);
      expect(h.device('a1').counters.writesReceived).toBe(2);
      expect(v1.counters.writesReceived).toBe(1);
    } finally {
      v1.clearFaults();
    }
    expect((await h.settled('k-v1-2')).state).toBe('confirmed');
    expect(v1.counters.writesReceived).toBe(2);
  });
});

describe('plcs.<name>.connections', () => {
  const plc = { protocol: 'modbus', host: '10.0.0.20', port: 502 } as const;

  it('takes 1 to 8, and is left out when omitted', () => {
    const parse = (connections: unknown) =>
      inventorySchema.safeParse({ plcs: { p: { ...plc, connections } }, devices: {} });
    expect(inventorySchema.parse({ plcs: { p: plc }, devices: {} }).plcs.p).not.toHaveProperty(
      'connections',
    );
    expect(parse(1).success).toBe(true);
    expect(parse(8).success).toBe(true);
    for (const bad of [0, 9, 1.5, '2'])
      expect({ bad, ok: parse(bad).success }).toEqual({ bad, ok: false });
  });

  it('opens no more connections than the PLC has devices', async () => {
    const inventory = inventorySchema.parse({
      plcs: { p: { ...plc, connections: 4 }, q: { ...plc, connections: 3 } },
      devices: {
        p1: { plc: 'p', profile: 'valve', base: 0 },
        p2: { plc: 'p', profile: 'valve', base: 20 },
        // The same controller under a second name: another valve (one valve, one PLC entry).
        q1: { plc: 'q', profile: 'valve', base: 40 },
      },
    });
    const built = await modbusDrivers(inventory);
    try {
      expect(built.modbus.map((e) => e.name)).toEqual(['p#1', 'p#2', 'q']);
    } finally {
      await built.close();
    }
  });

  it('shares devices in address order, as equal as they divide', () => {
    const inventory: Inventory = {
      plcs: { p: { ...plc, unitId: 1, requestTimeoutMs: 1000 } },
      devices: Object.fromEntries(
        ['x3', 'x0', 'x2', 'x1'].map((id) => [
          id,
          { plc: 'p', profile: 'valve', base: Number(id[1]) * 20 },
        ]),
      ),
    };
    const shared = shareConnections(inventory, new Map([['p', ['#1', '#2', '#3']]]));
    expect(Object.fromEntries([...shared].sort())).toEqual({
      x0: '#1',
      x1: '#1',
      x2: '#2',
      x3: '#3',
    });
  });
});
