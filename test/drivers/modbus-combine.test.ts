import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { DeviceRefusedError, DeviceUnreachableError } from '../../src/core/driver.js';
import { silentLogger, type Logger } from '../../src/core/logger.js';
import { inventorySchema } from '../../src/drivers/inventory.js';
import {
  ModbusDeviceDriver,
  ModbusEndpoint,
  UNCOMBINED_FIRST_MS,
  UNCOMBINED_MAX_MS,
  type ModbusEndpointOptions,
} from '../../src/drivers/modbus.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { profile } from '../helpers/fixtures.js';
import { modbusDrivers } from '../helpers/plant-inventory.js';

/**
 * Block reads on the real simulator. Two PLCs: `flat` reads unmapped registers as 0 (one flat
 * memory area, so block reads across devices go through), `strict` refuses any read that
 * touches an unmapped register with exception 02 (between two valves' status blocks there
 * are always some). Scans are manual and run once: every image is fixed, so a read gives the
 * same words alone or as part of a block.
 */

const FLAT_VALVES = 10;
/** Flat valves sit 16 registers apart: status 0..7, command 10..12 from each base. */
const FLAT_SPACING = 16;
const STRICT_VALVES = 4;
const STRICT_SPACING = 20;

let plant: Plant;
const endpoints: ModbusEndpoint[] = [];

beforeAll(async () => {
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        flat: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          unmappedReads: 'zero',
          devices: Object.fromEntries(
            Array.from({ length: FLAT_VALVES }, (_, i) => [
              `f${i}`,
              { profile: 'valve' as const, base: i * FLAT_SPACING, initialPosition: i * 10 },
            ]),
          ),
        },
        strict: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: Object.fromEntries(
            Array.from({ length: STRICT_VALVES }, (_, i) => [
              `s${i}`,
              { profile: 'valve' as const, base: i * STRICT_SPACING, initialPosition: i * 20 + 5 },
            ]),
          ),
        },
      },
    },
    { ephemeralPorts: true, control: false, manualScan: true },
  );
  plant.scan();
});

afterEach(async () => {
  await Promise.all(endpoints.splice(0).map((e) => e.close()));
});

afterAll(async () => {
  await plant.stop();
});

function endpoint(
  plc: 'flat' | 'strict',
  options: Partial<
    Pick<ModbusEndpointOptions, 'clock' | 'combineReads' | 'logger' | 'requestTimeoutMs'>
  > = {},
): ModbusEndpoint {
  const e = plant.plc(plc).endpoint;
  if (e.protocol !== 'modbus') throw new Error('expected a Modbus PLC');
  const created = new ModbusEndpoint({
    name: plc,
    host: e.host,
    port: e.port,
    unitId: e.unitId,
    requestTimeoutMs: 500,
    backoffInitialMs: 50,
    backoffMaxMs: 200,
    clock: systemClock,
    logger: silentLogger,
    ...options,
  });
  endpoints.push(created);
  return created;
}

function valves(e: ModbusEndpoint, prefix: string, count: number, spacing: number) {
  return Array.from(
    { length: count },
    (_, i) =>
      new ModbusDeviceDriver({
        id: `${prefix}${i}`,
        profile: profile('valve'),
        endpoint: e,
        base: i * spacing,
        clock: systemClock,
      }),
  );
}

/** What each read gets when sent on its own, one after the other. */
async function lone(
  e: ModbusEndpoint,
  reads: readonly (readonly [Parameters<ModbusEndpoint['read']>[0], number, number])[],
): Promise<number[][]> {
  const out: number[][] = [];
  for (const [table, address, length] of reads) out.push(await e.read(table, address, length));
  return out;
}

/** Requests sent and reads served while `run` runs. */
async function counting<T>(
  e: ModbusEndpoint,
  run: () => Promise<T>,
): Promise<{ result: T; sent: number; served: number }> {
  const sent = e.requestsSent;
  const served = e.readsServed;
  const result = await run();
  return { result, sent: e.requestsSent - sent, served: e.readsServed - served };
}

