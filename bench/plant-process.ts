/**
 * The bench's simulated plant, in a process of its own so that its scan cycles and protocol
 * servers neither slow down nor are slowed down by the load generator or the daemon's event
 * loop. Started by the bench with the plant (already cut to the run's valves and scan) as a
 * JSON argument; answers with the bound endpoints and, on request, the write counters and
 * write logs that are the ground truth for "no controller write".
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { startPlant, type PlantInput, type PlcEndpoint } from '../simulators/plant.js';
import { onStop, ready, serve } from './child-ipc.js';
import { TRACE_DIR } from './trace.js';

export interface PlantReady {
  readonly plcs: readonly {
    readonly name: string;
    readonly endpoint: PlcEndpoint;
    readonly scanMs: number;
    readonly devices: readonly { readonly id: string; readonly base: number | null }[];
  }[];
}

/** What a write log says of one device: when each write arrived and when a scan took it. */
export interface TakeWaits {
  /** Controller ms from a write's arrival to the scan that took it. */
  readonly waits: readonly number[];
}

const plantInput = JSON.parse(process.argv[2] ?? '{}') as PlantInput;
// node-opcua's own warnings go to this process's log, not to the bench's table.
const plant = await startPlant(plantInput, {
  ephemeralPorts: true,
  control: false,
  logger: pino({ level: 'warn' }),
});

serve({
  /** Command writes each device received (every write that touched its sequence number). */
  writes: () => {
    const byDevice: Record<string, number> = {};
    let total = 0;
    for (const device of plant.devices()) {
      byDevice[device.id] = device.counters.writesReceived;
      total += device.counters.writesReceived;
    }
    return { total, byDevice };
  },
  /** Each device's live state (the bench alternates open and close from it). */
  states: () => Object.fromEntries(plant.devices().map((d) => [d.id, d.snapshot().state])),
  /** When a scan took each of a device's writes (controller ms), by sequence number. */
  taken: (args): Record<string, number> => {
    const { device } = args as { device: string };
    const out: Record<string, number> = {};
    for (const w of plant.device(device).writeLog) {
      if (w.outcome === 'accepted' && w.settledAt !== null) out[String(w.seq)] = w.settledAt;
    }
    return out;
  },
  takeWaits: (args): TakeWaits => {
    const { device } = args as { device: string };
    const waits = plant
      .device(device)
      .writeLog.flatMap((w) => (w.settledAt === null ? [] : [w.settledAt - w.receivedAt]));
    return { waits };
  },
});

onStop(() => {
  // SLUICE_BENCH_TRACE (bench/trace.ts): every device's write log, for the daemons' traces.
  if (TRACE_DIR !== undefined) {
    mkdirSync(TRACE_DIR, { recursive: true });
    const logs = Object.fromEntries(plant.devices().map((d) => [d.id, d.writeLog]));
    writeFileSync(join(TRACE_DIR, `plant-${process.pid}.json`), JSON.stringify(logs));
  }
  return plant.stop();
});

const info: PlantReady = {
  plcs: plant.plcs.map((plc) => ({
    name: plc.name,
    endpoint: plc.endpoint,
    scanMs: plc.config.scanMs,
    devices: [...plc.devices].map((d) => ({
      id: d.id,
      base: 'base' in d.config ? (d.config.base ?? null) : null,
    })),
  })),
};
ready(info);
