import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { createConnection, createServer } from 'node:net';
import { join } from 'node:path';
import type {
  IClientOptions,
  IClientPublishOptions,
  IConnackPacket,
  IPublishPacket,
  MqttClient,
} from 'mqtt';
import { mqttConfigSchema } from '../../src/config/config.js';
import type { MqttConfig } from '../../src/intake/mqtt.js';
import { tempDir } from './fixtures.js';
import { hasCommand, realComponent } from './real.js';

/**
 * A real mosquitto broker for intake tests: loopback only, anonymous, with persistence in a
 * temporary directory so that a restart (SIGTERM, then start again on the same port) keeps
 * persistent sessions and the messages queued or in flight for them.
 */
export const mosquittoAvailable = (): boolean =>
  realComponent('mosquitto', hasCommand('mosquitto'), 'apt-get install mosquitto');

export interface Mosquitto {
  readonly port: number;
  readonly url: string;
  readonly dir: string;
  running(): boolean;
  /** The broker's process id while it runs (a test freezes it with SIGSTOP). */
  pid(): number | null;
  /** SIGTERM and wait for exit: mosquitto writes its persistence file on the way out. */
  stop(): Promise<void>;
  /**
   * SIGKILL and wait for exit: a crash or power cut. Mosquitto writes its persistence file only
   * on a clean stop and every `autosave_interval`, so what changed since the last save is lost.
   */
  kill(): Promise<void>;
  /** Starts again on the same port with the same persistence. */
  restart(): Promise<void>;
  /** Stops the broker and removes its directory. */
  close(): Promise<void>;
  log(): string;
  /** PUBACKs the broker received from a client: acknowledgements of messages sent to it. */
  pubacksFrom(clientId: string): number;
  /** Connections the broker accepted from a client id ("New client connected … as ID (…"). */
  connectionsOf(clientId: string): number;
  /** Messages the broker sent to a client on a topic, with their DUP flag (a redelivery). */
  deliveriesTo(clientId: string, topic: string): { readonly mid: number; readonly dup: boolean }[];
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address !== null ? address.port : 0;
      server.close(() => {
        resolve(port);
      });
    });
  });
}

/**
 * Whether something accepts a connection on 127.0.0.1:`port`: a broker seen listening as its
 * clients see it. Not by listening there a moment to see the port refused, which holds the port
 * for that moment: a Mosquitto binding it then exits with "Error: Address already in use".
 */
export function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

/**
 * A bridge from this broker to another (mosquitto.conf(5), "Configuring Bridges"): this broker
 * connects to `address` as the client `clientId` with a persistent session, so the remote
 * broker keeps the QoS 1 messages of its `in` topics while the bridge is down.
 */
export interface MosquittoBridge {
  /** The connection's name. */
  readonly name: string;
  /** `host:port` of the remote broker. */
  readonly address: string;
  /** The bridge's client id at the remote broker (its persistent session there). */
  readonly clientId: string;
  /** `topic` lines: `pattern direction qos`, e.g. `sluice/gw-a/cmd/# in 1`. */
  readonly topics: readonly string[];
  /** Seconds between reconnection attempts (default 1: tests wait on reconnections). */
  readonly restartTimeoutS?: number;
}

export interface MosquittoOptions {
  /** Bridges this broker opens to other brokers. */
  readonly bridges?: readonly MosquittoBridge[];
  /** Further mosquitto.conf(5) lines for the listener, e.g. `max_packet_size 400`. */
  readonly settings?: readonly string[];
}

function bridgeConfig(bridge: MosquittoBridge): string[] {
  return [
    `connection ${bridge.name}`,
    `address ${bridge.address}`,
    `remote_clientid ${bridge.clientId}`,
    `local_clientid ${bridge.clientId}-local`,
    // A persistent session at the remote: QoS 1 messages for the `in` topics wait there.
    'cleansession false',
    `restart_timeout ${bridge.restartTimeoutS ?? 1}`,
    'keepalive_interval 5',
    // The bridge's state, 1 or 0, on $SYS/broker/connection/<remote_clientid>/state at both
    // ends (at the remote by the bridge's Last Will when the link breaks).
    'notifications true',
    ...bridge.topics.map((t) => `topic ${t}`),
  ];
}