const settle = (p: Promise<unknown>): Promise<unknown> =>
  p.then(
    () => null,
    (error: unknown) => error,
  );

/** A logger port that keeps its warnings. */
function warningsLogger(): { logger: Logger; warnings: { obj: object; msg?: string }[] } {
  const warnings: { obj: object; msg?: string }[] = [];
  const logger: Logger = {
    ...silentLogger,
    warn: (obj, msg) => {
      warnings.push(msg === undefined ? { obj } : { obj, msg });
    },
    child: () => logger,
  };
  return { logger, warnings };
}

describe('block reads', () => {
  it('serves concurrent reads of many devices with fewer requests, each with what it reads alone', async () => {
    const e = endpoint('flat');
    const statuses = Array.from(
      { length: FLAT_VALVES },
      (_, i) => ['holding', i * FLAT_SPACING, 8] as const,
    );
    const alone = await lone(e, statuses);
    expect(alone.map((words) => words[1])).toEqual(
      Array.from({ length: FLAT_VALVES }, (_, i) => i * 100),
    );
    const { result, sent, served } = await counting(e, () =>
      Promise.all(statuses.map(([table, address, length]) => e.read(table, address, length))),
    );
    expect(result).toEqual(alone);
    // 0..119 (eight valves: a ninth would make 136 registers, over 125), then 128..151.
    expect(sent).toBe(2);
    expect(served).toBe(FLAT_VALVES);

    // The device drivers' status reads combine the same way.
    const drivers = valves(e, 'f', FLAT_VALVES, FLAT_SPACING);
    const readbacks = await counting(e, () => Promise.all(drivers.map((d) => d.read())));
    expect(readbacks.result.map((r) => r.position)).toEqual(
      Array.from({ length: FLAT_VALVES }, (_, i) => i * 10),
    );
    expect(readbacks.result.map((r) => r.state)).toEqual(
      Array.from({ length: FLAT_VALVES }, (_, i) => plant.device(`f${i}`).snapshot().state),
    );
    expect(readbacks.sent).toBe(2);
  });

  it('joins overlapping and adjacent reads, and a read that becomes near once another joined', async () => {
    const e = endpoint('flat');
    // 40+4 is 36 registers from 0+4 but 16 from 20+4, which is 16 from 0+4.
    const reads = [
      ['holding', 0, 4],
      ['holding', 40, 4],
      ['holding', 20, 4],
      ['holding', 2, 3],
      ['holding', 4, 4],
    ] as const;
    const alone = await lone(e, reads);
    const { result, sent, served } = await counting(e, () =>
      Promise.all(reads.map(([table, address, length]) => e.read(table, address, length))),
    );
    expect(result).toEqual(alone);
    expect(sent).toBe(1);
    expect(served).toBe(reads.length);
  });

  it('combines nothing beyond maxGap, across tables, or when disabled', async () => {
    // 0+4 and 4+4 touch; 16+8 is 8 registers away; the input registers are another table.
    const reads = [
      ['holding', 0, 4],
      ['holding', 4, 4],
      ['holding', 16, 8],
      ['input', 0, 4],
    ] as const;
    const cases = [
      [undefined, 2],
      [{ enabled: true, maxGap: 0 }, 3],
      [{ enabled: false, maxGap: 16 }, 4],
    ] as const;
    for (const [combineReads, requests] of cases) {
      const e = endpoint('flat', combineReads === undefined ? {} : { combineReads });
      const alone = await lone(e, reads);
      const { result, sent } = await counting(e, () =>
        Promise.all(reads.map(([table, address, length]) => e.read(table, address, length))),
      );
      expect(result).toEqual(alone);
      expect({ combineReads, sent }).toEqual({ combineReads, sent: requests });
    }
  });

  it('keeps a block within 125 registers and 2000 bits per request', async () => {
    const e = endpoint('flat');
    const cases = [
      [
        [
          ['holding', 0, 100],
          ['holding', 100, 25],
        ],
        1,
      ],
      [
        [
          ['holding', 0, 100],
          ['holding', 100, 26],
        ],
        2,
      ],
      [
        [
          ['discrete', 0, 1000],
          ['discrete', 1000, 1000],
        ],
        1,
      ],
      [
        [
          ['discrete', 0, 1500],
          ['discrete', 1500, 501],
        ],
        2,
      ],
    ] as const;
    for (const [reads, requests] of cases) {
      const alone = await lone(e, reads);
      const { result, sent } = await counting(e, () =>
        Promise.all(reads.map(([table, address, length]) => e.read(table, address, length))),
      );
      expect(result).toEqual(alone);
      expect({ reads, sent }).toEqual({ reads, sent: requests });
    }
  });

  it('never serves a read queued after a write before that write', async () => {
    const e = endpoint('flat');
    const command = 3 * FLAT_SPACING + 10;
    const [previous] = await lone(e, [['holding', command, 3]]);
    // A stop (a no-op on a closed valve) with a sequence number the registers do not hold yet.
    const written = [3, 0, previous?.[2] === 4242 ? 4243 : 4242];
    const { result, sent } = await counting(e, () =>
      Promise.all([
        e.read('holding', 3 * FLAT_SPACING, 8),
        e.read('holding', command, 3),
        e.writeRegisters(command, written),
        e.read('holding', command, 3),
        e.read('holding', 4 * FLAT_SPACING, 8),
      ]),
    );
    const [, before, , after] = result;
    expect(before).toEqual(previous);
    expect(after).toEqual(written);
    // The reads before the write, the write, the reads after it: the read after the write
    // overlaps the one before it exactly, and still did not join it.
    expect(sent).toBe(3);
  });

  it('has the next request on its way before an answer is handed to its read', async () => {
    // Three reads that cannot share a request: each answer reaches its read once the request
    // after it was sent, so that what the read's owner does with it runs while the PLC
    // answers the next (the last one, with nothing after it, at once).
    const e = endpoint('flat', { combineReads: { enabled: false, maxGap: 16 } });
    const reads = [
      ['holding', 0, 4],
      ['holding', 16, 4],
      ['holding', 32, 4],
    ] as const;
    const alone = await lone(e, reads);
    const before = e.requestsSent;
    const sentWhenAnswered: number[] = [];
    const result = await Promise.all(
      reads.map(([table, address, length]) =>
        e.read(table, address, length).then((values) => {
          sentWhenAnswered.push(e.requestsSent - before);
          return values;
        }),
      ),
    );
    expect(result).toEqual(alone);
    expect(sentWhenAnswered).toEqual([2, 3, 3]);
  });

  it("joins a device's read past another device's queued write, never past its own", async () => {
    const e = endpoint('flat');
    const status = (v: number): number => v * FLAT_SPACING;
    const command = (v: number): number => v * FLAT_SPACING + 10;
    const [previous] = await lone(e, [['holding', command(1), 3]]);
    // A stop (a no-op on a valve at rest) with a sequence number the registers do not hold yet.
    const written = [3, 0, previous?.[2] === 4242 ? 4243 : 4242];
    const first = e.requestsSent + 1;
    /** Which request (1 = the first of this test) served each read: told when it is sent. */
    const servedBy = new Map<string, number>();
    const read = (name: string, address: number, length: number, owner?: string) =>
      e.read(
        'holding',
        address,
        length,
        undefined,
        () => {
          servedBy.set(name, e.requestsSent - first + 1);
        },
        owner,
      );
    const [, , , afterWrite] = await Promise.all([
      read('status 1', status(1), 8, 'f1'),
      e.writeRegisters(command(1), written, undefined, 'f1'),
      // Valve 2's status: past valve 1's write, into the first request.
      read('status 2', status(2), 8, 'f2'),
      // Valve 1's command registers, after its own write: never before it.
      read('command 1', command(1), 3, 'f1'),
      // No owner: keeps its place behind every write.
      read('status 3', status(3), 8),
    ]);
    expect(afterWrite).toEqual(written);
    expect(Object.fromEntries(servedBy)).toEqual({
      'status 1': 1,
      'status 2': 1,
      // request 2 is the write
      'command 1': 3,
      'status 3': 4, // too far from command 1 (maxGap) to join it
    });
  });

  it('drops aborted reads without a request, as a read alone would be', async () => {
    const e = endpoint('flat');
    const aborted = AbortSignal.abort();
    const { result, sent, served } = await counting(e, () =>
      Promise.all([
        settle(e.read('holding', 0, 8, aborted)),
        e.read('holding', 16, 8),
        settle(e.read('holding', 28, 8, aborted)),
        e.read('holding', 40, 8),
      ]),
    );
    expect(result[0]).toBeInstanceOf(DeviceUnreachableError);
    expect((result[0] as Error).message).toBe('flat: aborted');
    expect(result[2]).toBeInstanceOf(DeviceUnreachableError);
    expect(result[1]).toEqual((await lone(e, [['holding', 16, 8]]))[0]);
    expect(sent).toBe(1);
    expect(served).toBe(2);
  });

  it('fails every read of a combined read that gets no answer with the same error', async () => {
    const e = endpoint('flat', { requestTimeoutMs: 200 });
    await e.read('holding', 0, 8);
    plant.plc('flat').setFault({ kind: 'drop', on: 'read', count: 1 });
    const errors = await Promise.all(
      [0, 1, 2].map((i) => settle(e.read('holding', i * FLAT_SPACING, 8))),
    );
    expect(errors[0]).toBeInstanceOf(DeviceUnreachableError);
    expect((errors[0] as Error).message).toMatch(
      /^flat: read 0\+40 \(3 reads combined\):? .*timed out/i,
    );
    expect(errors[1]).toBe(errors[0]);
    expect(errors[2]).toBe(errors[0]);
    // The connection was replaced; combining goes on (no answer is no refusal).
    expect(e.combinesReads).toBe(true);
    const { sent } = await counting(e, () =>
      Promise.all([0, 1, 2].map((i) => e.read('holding', i * FLAT_SPACING, 8))),
    );
    expect(sent).toBe(1);
  });
});

