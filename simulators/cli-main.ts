/**
 * The sluice-sim command, separate from the executable (cli.ts) so tests can run it in-process
 * with their own streams and stop signal.
 */
import { parseArgs } from 'node:util';
import { pino, type Logger } from 'pino';
import { PlantFileError } from './errors.js';
import { defaultPlantPath } from './package-root.js';
import { loadPlantFile, startPlant } from './plant.js';
import type { Plant, SimDevice } from './plant.js';
import type { PlantConfig } from './plant-file.js';

export interface CliIo {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
  /** Aborted on SIGTERM / SIGINT: stop the plant and return. */
  signal: AbortSignal;
  /**
   * Awaited with the plant file and the plant's logger before the plant starts. The executable
   * routes node-opcua's messages into the logger when the plant has an OPC UA PLC
   * (opcua-messages.ts); that changes node-opcua's loggers for the whole process, so a test
   * running the CLI in its own process leaves it out.
   */
  beforeStart?: (plant: PlantConfig, logger: Logger) => Promise<void>;
}

const USAGE = `Usage: sluice-sim [--plant FILE] [--log-level LEVEL]

Runs the simulated PLCs of a plant file (default: simulators/plants/default.yaml in the
package) and the loopback control API until SIGTERM or SIGINT.

  -p, --plant FILE       plant file (YAML)
      --log-level LEVEL  pino level for the JSON log on stderr (default: warn)
  -h, --help             show this help
`;

/** Exit codes: 0 stopped cleanly, 1 failed at run time, 2 bad usage or plant file. */
export async function runCli(argv: string[], io: CliIo): Promise<number> {
  let values: {
    plant?: string | undefined;
    'log-level'?: string | undefined;
    help?: boolean | undefined;
  };
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        plant: { type: 'string', short: 'p' },
        'log-level': { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (err) {
    io.stderr.write(`sluice-sim: ${err instanceof Error ? err.message : String(err)}\n\n${USAGE}`);
    return 2;
  }
  if (values.help === true) {
    io.stdout.write(USAGE);
    return 0;
  }
  const level = values['log-level'] ?? 'warn';
  if (!Object.hasOwn(pino.levels.values, level) && level !== 'silent') {
    io.stderr.write(`sluice-sim: unknown log level "${level}"\n`);
    return 2;
  }
  const logger = pino(
    { level, base: { name: 'sluice-sim' } },
    pino.destination({ fd: 2, sync: true }),
  );

  const plantPath = values.plant ?? defaultPlantPath();
  let plant: Plant;
  try {
    const config = await loadPlantFile(plantPath);
    await io.beforeStart?.(config, logger);
    plant = await startPlant(config, { logger });
  } catch (err) {
    if (err instanceof PlantFileError) {
      io.stderr.write(`sluice-sim: ${err.message}\n`);
      return 2;
    }
    io.stderr.write(
      `sluice-sim: cannot start the plant: ${err instanceof Error ? err.message : String(err)}\n`,
    );
    return 1;
  }

  io.stdout.write(`sluice-sim: plant ${plantPath}\n`);
  for (const plc of plant.plcs) {
    const endpoint = plc.endpoint;
    const where =
      endpoint.protocol === 'modbus'
        ? `modbus tcp://${endpoint.host}:${endpoint.port} unit ${endpoint.unitId}`
        : `opcua  ${endpoint.endpointUrl} ns ${endpoint.namespaceUri}`;
    const devices = plc.devices.map(deviceLabel).join(', ');
    io.stdout.write(`${plc.name}: ${where} — ${devices}\n`);
  }
  if (plant.controlUrl !== undefined) io.stdout.write(`control: ${plant.controlUrl}\n`);

  if (!io.signal.aborted) {
    await new Promise<void>((resolve) => {
      io.signal.addEventListener(
        'abort',
        () => {
          resolve();
        },
        { once: true },
      );
    });
  }
  try {
    await plant.stop();
  } catch (err) {
    io.stderr.write(
      `sluice-sim: unclean stop: ${err instanceof Error ? err.message : String(err)}\n`,
    );
    return 1;
  }
  io.stdout.write('sluice-sim: stopped\n');
  return 0;
}

/** `inlet-valve (valve @0)`; a vendor layout is named: `lsv-101 (valve limit-switch @100)`. */
function deviceLabel(device: SimDevice): string {
  const { base, layout } = device;
  if (base === undefined || layout === undefined) return `${device.id} (${device.profile})`;
  const named = layout === 'standard' ? '' : ` ${layout}`;
  return `${device.id} (${device.profile}${named} @${base})`;
}
