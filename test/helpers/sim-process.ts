import { spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import ModbusSerial from 'modbus-serial';
import type { ModbusRTU } from 'modbus-serial/ModbusRTU.js';
import { MODBUS_COMMAND_OFFSET } from '../../simulators/codes.js';
import type { DeviceSnapshot, PlcEndpoint } from '../../simulators/plc.js';
import type { WriteLogEntry } from '../../simulators/write-log.js';
import { nodeArgs } from './entry.js';

/** A device of the plant file, as the bridge's inventory needs it. */
export interface LaidOutDevice {
  readonly id: string;
  readonly profile: string;
  readonly layout?: string | undefined;
  readonly config: { readonly base?: number | undefined };
}

/** A PLC of the plant, listening: what the bridge's inventory is made from. */
export interface LaidOutPlc {
  readonly name: string;
  readonly endpoint: PlcEndpoint;
  readonly devices: readonly LaidOutDevice[];
}

/** The plant file's `plcs` section, as SimHarness writes it. */
export type PlantPlcs = Readonly<
  Record<
    string,
    {
      readonly protocol: 'modbus' | 'opcua';
      readonly devices: Readonly<
        Record<
          string,
          { readonly profile: string; readonly base?: number; readonly layout?: string }
        >
      >;
    } & Record<string, unknown>
  >
>;

/**
 * One device of a plant that runs in a sluice-sim process: what a test does to it and reads of
 * it, through the plant's control API (the same calls as on an in-process SimDevice, awaited).
 */
export class RemoteDevice {
  constructor(
    private readonly sim: SimProcess,
    readonly id: string,
  ) {}

  /** PUT /devices/{id}/faults/{kind}: the fault's parameters as SimDevice.setFault takes them. */
  async setFault(fault: { kind: string } & Record<string, unknown>): Promise<void> {
    const { kind, ...params } = fault;
    await this.sim.call('PUT', `/devices/${this.id}/faults/${kind}`, params);
  }

  async clearFault(kind: string): Promise<void> {
    await this.sim.call('DELETE', `/devices/${this.id}/faults/${kind}`);
  }

  async clearFaults(): Promise<void> {
    await this.sim.call('DELETE', `/devices/${this.id}/faults`);
  }

  async setLocal(local: boolean, position?: number): Promise<void> {
    await this.sim.call('POST', `/devices/${this.id}/local`, {
      local,
      ...(position === undefined ? {} : { position }),
    });
  }

  async snapshot(): Promise<DeviceSnapshot> {
    return (await this.sim.call('GET', `/devices/${this.id}`)) as DeviceSnapshot;
  }

  /** The full write log (I1's ground truth), in arrival order. */
  async writeLog(): Promise<WriteLogEntry[]> {
    const answer = (await this.sim.call('GET', `/devices/${this.id}/writes`)) as {
      writes: WriteLogEntry[];
      dropped: number;
    };
    if (answer.dropped > 0) throw new Error(`${this.id}: the write log dropped entries`);
    return answer.writes;
  }

  /** Zeroes the counters and the command, write and read logs. */
  async resetCounters(): Promise<void> {
    await this.sim.call('POST', `/devices/${this.id}/counters/reset`);
  }
}

/**
 * The simulated plant in a process of its own — `sluice-sim --plant FILE`, as an operator runs
 * it — driven through its loopback control API. Its PLCs answer on their own event loop: a test
 * process that blocks its loop (better-sqlite3 waiting synchronously on a locked journal, up
 * to the busy bound, at every journal write of a stall) does not hold up the simulated link's
 * timers and sockets, as it does a plant started in the test's process. A real PLC is not on
 * the bridge's event loop; an in-process plant delivered a write held on the link hundreds of
 * milliseconds later than its fault said, past the redispatch guard the profile's contract
 * bounds such holds by.
 */
export class SimProcess {
  private constructor(
    private readonly child: ChildProcess,
    /** The control API's base URL as sluice-sim printed it (`http://127.0.0.1:<port>`). */
    readonly controlUrl: string,
    readonly plcs: readonly LaidOutPlc[],
    private readonly output: () => string,
  ) {}

  /** Starts sluice-sim on `plcs` (every port ephemeral), the plant file written into `dir`. */
  static async start(dir: string, plcs: PlantPlcs): Promise<SimProcess> {
    const file = join(dir, 'plant.yaml');
    const ephemeral = Object.fromEntries(
      Object.entries(plcs).map(([name, plc]) => [name, { ...plc, host: '127.0.0.1', port: 0 }]),
    );
    // JSON is YAML: the plant file as the simulator's schema reads it.
    writeFileSync(
      file,
      `${JSON.stringify({ control: { host: '127.0.0.1', port: 0 }, plcs: ephemeral }, null, 2)}\n`,
    );
    const child = spawn(process.execPath, [...nodeArgs('simulators/cli.ts'), '--plant', file], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    child.stdout.on('data', (chunk: Buffer) => (out += chunk.toString()));
    child.stderr.on('data', (chunk: Buffer) => (out += chunk.toString()));
    const exited = new Promise<void>((resolve) =>
      child.once('exit', () => {
        resolve();
      }),
    );
    // A set-up bound, not a speed check: loading node-opcua and starting its servers took over 30 s
    // at load ~20 with four files starting OPC UA plants at once.
    const end = Date.now() + 90_000;
    const listening = (): RegExpExecArray | null => /^control: (\S+)$/m.exec(out);
    while (listening() === null) {
      if (child.exitCode !== null || child.signalCode !== null || Date.now() > end) {
        child.kill('SIGKILL');
        await exited;
        throw new Error(`sluice-sim did not start:\n${out}`);
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    const controlUrl = listening()![1]!;
    const laidOut = Object.entries(plcs).map(([name, plc]): LaidOutPlc => {
      const line = new RegExp(`^${name}: (.*) — `, 'm').exec(out)?.[1];
      const modbus =
        line === undefined ? null : /^modbus tcp:\/\/(.+):(\d+) unit (\d+)$/.exec(line);
      const opcua = line === undefined ? null : /^opcua +(\S+) ns (\S+)$/.exec(line);
      const endpoint: PlcEndpoint | null =
        modbus !== null
          ? {
              protocol: 'modbus',
              host: modbus[1]!,
              port: Number(modbus[2]),
              unitId: Number(modbus[3]),
            }
          : opcua !== null
            ? { protocol: 'opcua', endpointUrl: opcua[1]!, namespaceUri: opcua[2]! }
            : null;
      if (endpoint === null) throw new Error(`sluice-sim printed no endpoint for ${name}:\n${out}`);
      const devices = Object.entries(plc.devices).map(([id, d]) => ({
        id,
        profile: d.profile,
        layout: d.layout,
        config: { base: d.base },
      }));
      return { name, endpoint, devices };
    });
    return new SimProcess(child, controlUrl, laidOut, () => out);
  }

  device(id: string): RemoteDevice {
    return new RemoteDevice(this, id);
  }

  /**
   * POST /plcs/{plc}/refuse-connections: the PLC resets its connections and refuses connects
   * for `ms`, its controller running on (simulators/README.md, "Refusal of connections") — at
   * once, or once it has answered its next read of the device `afterReadOf`.
   */
  async refuseConnections(plc: string, ms: number, afterReadOf?: string): Promise<void> {
    await this.call('POST', `/plcs/${plc}/refuse-connections`, {
      ms,
      ...(afterReadOf === undefined ? {} : { afterReadOf }),
    });
  }

  /**
   * As another master would (an engineering station's write, outside the bridge): one FC16 of
   * the command block `[code, setpoint, seq]` of a standard-layout device at `base`.
   */
  async masterWrite(
    plc: string,
    base: number,
    block: readonly [number, number, number],
  ): Promise<void> {
    const endpoint = this.plcs.find((p) => p.name === plc)?.endpoint;
    if (endpoint?.protocol !== 'modbus') throw new Error(`${plc} is not a Modbus PLC of the plant`);
    const client = new (ModbusSerial as unknown as new () => ModbusRTU)();
    await client.connectTCP(endpoint.host, { port: endpoint.port });
    try {
      client.setID(endpoint.unitId);
      client.setTimeout(2_000);
      await client.writeRegisters(base + MODBUS_COMMAND_OFFSET, [...block]);
    } finally {
      await new Promise<void>((resolve) => {
        client.close(() => {
          resolve();
        });
      });
    }
  }

  /** One control API call; its JSON answer, or an Error with the plant's `{ code, message }`. */
  async call(method: string, path: string, body?: unknown): Promise<unknown> {
    const response = await fetch(`${this.controlUrl}${path}`, {
      method,
      ...(body === undefined
        ? {}
        : { body: JSON.stringify(body), headers: { 'Content-Type': 'application/json' } }),
    });
    const answer = await response.json();
    if (!response.ok) {
      throw new Error(`sluice-sim ${method} ${path}: ${response.status} ${JSON.stringify(answer)}`);
    }
    return answer;
  }

  /**
   * SIGSTOP (true) or SIGCONT (false): a frozen PLC process. Its kernel still completes TCP
   * handshakes on the listening socket (until the backlog fills), but nothing answers.
   */
  freeze(frozen: boolean): void {
    this.child.kill(frozen ? 'SIGSTOP' : 'SIGCONT');
  }

  /** SIGTERM, and waits for the exit (SIGKILL after 10 s); throws on an unclean stop. */
  async stop(): Promise<void> {
    const child = this.child;
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<number | null>((resolve) =>
      child.once('exit', (code) => {
        resolve(code);
      }),
    );
    child.kill('SIGTERM');
    const killer = setTimeout(() => child.kill('SIGKILL'), 10_000);
    const code = await exited;
    clearTimeout(killer);
    if (code !== 0) throw new Error(`sluice-sim stopped with ${String(code)}:\n${this.output()}`);
  }
}