describe('a PLC that refuses a combined read', () => {
  it('has each read answered on its own, warns once and combines no more for a while', async () => {
    const { logger, warnings } = warningsLogger();
    const e = endpoint('strict', { logger });
    const drivers = valves(e, 's', STRICT_VALVES, STRICT_SPACING);
    // Registers 8..9 are mapped by no device: that read is refused alone too.
    const first = await counting(e, () =>
      Promise.all([
        settle(e.read('holding', 8, 2)),
        ...drivers.map((d) => d.read().then((r) => r.position)),
      ]),
    );
    const [refused, ...positions] = first.result;
    expect(refused).toBeInstanceOf(DeviceRefusedError);
    expect((refused as Error).message).toBe(
      'strict: read 8+2: Modbus exception 0x02 (illegal data address)',
    );
    expect(positions).toEqual(Array.from({ length: STRICT_VALVES }, (_, i) => i * 20 + 5));
    // One block read over 0..67, refused, then each of the five reads on its own.
    expect(first.sent).toBe(1 + 1 + STRICT_VALVES);
    expect(first.served).toBe(STRICT_VALVES);
    expect(warnings).toEqual([
      {
        obj: {
          plc: 'strict',
          table: 'holding',
          start: 0,
          length: 68,
          exception: '0x02',
          retryInMs: UNCOMBINED_FIRST_MS,
        },
        msg: 'PLC refused a combined read; reading each request on its own until a block read is tried again',
      },
    ]);
    expect(e.combinesReads).toBe(false);
    // The refused block read is not counted against the PLC's health; the refused read is.
    expect(e.health.snapshot().errorCount).toBe(1);

    // From now on (for a minute) every read is a request of its own, even reads that overlap.
    const next = await counting(e, () =>
      Promise.all([...drivers.map((d) => d.read()), e.read('holding', 0, 8)]),
    );
    expect(next.sent).toBe(STRICT_VALVES + 1);
    expect(warnings).toHaveLength(1);
  });
});

