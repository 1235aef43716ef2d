import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseCommandRequest } from '../../src/core/command.js';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { CommandPipeline } from '../../src/core/pipeline.js';
import {
  buildDrivers,
  inventorySchema,
  shareConnections,
  type Drivers,
  type Inventory,
} from '../../src/drivers/inventory.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from '../helpers/fixtures.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { SIM_TIMING } from '../helpers/sim-harness.js';

/**
 * A Modbus PLC given two connections (plcs.<name>.connections), on the real simulator, the
 * daemon's own inventory code and a pipeline on a real journal file. The simulator notes which
 * client connection wrote each device's registers (SimDevice.writers): the ground truth for
 * which connection carries a device.
 */

/** Listed out of address order: the sharing goes by `base`, not by the order of the file. */
const BASES: Record<string, number> = { d: 300, a: 0, c: 200, b: 100, e: 400 };

let plant: Plant;
let drivers: Drivers;
let journal: SqliteJournal;
let pipeline: CommandPipeline;
let cleanup: () => void;

beforeAll(async () => {
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          scanMs: 5,
          devices: Object.fromEntries(
            Object.entries(BASES).map(([id, base]) => [
              id,
              { profile: 'valve' as const, base, travelMs: 0 },
            ]),
          ),
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const inventory = inventoryFor(plant);
  const mb = inventory.plcs.mb;
  if (mb?.protocol !== 'modbus') throw new Error('expected the Modbus PLC');
  inventory.plcs.mb = { ...mb, connections: 2, requestTimeoutMs: 250 };
  const dir = tempDir('sluice-connections-');
  cleanup = dir.cleanup;
  journal = SqliteJournal.open({ path: join(dir.dir, 'journal.db'), groupCommit: true });
  drivers = await buildDrivers({
    inventory,
    profiles: PROFILES,
    pkiDir: join(dir.dir, 'pki'),
    acceptUnknownCertificates: false,
    clock: systemClock,
    logger: silentLogger,
  });
  pipeline = new CommandPipeline({
    journal,
    devices: drivers.bindings.map((b) => ({ ...b, profile: { ...b.profile, timing: SIM_TIMING } })),
    clock: systemClock,
    logger: silentLogger,
    freshness: { maxIssuerSkewMs: 5_000 },
  });
});

afterAll(async () => {
  await pipeline.stop(0);
  await drivers.close();
  journal.close();
  await plant.stop();
  cleanup();
});

describe('a Modbus PLC with two connections', () => {
  it('carries each device on one connection, neighbours in address order together', async () => {
    expect(drivers.modbus.map((e) => e.name)).toEqual(['mb#1', 'mb#2']);
    const ids = Object.keys(BASES);
    for (const id of ids) {
      const claim = pipeline.submit({
        key: `k-${id}`,
        identity: { scope: 'plant', devices: 'all' },
        intake: 'https',
        request: parseCommandRequest({ device: id, action: 'open' }),
      });
      expect(claim.kind).toBe('new');
    }
    for (const id of ids) {
      const record = await pipeline.waitForSettled({ scope: 'plant', key: `k-${id}` }, 10_000);
      expect({ id, state: record?.state }).toEqual({ id, state: 'confirmed' });
    }
    // Ground truth: one write per command, and which connection wrote it.
    const writers: Record<string, string[]> = {};
    for (const id of ids) {
      const device = plant.device(id);
      expect({ id, writes: device.counters.writesReceived }).toEqual({ id, writes: 1 });
      writers[id] = device.writers;
    }
    for (const id of ids)
      expect({ id, connections: writers[id]?.length }).toEqual({ id, connections: 1 });
    const peer = (id: string): string => writers[id]?.[0] ?? '';
    // By base: a 0, b 100, c 200 | d 300, e 400 (five shared as equal as they divide: 3 and 2).
    expect(new Set([peer('a'), peer('b'), peer('c')]).size).toBe(1);
    expect(new Set([peer('d'), peer('e')]).size).toBe(1);
    expect(peer('a')).not.toBe(peer('d'));
  });

  it('has each connection time out on its own: the other carries its devices meanwhile', async () => {
    // The PLC drops every read of `a` unanswered, as a stalled link would: `a`'s command waits
    // on the first connection (each read timing out there), and the second connection's
    // device `e` is commanded meanwhile.
    const a = plant.device('a');
    a.setFault({ kind: 'drop', on: 'read', count: 1_000_000 });
    const health = (id: string) => {
      const binding = drivers.bindings.find((b) => b.id === id);
      if (binding === undefined) throw new Error(`no device ${id}`);
      return binding.driver.health();
    };
    try {
      pipeline.submit({
        key: 'k-a-2',
        identity: { scope: 'plant', devices: 'all' },
        intake: 'https',
        request: parseCommandRequest({ device: 'a', action: 'close' }),
      });
      const timedOut = Date.now() + 5_000;
      while (!/timed out/i.test(health('a').lastError ?? '')) {
        if (Date.now() > timedOut) throw new Error('the first connection never timed out');
        await new Promise((r) => setTimeout(r, 10));
      }
      const errorsOnE = health('e').errorCount;
      pipeline.submit({
        key: 'k-e-2',
        identity: { scope: 'plant', devices: 'all' },
        intake: 'https',
        request: parseCommandRequest({ device: 'e', action: 'close' }),
      });
      const e = await pipeline.waitForSettled({ scope: 'plant', key: 'k-e-2' }, 10_000);
      expect(e?.state).toBe('confirmed');
      // `a` is still waiting for a read: the device, its command and its connection's error.
      expect(pipeline.get({ scope: 'plant', key: 'k-a-2' })?.state).toBe('accepted');
      expect(health('a').lastError).toMatch(/^mb#1: read .*timed out/i);
      // The second connection saw none of it.
      expect(health('e').errorCount).toBe(errorsOnE);
      expect(plant.device('e').counters.writesReceived).toBe(2);
      expect(a.counters.writesReceived).toBe(1);
    } finally {
      a.clearFaults();
    }
    const settled = await pipeline.waitForSettled({ scope: 'plant', key: 'k-a-2' }, 10_000);
    expect(settled?.state).toBe('confirmed');
    expect(a.counters.writesReceived).toBe(2);
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
        q1: { plc: 'q', profile: 'valve', base: 0 },
      },
    });
    const built = await buildDrivers({
      inventory,
      profiles: PROFILES,
      pkiDir: '/nonexistent',
      acceptUnknownCertificates: false,
      clock: systemClock,
      logger: silentLogger,
    });
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
