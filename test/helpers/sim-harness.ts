import { join } from 'node:path';
import type BetterSqlite3 from 'better-sqlite3';
import { fingerprint, parseCommandRequest } from '../../src/core/command.js';
import { systemClock, type Clock } from '../../src/core/clock.js';
import type { CommandRecord, CommandRef, Observation } from '../../src/core/journal.js';
import { allocateSeq } from '../../src/core/sequence.js';
import { silentLogger, type Logger } from '../../src/core/logger.js';
import {
  CommandPipeline,
  type DeviceBinding,
  type Identity,
  type SubmitOutcome,
} from '../../src/core/pipeline.js';
import type { ClockPolicy } from '../../src/core/lane.js';
import type { DeviceProfile, ProfileTiming } from '../../src/core/profile.js';
import { buildDrivers, type Drivers, type Inventory } from '../../src/drivers/inventory.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant, type SimDevice } from '../../simulators/plant.js';
import { PROFILES, tempDir } from './fixtures.js';
import { SimProcess, type LaidOutPlc, type PlantPlcs } from './sim-process.js';
import { pino } from 'pino';

export const PLANT_IDENTITY: Identity = { scope: 'plant', devices: 'all' };

/**
 * Bridge timings scaled for a simulator with short travel: the guard is longer than the Modbus
 * request timeout (the configuration refuses anything else), the confirm timeout longer than
 * both.
 */
export const SIM_TIMING: ProfileTiming = {
  defaultTtlMs: 30_000,
  confirmTimeoutMs: 2_000,
  pollIntervalMs: 10,
  scanMs: 10,
  mismatchGraceMs: 80,
  redispatchGuardMs: 400,
};
export const SIM_REQUEST_TIMEOUT_MS = 250;

export interface SimHarnessOptions {
  readonly timing?: Partial<ProfileTiming>;
  /** Full-stroke travel of every simulated device (default 150 ms). */
  readonly travelMs?: number;
  readonly scanMs?: number;
  readonly maxIssuerSkewMs?: number;
  readonly requestTimeoutMs?: number;
  /** The clock of the pipeline and the drivers (wall steps are injected through it). */
  readonly clock?: Clock;
  readonly busyTimeoutMs?: number;
  readonly unreachableGraceMs?: number;
  /**
   * Each PLC's own unreachable grace by name (`mb`, `ua`): plcs.<name>.unreachableGraceMs in
   * the inventory, which the PLC's devices use in place of the pipeline's `unreachableGraceMs`.
   */
  readonly plcGraceMs?: Readonly<Record<string, number>>;
  /** Also an OPC UA PLC with the valve `u1` (slower to start). */
  readonly opcua?: boolean;
  readonly clockPolicy?: ClockPolicy;
  readonly skewMaxAgeMs?: number;
  /** Starts the idle-device monitor at this period (readbacks and skew between commands). */
  readonly monitorMs?: number;
  /**
   * The sweep's period (default 100 ms): longer, a command left open stays so, not taken up,
   * until the test runs `pipeline.sweep()` (the daemon's default period is a second).
   */
  readonly sweepMs?: number;
  /**
   * Every device has taken a command before the test (another master's no-op stop, sequence
   * number 60000; counters and write log cleared after): its echo is no longer the power-up 0,
   * as on a PLC that has run a while. A lost write can then be proven not applied across a
   * reconnect (src/core/redispatch.ts).
   */
  readonly warm?: boolean;
  /** TCP connections to the Modbus PLC (plcs.<name>.connections; default one). */
  readonly connections?: number;
  /**
   * Also the field devices of simulators/plants/field.yaml on the Modbus PLC: the limit-switch
   * valve `lsv` (profile limit-switch-valve: no echo, no clock, bit-decoded state) and the
   * float positioner `fcv` (profile float-positioner: float32 registers, refusal to FAULT).
   */
  readonly field?: boolean;
  /** The pipeline's and the drivers' logger (default: silent, or stderr with SLUICE_TEST_DEBUG=1). */
  readonly logger?: Logger;
  /**
   * The plant runs in a sluice-sim process of its own (`h.sim`, its control API), not in the
   * test's process (`h.plant`): its link and its scans keep their timing while the test's event
   * loop is blocked (a journal stall: better-sqlite3 waits synchronously). Modbus only.
   */
  readonly plantProcess?: boolean;
}

/** The bridge's profile for a simulated Modbus device, by its register layout. */
const LAYOUT_PROFILES: Readonly<Record<string, string>> = {
  'limit-switch': 'limit-switch-valve',
  float: 'float-positioner',
};

