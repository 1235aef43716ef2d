import { readFileSync } from 'node:fs';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { parse } from 'yaml';
import { afterEach, describe, expect, it } from 'vitest';
import { parseCommandRequest } from '../../src/core/command.js';
import { systemClock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { CommandPipeline } from '../../src/core/pipeline.js';
import { parseProfile, type DeviceProfile } from '../../src/core/profile.js';
import { buildDrivers } from '../../src/drivers/inventory.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';

/**
 * A register map whose echo is read in a request of its own, apart from the state, position,
 * fault and image time: every field a readback is judged on is read after the echo, so a
 * controller scan between the requests of one readback cannot pair this command's echo with
 * the state and fault from before the controller took it. The real pipeline, a real journal
 * file and the real Modbus driver against sluice-sim; ground truth: the simulator's write log
 * and device state, and the journal.
 *
 * The simulator's register layouts are fixed (a vendor map with the echo beside the command
 * registers is not among them), but its standard layout serves the same image as input
 * registers: a profile that reads the echo from the input registers and the rest from the
 * holding registers has the read plan of such a map (state, fault and time in one request,
 * the echo in another).
 *
 * The plant scans only when told (no scan timers). The test's link between the driver and the
 * PLC runs one scan before each read of the valve's registers, with one exception that forces
 * the straddle every time: a scan runs while the write is on its way (the link holds the write
 * WRITE_TRANSIT_MS, then the scan runs, then the write reaches the PLC and waits for the next
 * scan), the first read after the write gets the image of that scan, and the scan that takes
 * the write runs before the second read. The transit is far longer than the uncertainty of the
 * measured controller skew on loopback (a few milliseconds): the image that scan published is
 * not taken for one from before the write, any more than a real one would be.
 */

/** How long the link holds the command write before it reaches the PLC. */
const WRITE_TRANSIT_MS = 100;

/** The valve profile (its own timings) with the echo in the input registers. */
function splitEchoProfile(): DeviceProfile {
  const data = parse(
    readFileSync(join(ROOT, 'devices', 'profiles', 'valve.yaml'), 'utf8'),
  ) as Record<string, unknown>;
  return parseProfile(
    {
      ...data,
      profile: 'split-echo-valve',
      modbus: {
        status: {
          state: { at: 0 },
          position: { at: 1, scale: 0.1 },
          fault: { at: 2 },
          seqEcho: { table: 'input', at: 3 },
          time: { at: 4, type: 'uint64' },
          clock: { address: 900, type: 'uint64' },
        },
        command: { code: { at: 10 }, setpoint: { at: 11, scale: 0.1 }, seq: { at: 12 } },
      },
    },
    'split-echo-valve.yaml',
  );
}

/** Registers of the valve at base 0 (standard layout: 0..12); the PLC clock is at 900. */
const VALVE_SPAN = 13;

/**
 * A TCP link to the PLC that scans the plant before passing on each read of the valve's
 * registers, and while the command write is on its way; the first read after the write passes
 * without one. Requests are passed on one after the other, in order; a scan is synchronous, so
 * it runs before the PLC sees the request that follows it.
 */
class ScanningLink {
  /** The scan that takes the write ran between the first and the second read after it. */
  straddled = false;
  private afterWrite: 'no' | 'written' | 'first-read' | 'done' = 'no';
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async open(plant: Plant, target: { host: string; port: number }): Promise<ScanningLink> {
    const holder: { link: ScanningLink | null } = { link: null };
    const server = createServer((inbound) => {
      const link = holder.link;
      if (link === null) return;
      const outbound = createConnection(target);
      link.sockets.add(inbound).add(outbound);
      const close = (): void => {
        inbound.destroy();
        outbound.destroy();
      };
      inbound.on('error', close).on('close', close);
      outbound.on('error', close).on('close', close);
      outbound.pipe(inbound);
      let buffer = Buffer.alloc(0);
      let passing = Promise.resolve();
      inbound.on('data', (chunk: Buffer) => {
        buffer = Buffer.concat([buffer, chunk]);
        while (buffer.length >= 8 && buffer.length >= 6 + buffer.readUInt16BE(4)) {
          const frame = buffer.subarray(0, 6 + buffer.readUInt16BE(4));
          buffer = buffer.subarray(frame.length);
          passing = passing.then(async () => {
            await link.before(plant, frame);
            if (!outbound.destroyed) outbound.write(frame);
          });
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    const link = new ScanningLink(server, port);
    holder.link = link;
    return link;
  }

  private async before(plant: Plant, frame: Buffer): Promise<void> {
    const fc = frame.readUInt8(7);
    const address = frame.length >= 10 ? frame.readUInt16BE(8) : -1;
    if (fc === 16) {
      // A scan while the write is on its way: it publishes, the next one takes the write.
      await new Promise((resolve) => setTimeout(resolve, WRITE_TRANSIT_MS));
      plant.scan();
      if (this.afterWrite === 'no') this.afterWrite = 'written';
      return;
    }
    if ((fc !== 3 && fc !== 4) || address < 0 || address >= VALVE_SPAN) return;
    if (this.afterWrite === 'written') {
      this.afterWrite = 'first-read';
      return;
    }
    if (this.afterWrite === 'first-read') {
      this.afterWrite = 'done';
      this.straddled = true;
    }
    plant.scan();
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise<void>((resolve) =>
      this.server.close(() => {
        resolve();
      }),
    );
  }
}

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

/**
 * A plant with one valve `v1` at base 0, fully open (travel 0: a move is done at the scan that
 * takes it), set up by `prepare`; the daemon's pipeline and driver reach it through the
 * scanning link.
 */
async function site(prepare: (plant: Plant) => void) {
  const plant = await startPlant(
    {
      plcs: {
        plc: {
          protocol: 'modbus',
          port: 0,
          devices: { v1: { profile: 'valve', base: 0, travelMs: 0, initialPosition: 100 } },
        },
      },
    },
    { manualScan: true, ephemeralPorts: true, control: false },
  );
  cleanups.push(() => plant.stop());
  prepare(plant);
  const e = plant.plc('plc').endpoint;
  if (e.protocol !== 'modbus') throw new Error('expected a Modbus PLC');
  const link = await ScanningLink.open(plant, { host: e.host, port: e.port });
  cleanups.push(() => link.close());
  const made = tempDir();
  cleanups.push(() => {
    made.cleanup();
  });
  const profile = splitEchoProfile();
  const drivers = await buildDrivers({
    inventory: {
      plcs: {
        plc: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: link.port,
          unitId: e.unitId,
          requestTimeoutMs: 1_000,
        },
      },
      devices: { v1: { plc: 'plc', profile: profile.profile, base: 0 } },
    },
    profiles: new Map([[profile.profile, profile]]),
    pkiDir: join(made.dir, 'pki'),
    acceptUnknownCertificates: true,
    clock: systemClock,
    logger: silentLogger,
  });
  drivers.start();
  cleanups.push(() => drivers.close());
  // As the daemon runs it: writes share fsyncs.
  const journal = SqliteJournal.open({
    path: join(made.dir, 'journal.db'),
    busyTimeoutMs: 500,
    groupCommit: true,
  });
  cleanups.push(() => {
    journal.close();
  });
  const pipeline = new CommandPipeline({
    journal,
    devices: drivers.bindings,
    clock: systemClock,
    logger: silentLogger,
    freshness: { maxIssuerSkewMs: 2_000 },
    unreachableGraceMs: 1_000,
  });
  cleanups.push(() => pipeline.stop(0));
  const run = async (key: string, action: 'close' | 'reset') => {
    pipeline.submit({
      key,
      identity: { scope: 'plant', devices: 'all' },
      intake: 'https',
      request: parseCommandRequest({ device: 'v1', action }),
    });
    const ref = { scope: 'plant', key };
    const record = await pipeline.waitForSettled(ref, 10_000);
    const history = journal.history(ref).map((e) => `${e.to}: ${e.detail}`);
    return { record, history };
  };
  return { plant, link, run };
}

describe('a map whose echo is read apart from the state, fault and image time', () => {
  it('a close the controller took from OPEN with a 0x88 latched is confirmed, not rejected', async () => {
    const { plant, link, run } = await site((p) => {
      // Another master's move, illegal on a valve: refused, 0x88 latched, the valve still OPEN.
      p.device('v1').receiveWrite({ code: 5, setpoint: 50, seq: 7 });
      p.scan();
    });
    const before = plant.device('v1').snapshot();
    expect([before.state, before.fault, before.seqEcho]).toEqual(['OPEN', '0x88', 7]);

    const { record, history } = await run('close-1', 'close');

    expect(link.straddled).toBe(true);
    const v1 = plant.device('v1');
    expect(v1.writeLog.map((w) => [w.seq, w.code, w.outcome])).toEqual([
      [7, 5, 'rejected-0x88'],
      [record?.seq, 2, 'accepted'],
    ]);
    expect([v1.snapshot().state, v1.snapshot().fault]).toEqual(['CLOSED', null]);
    expect({ state: record?.state, code: record?.code, history }).toMatchObject({
      state: 'confirmed',
      code: 'OK',
    });
  });

  it('a reset that cleared a fault is confirmed, not failed DEVICE_FAULT', async () => {
    const { plant, link, run } = await site((p) => {
      // A position sensor disagreement puts the valve in FAULT 0x82; the sensor is then mended.
      p.device('v1').setFault({ kind: 'position-sensor' });
      p.scan();
      p.device('v1').clearFault('position-sensor');
      p.scan();
    });
    const before = plant.device('v1').snapshot();
    expect([before.state, before.fault]).toEqual(['FAULT', '0x82']);

    const { record, history } = await run('reset-1', 'reset');

    expect(link.straddled).toBe(true);
    const v1 = plant.device('v1');
    expect(v1.writeLog.map((w) => [w.seq, w.code, w.outcome])).toEqual([
      [record?.seq, 4, 'accepted'],
    ]);
    // Reset from FAULT away from 0 %: STOPPED.
    expect([v1.snapshot().state, v1.snapshot().fault]).toEqual(['STOPPED', null]);
    expect({ state: record?.state, code: record?.code, history }).toMatchObject({
      state: 'confirmed',
      code: 'OK',
    });
  });
});
