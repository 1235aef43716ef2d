import { SimHarness, WARM_ECHO, type SimHarnessOptions } from './sim-harness.js';
import { tempDir } from './fixtures.js';
import { SimProcess, type PlantPlcs } from './sim-process.js';

/** What the OPC UA plant takes of SimHarnessOptions (the rest are the Modbus plant's). */
export type OpcuaSimHarnessOptions = Pick<
  SimHarnessOptions,
  'travelMs' | 'scanMs' | 'busyTimeoutMs' | 'warm' | 'timing' | 'logger'
>;

/** The parts of SimHarness that SimHarness.start keeps to itself (TypeScript-private only). */
type Unsealed = new (
  plant: SimProcess,
  options: SimHarnessOptions,
  made: { dir: string; cleanup: () => void },
) => SimHarness;

/**
 * SimHarness's plant — valves `v1`, `v2` and the actuator `a1` — on an OPC UA PLC `ua` (where
 * SimHarness.start puts them on the Modbus PLC `mb`), in a sluice-sim process of its own, with
 * the real OPC UA driver (one long-lived session per endpoint) under the same pipeline and
 * SQLite journal: the same `submit`, `crash`, `restart`, `notes` and `sim` (its control API).
 *
 * SimHarness.start builds the Modbus plant only and its constructor is private; the harness is
 * made here on that constructor and its own build (both private to TypeScript alone), so that
 * every life (inventory, drivers, pipeline, sweep) is built by the same code as on Modbus.
 *
 * `warm`: every device first takes another master's stop carrying sequence number WARM_ECHO
 * (a no-op at rest), written with the harness's own OPC UA driver outside the pipeline (the
 * journal knows nothing of it), then the simulator's counters and logs are cleared: its echo is
 * no longer the power-up one, as on SimHarness's warm Modbus plant.
 */
export async function startOpcuaSimHarness(
  options: OpcuaSimHarnessOptions = {},
): Promise<SimHarness> {
  const travelMs = options.travelMs ?? 150;
  // The plant file's own device fields (travelMs) beyond what PlantPlcs names.
  const plcs = {
    ua: {
      protocol: 'opcua',
      scanMs: options.scanMs ?? 5,
      devices: {
        v1: { profile: 'valve', travelMs },
        v2: { profile: 'valve', travelMs },
        a1: { profile: 'actuator', travelMs },
      },
    },
  } as unknown as PlantPlcs;
  const made = tempDir();
  let sim: SimProcess;
  try {
    sim = await SimProcess.start(made.dir, plcs);
  } catch (error) {
    made.cleanup();
    throw error;
  }
  const h = new (SimHarness as unknown as Unsealed)(sim, { ...options, plantProcess: true }, made);
  try {
    await (h as unknown as { build(): Promise<void> }).build();
    if (options.warm === true) await warmUp(h, sim);
  } catch (error) {
    await h.close().catch(() => undefined);
    throw error;
  }
  return h;
}

async function warmUp(h: SimHarness, sim: SimProcess): Promise<void> {
  const end = Date.now() + 30_000;
  for (const binding of h.drivers.bindings) {
    // The first session (node-opcua's load, the client certificate) takes seconds.
    await h.until(() => binding.driver.health().connected, 30_000, `${binding.id}'s session`);
    for (;;) {
      try {
        await binding.driver.write({ action: 'stop', position: null, seq: WARM_ECHO });
        break;
      } catch (error) {
        if (Date.now() > end) throw error;
        await new Promise((r) => setTimeout(r, 50));
      }
    }
  }
  for (const binding of h.drivers.bindings) {
    const device = sim.device(binding.id);
    while ((await device.snapshot()).seqEcho !== WARM_ECHO) {
      if (Date.now() > end) throw new Error(`${binding.id}: warm-up write not taken`);
      await new Promise((r) => setTimeout(r, 5));
    }
    await device.resetCounters();
  }
}