/**
 * Closes `journal` as a killed process leaves it: the batch open now (group commit's
 * transaction: this event-loop turn's writes, or every turn's while an fdatasync runs) is
 * rolled back, not committed as close() commits it — a process killed gives SQLite no COMMIT —
 * and every batch committed before it stays, in the WAL. The journal's connection is private:
 * reached here, in tests, for this alone (as commit-faults.ts reaches it for its fault).
 */
export function killJournal(journal: SqliteJournal): void {
  const { db } = (journal as unknown as { conn: { db: BetterSqlite3.Database } }).conn;
  if (db.open && db.inTransaction) db.exec('ROLLBACK');
  journal.close();
}

/** The sequence number a warm device last took (the bridge allocates around it). */
export const WARM_ECHO = 60_000;

/**
 * A pipeline on a real SQLite journal file, with the real drivers, against sluice-sim over
 * real sockets: a Modbus PLC `mb` with valves `v1`, `v2` and actuator `a1` (and, on request,
 * an OPC UA PLC `ua` with valve `u1`). The simulator's write log is the ground truth for I1.
 * `crash()` ends the process's life the way SIGKILL does (the journal's open batch lost, no
 * more journal writes, workers abandoned, connections gone): what a test needs to outlive it is
 * made durable first (`journal.durable()`), as an intake acknowledges a command only then.
 * `restart()` builds a new life on the same journal file and runs recovery. The plant keeps
 * running across both. With the option plantProcess the plant runs in a sluice-sim process of
 * its own (`sim`) instead of this one (`plant`, `device()`).
 */
export class SimHarness {
  /** The plant in its own process (the option plantProcess), else null. */
  readonly sim: SimProcess | null;
  readonly path: string;
  readonly clock: Clock;
  journal!: SqliteJournal;
  pipeline!: CommandPipeline;
  drivers!: Drivers;
  private options: SimHarnessOptions;
  private readonly dir: string;
  private readonly cleanupDir: () => void;
  private readonly logger: Logger;
  private readonly inProcess: Plant | null;
  private readonly plcs: readonly LaidOutPlc[];
  private life = 0;

  private constructor(
    plant: Plant | SimProcess,
    options: SimHarnessOptions,
    made: { dir: string; cleanup: () => void },
  ) {
    this.inProcess = plant instanceof SimProcess ? null : plant;
    this.sim = plant instanceof SimProcess ? plant : null;
    this.plcs = plant.plcs;
    this.options = options;
    this.clock = options.clock ?? systemClock;
    this.dir = made.dir;
    this.cleanupDir = made.cleanup;
    this.path = join(made.dir, 'journal.db');
    this.logger =
      options.logger ??
      (process.env.SLUICE_TEST_DEBUG === '1'
        ? pino({ level: 'debug' }, pino.destination(2))
        : silentLogger);
  }

  static async start(options: SimHarnessOptions = {}): Promise<SimHarness> {
    const travelMs = options.travelMs ?? 150;
    const scanMs = options.scanMs ?? 5;
    const plcs: Record<string, unknown> = {
      mb: {
        protocol: 'modbus',
        host: '127.0.0.1',
        port: 0,
        scanMs,
        devices: {
          v1: { profile: 'valve', base: 0, travelMs },
          v2: { profile: 'valve', base: 100, travelMs },
          a1: { profile: 'actuator', base: 200, travelMs },
          ...(options.field === true
            ? {
                lsv: { profile: 'valve', layout: 'limit-switch', base: 300, travelMs },
                fcv: {
                  profile: 'actuator',
                  layout: 'float',
                  base: 400,
                  refusal: 'fault',
                  travelMs,
                },
              }
            : {}),
        },
      },
    };
    if (options.opcua === true) {
      plcs.ua = {
        protocol: 'opcua',
        host: '127.0.0.1',
        port: 0,
        scanMs,
        devices: { u1: { profile: 'valve', travelMs } },
      };
    }
    const made = tempDir();
    if (options.plantProcess === true) {
      if (options.opcua === true) throw new Error('plantProcess: a Modbus plant only');
      const sim = await SimProcess.start(made.dir, plcs as PlantPlcs);
      if (options.warm === true) {
        const devices = Object.entries((plcs as PlantPlcs).mb!.devices);
        for (const [, device] of devices) {
          if (device.layout !== undefined) throw new Error('warm: standard-layout devices only');
          // As another master would: a stop (a no-op at rest), over Modbus.
          await sim.masterWrite('mb', device.base ?? 0, [3, 0, WARM_ECHO]);
        }
        const end = Date.now() + 5_000;
        for (const [id] of devices) {
          while ((await sim.device(id).snapshot()).seqEcho !== WARM_ECHO) {
            if (Date.now() > end) throw new Error('warm-up write not taken');
            await new Promise((r) => setTimeout(r, 5));
          }
          await sim.device(id).resetCounters();
        }
      }
      const h = new SimHarness(sim, options, made);
      await h.build();
      return h;
    }
    const plant = await startPlant(
      { control: { host: '127.0.0.1', port: 0 }, plcs } as Parameters<typeof startPlant>[0],
      { ephemeralPorts: true, control: false },
    );
    if (options.warm === true) {
      for (const device of plant.devices()) {
        // As another master would: a stop, a no-op at rest; then the ground truth starts clean.
        device.receiveWrite({ code: 3, setpoint: 0, seq: WARM_ECHO });
      }
      const end = Date.now() + 5_000;
      while (plant.devices().some((d) => d.seqEcho !== WARM_ECHO)) {
        if (Date.now() > end) throw new Error('warm-up write not taken');
        await new Promise((r) => setTimeout(r, 5));
      }
      for (const device of plant.devices()) device.resetCounters();
    }
    const h = new SimHarness(plant, options, made);
    await h.build();
    return h;
  }