export async function startMosquitto(options: MosquittoOptions = {}): Promise<Mosquitto> {
  const { dir, cleanup } = tempDir('sluice-mosquitto-');
  const port = await freePort();
  const conf = join(dir, 'mosquitto.conf');
  const logFile = join(dir, 'mosquitto.log');
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'persistence true',
      `persistence_location ${dir}/`,
      'persistence_file mosquitto.db',
      `log_dest file ${logFile}`,
      'log_type all',
      'log_timestamp_format %H:%M:%S',
      // As root mosquitto would switch to the `mosquitto` user, who cannot write the temp dir.
      ...(isRoot ? ['user root'] : []),
      ...(options.settings ?? []),
      // Bridges come last: every line after `connection` belongs to that bridge.
      ...(options.bridges ?? []).flatMap(bridgeConfig),
      '',
    ].join('\n'),
  );
  let child: ChildProcess | null = null;

  const start = async (): Promise<void> => {
    const proc = spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'ignore', 'pipe'] });
    child = proc;
    let stderr = '';
    proc.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString();
    });
    const status = { exited: false };
    proc.once('exit', () => {
      status.exited = true;
    });
    const end = Date.now() + 10_000;
    for (;;) {
      if (status.exited) throw new Error(`mosquitto exited at start: ${stderr}\n${readLog()}`);
      if (await accepts(port)) return;
      if (Date.now() > end) throw new Error(`mosquitto did not listen on ${port}: ${readLog()}`);
      await new Promise((r) => setTimeout(r, 25));
    }
  };

  const readLog = (): string => {
    try {
      return readFileSync(logFile, 'utf8');
    } catch {
      return '';
    }
  };

  const stop = async (signal: 'SIGTERM' | 'SIGKILL' = 'SIGTERM'): Promise<void> => {
    const proc = child;
    child = null;
    if (proc === null || proc.exitCode !== null || proc.signalCode !== null) return;
    const exited = new Promise<void>((resolve) => {
      proc.once('exit', () => {
        resolve();
      });
    });
    proc.kill(signal);
    const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  };

  await start();
  return {
    port,
    url: `mqtt://127.0.0.1:${port}`,
    dir,
    running: () => child !== null,
    pid: () => child?.pid ?? null,
    stop: () => stop(),
    kill: () => stop('SIGKILL'),
    restart: async () => {
      await stop();
      await start();
    },
    close: async () => {
      await stop();
      cleanup();
    },
    log: readLog,
    connectionsOf: (clientId) =>
      readLog()
        .split('\n')
        .filter((line) => line.includes(`as ${clientId} (`)).length,
    pubacksFrom: (clientId) =>
      readLog()
        .split('\n')
        .filter((line) => line.includes(`Received PUBACK from ${clientId} (`)).length,
    deliveriesTo: (clientId, topic) =>
      readLog()
        .split('\n')
        .flatMap((line) => {
          // "Sending PUBLISH to sluice-gw (d1, q1, r0, m3, 'sluice/gw/cmd/v1', ... (57 bytes))"
          const m = /Sending PUBLISH to (\S+) \(d(\d), q\d, r\d, m(\d+), '([^']*)'/.exec(line);
          if (m === null || m[1] !== clientId || m[4] !== topic) return [];
          return [{ mid: Number(m[3]), dup: m[2] === '1' }];
        }),
  };
}

export interface Received {
  readonly topic: string;
  readonly text: string;
  readonly packet: IPublishPacket;
  /** The payload as a JSON object. */
  json(): Record<string, unknown>;
}

/**
 * An mqtt.js test client that records every message it receives, with bounded waits for the
 * ones a test expects.
 */
export class TestClient {
  readonly messages: Received[] = [];
  /** The CONNACK's Session Present of the first connection (false until connected). */
  sessionPresent = false;
  private readonly waiters = new Set<() => void>();

