/**
 * The simulated plant: the composition root of sluice-sim. It builds the PLCs of a plant file,
 * starts their protocol front ends, their scan cycles and the control API in that order, and
 * stops them in reverse (a last-in-first-out cleanup stack, also used when start-up fails).
 */
import { pino } from 'pino';
import type { Logger } from 'pino';
import { realTime } from './clock.js';
import type { TimeSource } from './clock.js';
import { ControlApi } from './control-api.js';
import { UnknownDeviceError, UnknownPlcError } from './errors.js';
import { ModbusPlcServer } from './modbus-server.js';
import { parsePlant } from './plant-file.js';
import type { PlantConfig, PlantInput } from './plant-file.js';
import { SimPlc } from './plc.js';
import type { SimDevice } from './plc.js';

export { loadPlantFile, parsePlant, parsePlantYaml } from './plant-file.js';
export type { PlantConfig, PlantInput } from './plant-file.js';
export { ManualTime, realTime } from './clock.js';
export type { TimeSource, ClockSettings } from './clock.js';
export { SimDevice, SimPlc } from './plc.js';
export type {
  DeviceSnapshot,
  PlcEndpoint,
  DeviceFaultInput,
  PowerCycleOptions,
  PowerCycleResult,
} from './plc.js';
export type { WriteLogEntry, WriteOutcome } from './write-log.js';
export type { ActiveFault, Fault, FaultInput, FaultKind } from './faults.js';
export type {
  CommandLogEntry,
  CommandOutcome,
  DeviceCounters,
  PublishedStatus,
} from './controller.js';

export interface StartPlantOptions {
  /** Time source for travel and the controller clocks (default: real time). */
  time?: TimeSource;
  /** No scan timers: the caller steps every PLC with plant.scan(). */
  manualScan?: boolean;
  /** Bind every listener (PLCs and control API) to an ephemeral port, for parallel tests. */
  ephemeralPorts?: boolean;
  /** Start the HTTP control API (default true). */
  control?: boolean;
  /** Directory for the OPC UA servers' PKI (default: a temporary directory per server). */
  pkiDir?: string;
  /**
   * pkiDir is this plant's own, kept from one of its starts to the next (the demo's
   * .state/demo/sim-pki): a server's certificate and key there are used again while they serve
   * (readable, valid, made for this host) and made anew otherwise, and locks a killed start left
   * are removed. Default false: the folder is used as found (a test's expired certificate is
   * served as it is).
   */
  ownsPki?: boolean;
  /** Random source for probabilistic faults (default Math.random). */
  random?: () => number;
  logger?: Logger;
}

interface FrontEnd {
  stop(): Promise<void>;
}

export class Plant {
  readonly config: PlantConfig;
  readonly plcs: readonly SimPlc[];
  readonly #cleanup: (() => Promise<void> | void)[] = [];
  #controlUrl: string | undefined;
  #stopping: Promise<void> | undefined;

  /** Use startPlant(); the constructor only builds, it does not listen. */
  constructor(config: PlantConfig, plcs: readonly SimPlc[]) {
    this.config = config;
    this.plcs = plcs;
  }

  /** Base URL of the control API, e.g. http://127.0.0.1:5080 (undefined when disabled). */
  get controlUrl(): string | undefined {
    return this.#controlUrl;
  }

  plc(name: string): SimPlc {
    const plc = this.plcs.find((p) => p.name === name);
    if (plc === undefined) throw new UnknownPlcError(name);
    return plc;
  }

  device(id: string): SimDevice {
    for (const plc of this.plcs) {
      const device = plc.device(id);
      if (device !== undefined) return device;
    }
    throw new UnknownDeviceError(id);
  }

  devices(): SimDevice[] {
    return this.plcs.flatMap((plc) => [...plc.devices]);
  }

  /** One scan of every PLC at the time source's current time (for manualScan). */
  scan(): void {
    for (const plc of this.plcs) plc.scan();
  }

  /** Stops the control API, the scan cycles and the front ends, in reverse start order. */
  stop(): Promise<void> {
    this.#stopping ??= this.#unwind();
    return this.#stopping;
  }

  /** @internal */
  async start(options: StartPlantOptions, logger: Logger): Promise<void> {
    const ephemeral = options.ephemeralPorts === true;
    try {
      for (const plc of this.plcs) {
        const config = ephemeral ? { ...plc.config, port: 0 } : plc.config;
        const frontEnd: FrontEnd & { start(): Promise<SimPlc['endpoint']> } =
          config.protocol === 'modbus'
            ? new ModbusPlcServer(plc, config)
            : // node-opcua takes seconds to load and prints warnings as it does: loaded only
              // for a plant with an OPC UA PLC.
              new (await import('./opcua-server.js')).OpcuaPlcServer(plc, config, {
                pkiDir: options.pkiDir,
                ownsPki: options.ownsPki,
                logger,
              });
        this.#cleanup.push(() => frontEnd.stop());
        plc.endpoint = await frontEnd.start();
        logger.info({ plc: plc.name, endpoint: plc.endpoint }, 'PLC listening');
      }
      if (options.manualScan !== true) {
        for (const plc of this.plcs) {
          plc.startScanning();
          this.#cleanup.push(() => {
            plc.stopScanning();
          });
        }
      } else {
        this.scan();
      }
      if (options.control !== false) {
        const api = new ControlApi(this);
        this.#cleanup.push(() => api.stop());
        this.#controlUrl = await api.start(
          this.config.control.host,
          ephemeral ? 0 : this.config.control.port,
        );
        logger.info({ url: this.#controlUrl }, 'control API listening');
      }
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  async #unwind(): Promise<void> {
    const errors: unknown[] = [];
    for (let step = this.#cleanup.pop(); step !== undefined; step = this.#cleanup.pop()) {
      try {
        await step();
      } catch (err) {
        errors.push(err);
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1)
      throw new AggregateError(errors, 'several parts of the plant failed to stop');
  }
}

/** Validates the plant, starts every PLC and the control API; resolves once all listen. */
export async function startPlant(
  plant: PlantInput | PlantConfig,
  options: StartPlantOptions = {},
): Promise<Plant> {
  const config = parsePlant(plant);
  const logger = options.logger ?? pino({ level: 'silent' });
  const time = options.time ?? realTime;
  const random = options.random ?? Math.random;
  const plcs = Object.entries(config.plcs).map(
    ([name, plc]) => new SimPlc(name, plc, { time, random, logger }),
  );
  const running = new Plant(config, plcs);
  await running.start(options, logger);
  return running;
}