/** A logger port that keeps its info and warning lines. */
function linesLogger(): { logger: Logger; lines: { level: string; msg?: string }[] } {
  const lines: { level: string; msg?: string }[] = [];
  const logger: Logger = {
    ...silentLogger,
    info: (_obj, msg) => {
      lines.push({ level: 'info', ...(msg === undefined ? {} : { msg }) });
    },
    warn: (_obj, msg) => {
      lines.push({ level: 'warn', ...(msg === undefined ? {} : { msg }) });
    },
    child: () => logger,
  };
  return { logger, lines };
}

describe('a PLC that refuses combined reads for a while (program mode, a download)', () => {
  it('has block reads tried again after a minute, then after twice as long at each refusal', async () => {
    // The endpoint's monotonic clock, stepped forward by the test: the holds last minutes.
    let aheadMs = 0;
    const clock = { ...systemClock, elapsed: () => systemClock.elapsed() + aheadMs };
    const { logger, lines } = linesLogger();
    const e = endpoint('flat', { logger, clock });
    // Five valves: 80 registers, one block (the flat PLC maps the gaps).
    const drivers = valves(e, 'f', 5, FLAT_SPACING);
    const readAll = (): Promise<{ result: (number | null)[]; sent: number; served: number }> =>
      counting(e, () => Promise.all(drivers.map((d) => d.read().then((r) => r.position))));
    const positions = [0, 10, 20, 30, 40];
    const refuseNextRead = (): void => {
      // The PLC refuses the next request, the block read, as a PLC in STOP mode does.
      plant.plc('flat').setFault({ kind: 'exception', code: 2, on: 'read', count: 1 });
    };
    const warned = (): number => lines.filter((l) => l.level === 'warn').length;
    const resumed = (): number =>
      lines.filter((l) => l.msg?.startsWith('combining reads again') === true).length;

    refuseNextRead();
    const refused = await readAll();
    expect(refused.result).toEqual(positions);
    expect(refused.sent).toBe(1 + 5);
    expect([warned(), resumed(), e.combinesReads]).toEqual([1, 0, false]);
    // Within the minute, each read is its own request.
    aheadMs += UNCOMBINED_FIRST_MS - 1_000;
    expect((await readAll()).sent).toBe(5);
    // Past it, the reads are one block again, logged once.
    aheadMs += 1_000;
    const again = await readAll();
    expect([again.result, again.sent]).toEqual([positions, 1]);
    expect((await readAll()).sent).toBe(1);
    expect([warned(), resumed(), e.combinesReads]).toEqual([1, 1, true]);

    // Refused again soon after: held off twice as long.
    refuseNextRead();
    expect((await readAll()).sent).toBe(1 + 5);
    aheadMs += UNCOMBINED_FIRST_MS;
    expect((await readAll()).sent).toBe(5);
    aheadMs += UNCOMBINED_FIRST_MS;
    expect((await readAll()).sent).toBe(1);
    expect([warned(), resumed()]).toEqual([2, 2]);

    // An hour of block reads without a refusal: the next refusal holds for a minute again.
    aheadMs += UNCOMBINED_MAX_MS;
    refuseNextRead();
    expect((await readAll()).sent).toBe(1 + 5);
    aheadMs += UNCOMBINED_FIRST_MS;
    expect((await readAll()).sent).toBe(1);
    expect([warned(), resumed()]).toEqual([3, 3]);
  });

  it('is held off an hour at most, however often it refuses', async () => {
    let aheadMs = 0;
    const clock = { ...systemClock, elapsed: () => systemClock.elapsed() + aheadMs };
    const e = endpoint('strict', { clock });
    // The strict PLC maps nothing between its valves: it refuses every block read across them.
    const drivers = valves(e, 's', STRICT_VALVES, STRICT_SPACING);
    const holds: number[] = [];
    for (let i = 0; i < 8; i++) {
      const first = await counting(e, () => Promise.all(drivers.map((d) => d.read())));
      expect(first.sent).toBe(1 + STRICT_VALVES);
      expect(first.served).toBe(STRICT_VALVES);
      // The hold: a minute at a time forward until a block read is tried again.
      let held = 0;
      do {
        aheadMs += UNCOMBINED_FIRST_MS;
        held += UNCOMBINED_FIRST_MS;
      } while (!e.combinesReads && held < 2 * UNCOMBINED_MAX_MS);
      holds.push(held);
    }
    expect(holds).toEqual([1, 2, 4, 8, 16, 32, 60, 60].map((m) => m * UNCOMBINED_FIRST_MS));
  });
});