  private constructor(readonly client: MqttClient) {
    client.on('message', (topic, payload, packet) => {
      const text = payload.toString('utf8');
      this.messages.push({
        topic,
        text,
        packet,
        json: () => JSON.parse(text) as Record<string, unknown>,
      });
      for (const wake of this.waiters) wake();
    });
  }

  static async connect(url: string, options: IClientOptions = {}): Promise<TestClient> {
    // Loaded here, not at the top: most files import this one for the broker alone (or for
    // mosquittoAvailable, until) and would pay for mqtt.js at every start of their worker.
    const { connect } = await import('mqtt');
    const client = connect(url, {
      protocolVersion: 5,
      reconnectPeriod: 200,
      connectTimeout: 5_000,
      ...options,
    });
    // Listening before the CONNACK: a persistent session's queued messages come right behind
    // it, handled in the same turn as the 'connect' event, before an await of the connection
    // resumes (a listener attached then missed them, as with mqtt.js's connectAsync).
    const test = new TestClient(client);
    await new Promise<void>((resolve, reject) => {
      const settle = (): void => {
        client.off('connect', connected).off('end', connected).off('error', failed);
      };
      const connected = (connack?: IConnackPacket): void => {
        settle();
        test.sessionPresent = connack?.sessionPresent === true;
        resolve();
      };
      const failed = (error: Error): void => {
        settle();
        client.end();
        reject(error);
      };
      client.on('connect', connected).on('end', connected).on('error', failed);
    });
    return test;
  }

  async subscribe(topic: string, qos: 0 | 1 = 1): Promise<void> {
    await this.client.subscribeAsync(topic, { qos });
  }

  async publish(
    topic: string,
    payload: string | Record<string, unknown>,
    options: IClientPublishOptions = {},
  ): Promise<void> {
    const body = typeof payload === 'string' ? payload : JSON.stringify(payload);
    await this.client.publishAsync(topic, body, { qos: 1, ...options });
  }

  /** The first message (already received or still to come) that matches, within `ms`. */
  async waitFor(
    predicate: (message: Received) => boolean,
    ms = 10_000,
    what = 'message',
  ): Promise<Received> {
    const found = this.messages.find(predicate);
    if (found !== undefined) return found;
    return new Promise((resolve, reject) => {
      const wake = (): void => {
        const hit = this.messages.find(predicate);
        if (hit === undefined) return;
        done();
        resolve(hit);
      };
      const timer = setTimeout(() => {
        done();
        reject(
          new Error(
            `no ${what} within ${ms} ms; received: ${this.messages.map((m) => `${m.topic} ${m.text}`).join('\n')}`,
          ),
        );
      }, ms);
      const done = (): void => {
        clearTimeout(timer);
        this.waiters.delete(wake);
      };
      this.waiters.add(wake);
    });
  }

  /** Messages on a topic, in arrival order. */
  on(topic: string): Received[] {
    return this.messages.filter((m) => m.topic === topic);
  }

  async end(): Promise<void> {
    await this.client.endAsync(true);
  }
}

/** Polls until the probe returns a value (not undefined), within `ms`. */
export async function until<T>(
  probe: () => T | undefined | Promise<T | undefined>,
  ms = 10_000,
  what = 'condition',
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`${what} not reached within ${ms} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/**
 * An MQTT intake configuration with the schema's defaults (as a site file would get them),
 * identity `plant` and a short session expiry.
 */
export function intakeConfig(url: string, overrides: Partial<MqttConfig> = {}): MqttConfig {
  return mqttConfigSchema.parse({ url, identity: 'plant', sessionExpiryS: 600, ...overrides });
}

/** A command stamped with the time it is issued (SPEC §5: MQTT commands carry their age). */
export function timed<T extends Record<string, unknown>>(
  command: T,
  issuedAt = new Date(),
): T & { issuedAt: string } {
  return { ...command, issuedAt: issuedAt.toISOString() };
}