  /** The plant in the test's process; throws for a plant in a process of its own (use `sim`). */
  get plant(): Plant {
    if (this.inProcess === null) {
      throw new Error('the plant runs in a sluice-sim process: use h.sim');
    }
    return this.inProcess;
  }

  device(id: string): SimDevice {
    return this.plant.device(id);
  }

  /** How many writes carrying this sequence number reached the device (I1's ground truth). */
  writesWithSeq(device: string, seq: number): number {
    return this.device(device).writesWithSeq(seq);
  }

  submit(
    key: string,
    body: Record<string, unknown>,
    options: { identity?: Identity; intake?: string } = {},
  ): SubmitOutcome {
    return this.pipeline.submit({
      key,
      identity: options.identity ?? PLANT_IDENTITY,
      intake: options.intake ?? 'https',
      request: parseCommandRequest(body),
    });
  }

  /** Resolves with the command once terminal; throws when it is not terminal by then. */
  async settled(key: string, timeoutMs = 10_000, scope = 'plant'): Promise<CommandRecord> {
    const ref: CommandRef = { scope, key };
    const record = await this.pipeline.waitForSettled(ref, timeoutMs);
    if (record === undefined) throw new Error(`no command ${key}`);
    if (record.state === 'accepted' || record.state === 'dispatched') {
      throw new Error(
        `command ${key} still ${record.state} after ${timeoutMs} ms:\n  ${this.notes(key).join('\n  ')}`,
      );
    }
    return record;
  }

  /**
   * Journals an open (or a stop) on a valve up to `dispatched` the way the pipeline does, without sending its
   * write: what a kill between the dispatch commit and the write leaves behind. (The simulator
   * cannot make the daemon die between two of its own statements; the journal rows are the
   * same.) `attempts: 2`: killed again after journaling a re-dispatch. `action`: a stop instead.
   * `device`: another valve than v1.
   */
  dispatchedNotWritten(
    key: string,
    ttlMs: number,
    attempts: 1 | 2 = 1,
    action: 'open' | 'stop' = 'open',
    device = 'v1',
  ): CommandRecord {
    const request = parseCommandRequest({ device, action, ttlMs });
    const now = Date.now();
    const claim = this.journal.claim({
      scope: 'plant',
      key,
      fingerprint: fingerprint(request),
      device,
      action,
      position: null,
      issuedAt: now,
      issuedAtSource: 'gateway',
      ttlMs,
      deadline: now + ttlMs,
      intake: 'https',
      acceptedAt: now,
    });
    const image = this.device(device).snapshot().published;
    const before: Observation = {
      state: image.state,
      position: image.position,
      seq: image.seqEcho,
      faultCode: null,
      sourceTime: new Date(image.scanTime).toISOString(),
      readAt: new Date(now).toISOString(),
    };
    const record = this.journal.markDispatched(
      claim.record,
      now,
      before,
      'pipeline',
      (last, open) => allocateSeq(last, before.seq, open),
    );
    return attempts === 2
      ? this.journal.markRedispatched(record, now, 'earlier life', 'pipeline')
      : record;
  }

  get(key: string, scope = 'plant'): CommandRecord | undefined {
    return this.journal.get({ scope, key });
  }

  notes(key: string, scope = 'plant'): string[] {
    return this.journal.history({ scope, key }).map((e) => `${e.to}: ${e.detail}`);
  }