describe('plcs.<name>.combineReads', () => {
  const plc = { protocol: 'modbus', host: '127.0.0.1', port: 502 } as const;

  it('is optional, fills its fields with defaults and bounds maxGap', () => {
    const parse = (combineReads: unknown) =>
      inventorySchema.safeParse({ plcs: { p: { ...plc, combineReads } }, devices: {} });
    const omitted = inventorySchema.parse({ plcs: { p: plc }, devices: {} });
    expect(omitted.plcs.p).not.toHaveProperty('combineReads');
    expect(parse({}).data?.plcs.p).toMatchObject({ combineReads: { enabled: true, maxGap: 16 } });
    expect(parse({ enabled: false }).data?.plcs.p).toMatchObject({
      combineReads: { enabled: false, maxGap: 16 },
    });
    expect(parse({ maxGap: 125 }).success).toBe(true);
    expect(parse({ maxGap: 126 }).success).toBe(false);
    expect(parse({ maxGap: -1 }).success).toBe(false);
    expect(parse({ maxGap: 1.5 }).success).toBe(false);
    expect(parse({ enabled: true, gap: 4 }).success).toBe(false);
  });

  it('reaches the endpoint through buildDrivers; omitted, reads are combined', async () => {
    const e = plant.plc('flat').endpoint;
    if (e.protocol !== 'modbus') throw new Error('expected a Modbus PLC');
    const at = { protocol: 'modbus', host: e.host, port: e.port, requestTimeoutMs: 500 } as const;
    const inventory = inventorySchema.parse({
      plcs: { on: at, off: { ...at, combineReads: { enabled: false } } },
      devices: {
        f0: { plc: 'on', profile: 'valve', base: 0 },
        f1: { plc: 'on', profile: 'valve', base: FLAT_SPACING },
        // The same controller under a second name: other valves (one valve, one PLC entry).
        g0: { plc: 'off', profile: 'valve', base: 2 * FLAT_SPACING },
        g1: { plc: 'off', profile: 'valve', base: 3 * FLAT_SPACING },
      },
    });
    const drivers = await modbusDrivers(inventory);
    try {
      const byName = new Map(drivers.modbus.map((m) => [m.name, m]));
      expect(byName.get('on')?.combinesReads).toBe(true);
      expect(byName.get('off')?.combinesReads).toBe(false);
      await Promise.all(drivers.bindings.map((b) => b.driver.read()));
      expect(byName.get('on')?.requestsSent).toBe(1);
      expect(byName.get('off')?.requestsSent).toBe(2);
    } finally {
      await drivers.close();
    }
  });
});

describe('a PLC that answers a combined read with another exception', () => {
  it('has each read answered on its own and keeps combining (busy says nothing of the span)', async () => {
    const { logger, warnings } = warningsLogger();
    const e = endpoint('flat', { logger });
    // Five valves: 80 registers, one block.
    const drivers = valves(e, 'f', 5, FLAT_SPACING);
    // Exception 06 (server device busy) for the next request only: the block read.
    plant.plc('flat').setFault({ kind: 'exception', code: 6, on: 'read', count: 1 });
    const first = await counting(e, () =>
      Promise.all(drivers.map((d) => d.read().then((r) => r.position))),
    );
    expect(first.result).toEqual([0, 10, 20, 30, 40]);
    // The refused block read, then each valve's read on its own.
    expect(first.sent).toBe(1 + 5);
    expect(warnings).toEqual([]);
    expect(e.combinesReads).toBe(true);
    // The next concurrent reads are one block again.
    const next = await counting(e, () => Promise.all(drivers.map((d) => d.read())));
    expect(next.sent).toBe(1);
  });
});
