import { join } from 'node:path';
import type { BenchChild } from './children.js';
import type { CompiledTree } from './compile.js';
import type { FsyncShim } from './fsync-counter.js';
import type { Broker } from './mosquitto.js';
import type { BenchOptions } from './options.js';
import type { PlantReady } from './plant-process.js';
import type { Credentials, ProfileSetup } from './site.js';

/** What every phase of a run shares: its settings, scratch folder and running parts. */
export interface RunContext {
  readonly options: BenchOptions;
  /** Scratch folder of the run (journals, logs, site files); removed at the end. */
  readonly dir: string;
  readonly plant: { readonly child: BenchChild; readonly info: PlantReady };
  readonly credentials: Credentials;
  readonly profiles: ProfileSetup;
  /** The broker, or why there is none. */
  readonly broker: Broker | { readonly skipped: string };
  readonly shim: FsyncShim;
  /** The project compiled for the bench's child processes. */
  readonly compiled: CompiledTree;
  /** Progress on stderr, so that stdout carries the table alone. */
  progress(line: string): void;
}

export function logFile(ctx: RunContext, name: string): string {
  return join(ctx.dir, `${name}.log`);
}

export function modbusValves(ctx: RunContext): string[] {
  const plc = ctx.plant.info.plcs.find((p) => p.endpoint.protocol === 'modbus');
  return plc === undefined ? [] : plc.devices.map((d) => d.id);
}

/**
 * Registers from one Modbus valve's first to the next's in the bench plant (bench/plant.yaml):
 * a request that addresses them is that valve's.
 */
export const VALVE_SPAN = 16;

/** Each Modbus valve's first register (its `base` in the plant file). */
export function valveBases(ctx: RunContext): Map<string, number> {
  const plc = ctx.plant.info.plcs.find((p) => p.endpoint.protocol === 'modbus');
  const bases = new Map<string, number>();
  for (const d of plc?.devices ?? []) if (d.base !== null) bases.set(d.id, d.base);
  return bases;
}

export function opcuaValve(ctx: RunContext): string | null {
  const plc = ctx.plant.info.plcs.find((p) => p.endpoint.protocol === 'opcua');
  return plc?.devices[0]?.id ?? null;
}

export function isBroker(b: RunContext['broker']): b is Broker {
  return 'url' in b;
}

/** The plant's total of command writes received, from its write counters. */
export async function controllerWrites(ctx: RunContext): Promise<number> {
  const w = await ctx.plant.child.request<{ total: number }>('writes');
  return w.total;
}