  /** Waits (bounded) until `cond` holds, polling the ground truth. */
  async until(cond: () => boolean, timeoutMs = 5_000, what = 'condition'): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (!cond()) {
      if (Date.now() > end) throw new Error(`${what} not reached within ${timeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 2));
    }
  }

  /** Waits (bounded, 10 s) until `device`'s simulated position is at least `percent`. */
  travelledTo(device: string, percent: number): Promise<void> {
    return this.until(
      () => this.device(device).snapshot().position >= percent,
      10_000,
      `${device} at ${percent} %`,
    );
  }

  /**
   * The process dies: the journal's open batch lost (killJournal), no further journal writes,
   * its workers abandoned, its sockets gone.
   */
  async crash(): Promise<void> {
    killJournal(this.journal);
    await this.pipeline.stop(0);
    await this.drivers.close();
  }

  /**
   * The configuration of the lives built from here on (restart()): these options in place of
   * the ones given, as an operator edits the site's timings before a restart.
   */
  reconfigure(change: Partial<SimHarnessOptions>): void {
    this.options = { ...this.options, ...change };
  }

  /**
   * A new life on the same journal file: recovery runs first. Returns the open commands.
   * `beforeRecovery` is given the new life's journal before its recovery reads it.
   */
  async restart(beforeRecovery?: (journal: SqliteJournal) => void): Promise<number> {
    await this.build();
    beforeRecovery?.(this.journal);
    return this.pipeline.recover();
  }

  async close(): Promise<void> {
    await this.pipeline.stop(0);
    await this.drivers.close();
    this.journal.close();
    await (this.inProcess ?? this.sim)?.stop();
    this.cleanupDir();
  }

  inventory(): Inventory {
    const inventory: Inventory = { plcs: {}, devices: {} };
    for (const plc of this.plcs) {
      const e = plc.endpoint;
      inventory.plcs[plc.name] =
        e.protocol === 'modbus'
          ? {
              protocol: 'modbus',
              host: e.host,
              port: e.port,
              unitId: e.unitId,
              requestTimeoutMs: this.options.requestTimeoutMs ?? SIM_REQUEST_TIMEOUT_MS,
              ...(this.options.connections === undefined
                ? {}
                : { connections: this.options.connections }),
            }
          : {
              protocol: 'opcua',
              endpointUrl: e.endpointUrl,
              namespaceUri: e.namespaceUri,
              securityMode: 'None',
              securityPolicy: 'None',
              // Below the default guard (the configuration refuses a guard not longer).
              requestTimeoutMs: 350,
            };
      const grace = this.options.plcGraceMs?.[plc.name];
      if (grace !== undefined) {
        inventory.plcs[plc.name] = { ...inventory.plcs[plc.name]!, unreachableGraceMs: grace };
      }
      for (const device of plc.devices) {
        inventory.devices[device.id] = {
          plc: plc.name,
          profile: LAYOUT_PROFILES[device.layout ?? ''] ?? device.profile,
          ...(e.protocol === 'modbus' ? { base: device.config.base ?? 0 } : {}),
        };
      }
    }
    return inventory;
  }

  private async build(): Promise<void> {
    this.life++;
    const profiles = new Map<string, DeviceProfile>();
    for (const [name, p] of PROFILES) {
      profiles.set(name, { ...p, timing: { ...SIM_TIMING, ...this.options.timing } });
    }
    this.journal = SqliteJournal.open({
      path: this.path,
      busyTimeoutMs: this.options.busyTimeoutMs ?? 500,
      // As the daemon runs it: writes share fsyncs, and every acknowledgement, publication and
      // controller write waits for them.
      groupCommit: true,
    });
    this.drivers = await buildDrivers({
      inventory: this.inventory(),
      profiles,
      // One PKI for every life, as a gateway keeps its state folder across restarts: a new
      // life's OPC UA client certificate made again cost some 1.6 s of CPU (an RSA key).
      pkiDir: join(this.dir, 'pki'),
      acceptUnknownCertificates: true,
      clock: this.clock,
      logger: this.logger,
    });
    this.drivers.start();
    const bindings: DeviceBinding[] = this.drivers.bindings;
    this.pipeline = new CommandPipeline({
      journal: this.journal,
      devices: bindings,
      clock: this.clock,
      logger: this.logger,
      freshness: { maxIssuerSkewMs: this.options.maxIssuerSkewMs ?? 2_000 },
      unreachableGraceMs: this.options.unreachableGraceMs ?? 1_000,
      ...(this.options.clockPolicy === undefined ? {} : { clockPolicy: this.options.clockPolicy }),
      ...(this.options.skewMaxAgeMs === undefined
        ? {}
        : { skewMaxAgeMs: this.options.skewMaxAgeMs }),
    });
    this.pipeline.startSweep(this.options.sweepMs ?? 100);
    if (this.options.monitorMs !== undefined) this.pipeline.startMonitor(this.options.monitorMs);
  }
}
