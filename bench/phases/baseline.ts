import { closeSync, fsyncSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import ModbusSerial from 'modbus-serial';
import type { ModbusRTU } from 'modbus-serial/ModbusRTU.js';
import { modbusValves, opcuaValve, type RunContext } from '../context.js';
import {
  firstRead,
  nextMove,
  nextSeq,
  rawDrivers,
  writeAndReadBack,
  type RoundTrip,
} from '../raw-drivers.js';
import type { BenchOptions } from '../options.js';
import type { Baseline, DriverRoundTrip, Skipped } from '../results.js';
import { ArrivalPauses, blockFor, distribution, round } from '../stats.js';

/**
 * The baseline: what the plant and the raw driver cost without the bridge. The simulator alone
 * (a raw Modbus request, sequential and under parallel load) shows it is not the bottleneck;
 * the raw driver's write-then-read-back-until-confirmed is the floor every end-to-end figure
 * is divided by.
 */

const ModbusClient = ModbusSerial as unknown as new () => ModbusRTU;
/** The bench plant's valves use the `standard` layout: the status block is 8 registers. */
const STATUS_REGISTERS = 8;

function modbusTarget(ctx: RunContext): {
  host: string;
  port: number;
  unitId: number;
  base: number;
} {
  const plc = ctx.plant.info.plcs.find((p) => p.endpoint.protocol === 'modbus');
  if (plc === undefined || plc.endpoint.protocol !== 'modbus') throw new Error('no Modbus PLC');
  const first = plc.devices[0];
  if (first === undefined) throw new Error('no Modbus valve');
  return { ...plc.endpoint, base: first.base ?? 0 };
}

async function rawClient(t: { host: string; port: number; unitId: number }): Promise<ModbusRTU> {
  const client = new ModbusClient();
  await client.connectTCP(t.host, { port: t.port });
  client.setID(t.unitId);
  client.setTimeout(1_000);
  return client;
}

function closeClient(client: ModbusRTU): Promise<void> {
  return new Promise((resolve) => {
    client.close(() => {
      resolve();
    });
  });
}

async function simulatorAlone(ctx: RunContext): Promise<Baseline['simulator']> {
  const t = modbusTarget(ctx);
  const { simRequests, simSeconds, clients } = ctx.options;
  const client = await rawClient(t);
  const samples: number[] = [];
  try {
    for (let i = 0; i < simRequests; i++) {
      const start = performance.now();
      await client.readHoldingRegisters(t.base, STATUS_REGISTERS);
      samples.push(performance.now() - start);
    }
  } finally {
    await closeClient(client);
  }
  // Capacity: as many connections as the throughput run has clients (at most 20: the
  // simulator serves each connection in order, so more only queue), reading back to back.
  const connections = Math.max(1, Math.min(20, clients));
  const pool = await Promise.all(Array.from({ length: connections }, () => rawClient(t)));
  const cpuBefore = ctx.plant.child.cpuSeconds();
  const start = performance.now();
  const end = start + simSeconds * 1000;
  let served = 0;
  try {
    await Promise.all(
      pool.map(async (c) => {
        while (performance.now() < end) {
          await c.readHoldingRegisters(t.base, STATUS_REGISTERS);
          served += 1;
        }
      }),
    );
  } finally {
    await Promise.all(pool.map(closeClient));
  }
  const seconds = (performance.now() - start) / 1000;
  return {
    readMs: distribution(samples),
    capacity: {
      connections,
      seconds: round(seconds),
      requestsPerSecond: round(served / seconds),
      cpuCores: round((ctx.plant.child.cpuSeconds() - cpuBefore) / seconds),
    },
  };
}

async function driverRoundTrips(
  ctx: RunContext,
  protocol: 'modbus' | 'opcua',
  device: string,
  count: number,
): Promise<DriverRoundTrip> {
  const raw = await rawDrivers({
    plant: ctx.plant.info,
    protocol,
    profilesDir: ctx.profiles.dir,
    pkiDir: join(ctx.dir, `pki-${protocol}`),
    logFile: join(ctx.dir, `driver-${protocol}.log`),
  });
  try {
    const driver = raw.driver(device);
    let r = await firstRead(driver, 20_000);
    let last = r.seq ?? 0;
    const trips: RoundTrip[] = [];
    const cpu0 = process.cpuUsage();
    const arrivals = new ArrivalPauses(ctx.options.scanMs, count);
    for (let i = 0; i < count; i++) {
      await arrivals.pause();
      const move = nextMove(r.state);
      const seq = nextSeq(r.seq, last);
      last = seq;
      trips.push(
        await writeAndReadBack(
          driver,
          { action: move.action, position: null, seq },
          move.target,
          2_000,
        ),
      );
      r = await driver.read();
    }
    const cpu = process.cpuUsage(cpu0);
    // Each trip's write and reads, and the read after it.
    const requests = trips.reduce((s, t) => s + 1 + t.reads + 1, 0);
    return {
      cpuMsPerRequest: round((cpu.user + cpu.system) / 1000 / Math.max(1, requests)),
      confirmMs: distribution(trips.map((t) => t.confirmMs)),
      ackMs: distribution(trips.map((t) => t.ackMs)),
      readsPerCommand: round(trips.reduce((s, t) => s + t.reads, 0) / trips.length),
    };
  } finally {
    await raw.close();
  }
}

/** Overwrites within this span: the file never grows, so no fsync waits for an allocation. */
const DISK_FILE_BYTES = 4 * 1024 * 1024;
/** Eight WAL frames (a 4 KiB page and its 24-byte header each): one command's commit. */
const DISK_WRITE_BYTES = 8 * (4096 + 24);

/** Samples of the flush after an idle scan: each waits a scan first, so they are few. */
const DISK_IDLE_SAMPLES = 200;

/**
 * The disk under the journals alone: a commit's worth of WAL frames written over a file of
 * fixed size, then fsync — what a commit to a WAL that has reached its size costs the disk,
 * without SQLite. Every confirmed command waits for two such fsyncs (the dispatch, the
 * settlement), so their tail is a floor under the command's tail.
 *
 * Then the same after the machine idled for one scan. A command's settlement is flushed after
 * the wait for the scan that took its write, in which a lone command leaves the machine idle;
 * on a virtual machine (and on flash that saves power) a flush after idle costs more than one
 * in a busy stream, and the back-to-back figure alone would understate it.
 */
async function diskAlone(
  ctx: RunContext,
  samples: number,
  idleMs: number,
): Promise<NonNullable<Baseline['disk']>> {
  const path = join(ctx.dir, 'disk-alone.bin');
  const fd = openSync(path, 'w+');
  try {
    const block = Buffer.alloc(DISK_WRITE_BYTES, 0x5a);
    for (let at = 0; at < DISK_FILE_BYTES; at += DISK_WRITE_BYTES)
      writeSync(fd, block, 0, block.length, at);
    fsyncSync(fd);
    let i = 0;
    // --fsync-delay-ms: the same emulated flush as the daemons' (bench/fsync-count.c).
    const delayMs = ctx.options.fsyncDelayMs;
    const flush = (): number => {
      writeSync(fd, block, 0, block.length, (i++ * DISK_WRITE_BYTES) % DISK_FILE_BYTES);
      const t0 = performance.now();
      fsyncSync(fd);
      blockFor(delayMs - (performance.now() - t0));
      return performance.now() - t0;
    };
    const times: number[] = [];
    for (let k = 0; k < samples; k++) times.push(flush());
    const afterIdle: number[] = [];
    for (let k = 0; k < Math.min(samples, DISK_IDLE_SAMPLES); k++) {
      await new Promise((resolve) => setTimeout(resolve, idleMs));
      afterIdle.push(flush());
    }
    return {
      fsyncMs: distribution(times),
      fsyncAfterIdleMs: distribution(afterIdle),
      idleMs,
      bytes: DISK_WRITE_BYTES,
    };
  } finally {
    closeSync(fd);
    rmSync(path, { force: true });
  }
}

export async function baseline(ctx: RunContext): Promise<Baseline> {
  const { options } = ctx;
  ctx.progress(`baseline: the disk alone, ${options.simRequests} fsyncs`);
  const disk = await diskAlone(ctx, options.simRequests, options.scanMs);
  ctx.progress('baseline: the simulator alone');
  const simulator = await simulatorAlone(ctx);
  const valve = modbusValves(ctx)[0];
  if (valve === undefined) throw new Error('no Modbus valve');
  ctx.progress(
    `baseline: raw Modbus driver, ${options.baselineCommands} write + readback round trips`,
  );
  const modbus = await driverRoundTrips(ctx, 'modbus', valve, options.baselineCommands);
  const { waits } = await ctx.plant.child.request<{ waits: number[] }>('takeWaits', {
    device: valve,
  });
  let opcua: DriverRoundTrip | Skipped;
  const uaValve = opcuaValve(ctx);
  if (uaValve === null) {
    opcua = { skipped: 'the OPC UA PLC is left out of this run (--no-opcua)' };
  } else {
    ctx.progress(`baseline: raw OPC UA driver, ${options.opcuaCommands} round trips`);
    opcua = await driverRoundTrips(ctx, 'opcua', uaValve, options.opcuaCommands);
  }
  return {
    simulator,
    disk,
    modbus,
    opcua,
    plant: {
      scanMs: options.scanMs,
      travelMs: options.travelMs,
      // Half a scan on average waiting for the scan that takes the command, then one scan more
      // for every scan the travel spans (travel 0: the taking scan shows the target).
      expectedMeanMs: (0.5 + travelScans(options)) * options.scanMs,
      expectedMaxMs: (1 + travelScans(options)) * options.scanMs,
      takeWaitMs: distribution(waits),
    },
  };
}

/** Scans after the taking one until the target shows: the travel rounded up to whole scans. */
function travelScans(options: BenchOptions): number {
  return Math.ceil(options.travelMs / options.scanMs);
}
