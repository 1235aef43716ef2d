import { join } from 'node:path';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { silentLogger, type Logger } from '../../src/core/logger.js';
import { CommandPipeline } from '../../src/core/pipeline.js';
import type { ProfileTiming } from '../../src/core/profile.js';
import { Metrics } from '../../src/daemon/metrics.js';
import { buildDrivers, type Drivers } from '../../src/drivers/inventory.js';
import { IdentityRegistry, sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { PROFILES, tempDir } from './fixtures.js';
import { inventoryFor } from './plant-inventory.js';

/**
 * The daemon's core stack for intake tests: a simulated plant (one Modbus PLC with valves
 * `v1`, `v2`, one OPC UA PLC with valve `u1`, all with short travel), the real drivers, a real
 * journal file, the pipeline, identities and metrics. Intakes are started by the test.
 * `opcua: false` leaves the OPC UA PLC out, for tests that never address `u1`: its server and
 * the driver's session (a client certificate made at each start) took 2.7 CPU-seconds of a
 * stack's start and stop, against 25 ms without them.
 *
 * Identities: `plant` (token "plant-token", every device; also the MQTT identity) and `ops`
 * (token "ops-token", only `v2`).
 */
export interface Stack {
  readonly plant: Plant;
  readonly drivers: Drivers;
  readonly journal: SqliteJournal;
  readonly pipeline: CommandPipeline;
  readonly identities: IdentityRegistry;
  readonly metrics: Metrics;
  readonly dir: string;
  readonly journalPath: string;
  stop(): Promise<void>;
}

export const TOKENS = { plant: 'plant-token', ops: 'ops-token' } as const;

export const FAST_TIMING: ProfileTiming = {
  defaultTtlMs: 30_000,
  confirmTimeoutMs: 3_000,
  pollIntervalMs: 20,
  scanMs: 10,
  mismatchGraceMs: 200,
  redispatchGuardMs: 400,
};

export async function startStack(
  options: {
    travelMs?: number;
    logger?: Logger;
    timing?: Partial<ProfileTiming>;
    /** The Modbus PLC's request timeout (default inventoryFor's). */
    modbusRequestTimeoutMs?: number;
    /** The OPC UA PLC with `u1` (default true). */
    opcua?: boolean;
    /** PipelineOptions.maxQueuedPerDevice (default the pipeline's). */
    maxQueuedPerDevice?: number;
    /** The pipeline's clock (default the system's): wall steps are injected through it. */
    clock?: Clock;
  } = {},
): Promise<Stack> {
  const travelMs = options.travelMs ?? 200;
  const logger = options.logger ?? silentLogger;
  const plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: {
            v1: { profile: 'valve', base: 0, travelMs },
            v2: { profile: 'valve', base: 100, travelMs },
          },
        },
        ...(options.opcua === false
          ? {}
          : {
              ua: {
                protocol: 'opcua',
                host: '127.0.0.1',
                port: 0,
                devices: { u1: { profile: 'valve', travelMs } },
              },
            }),
      },
    },
    { ephemeralPorts: true, control: false },
  );
  const { dir, cleanup } = tempDir('sluice-stack-');
  const journalPath = join(dir, 'journal.db');
  const journal = SqliteJournal.open({ path: journalPath, busyTimeoutMs: 500, groupCommit: true });
  const inventory = inventoryFor(plant);
  const mb = inventory.plcs.mb;
  if (options.modbusRequestTimeoutMs !== undefined && mb?.protocol === 'modbus') {
    inventory.plcs.mb = { ...mb, requestTimeoutMs: options.modbusRequestTimeoutMs };
  }
  const drivers = await buildDrivers({
    inventory,
    profiles: PROFILES,
    pkiDir: join(dir, 'pki'),
    acceptUnknownCertificates: true,
    clock: systemClock,
    logger,
  });
  drivers.start();
  const timing = { ...FAST_TIMING, ...options.timing };
  const pipeline = new CommandPipeline({
    journal,
    devices: drivers.bindings.map((b) => ({ ...b, profile: { ...b.profile, timing } })),
    clock: options.clock ?? systemClock,
    logger,
    freshness: { maxIssuerSkewMs: 5_000 },
    ...(options.maxQueuedPerDevice === undefined
      ? {}
      : { maxQueuedPerDevice: options.maxQueuedPerDevice }),
  });
  // As the daemon runs it: open commands without a worker are taken up every second (a claim
  // lost with its batch's COMMIT while its device's worker held it leaves the device waiting
  // for the sweep).
  pipeline.startSweep(1_000);
  const identities = new IdentityRegistry({
    plant: { tokenSha256: sha256(TOKENS.plant).toString('hex'), devices: ['*'] },
    ops: { tokenSha256: sha256(TOKENS.ops).toString('hex'), devices: ['v2'] },
  });
  const metrics = new Metrics(pipeline, systemClock);
  // The OPC UA session opens in the background; wait for it so tests start from a known state.
  const u1 = drivers.bindings.find((b) => b.id === 'u1');
  const end = Date.now() + 20_000;
  while (u1 !== undefined) {
    try {
      await u1.driver.read();
      break;
    } catch (error) {
      if (Date.now() > end) throw error;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
  return {
    plant,
    drivers,
    journal,
    pipeline,
    identities,
    metrics,
    dir,
    journalPath,
    stop: async () => {
      await pipeline.stop(0);
      await drivers.close();
      journal.close();
      await plant.stop();
      cleanup();
    },
  };
}
