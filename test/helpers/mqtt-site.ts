import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll } from 'vitest';
import { silentLogger, type Logger } from '../../src/core/logger.js';
import type { CommandRecord } from '../../src/core/journal.js';
import type { CommandPipeline } from '../../src/core/pipeline.js';
import { MqttIntake, type MqttConfig } from '../../src/intake/mqtt.js';
import {
  intakeConfig,
  startMosquitto,
  TestClient,
  until,
  type Mosquitto,
  type MosquittoOptions,
} from './mosquitto.js';
import { startStack, type Stack } from './stack.js';

type StackOptions = NonNullable<Parameters<typeof startStack>[0]>;

export {
  mosquittoAvailable,
  TestClient,
  timed,
  until,
  type Mosquitto,
  type Received,
} from './mosquitto.js';

/** An MQTT intake on the site: what differs from one test to the next. */
export interface SiteIntakeOptions {
  readonly gatewayId: string;
  /** Over `intakeConfig`'s (the schema's defaults, identity `plant`). */
  readonly config?: Partial<MqttConfig>;
  /** The stack's pipeline unless given (a site changed between two runs). */
  readonly pipeline?: CommandPipeline;
  readonly reconnect?: { readonly minMs?: number; readonly maxMs?: number } | undefined;
  readonly topicRootsFile?: string | undefined;
  /** The journal's retention the intake bounds message expiry by; the schema's default (48 h). */
  readonly retentionHours?: number;
  /** Silent unless given (a test that reads the intake's log lines). */
  readonly logger?: Logger;
  /** MqttIntakeOptions.strayCopyWaitMs. */
  readonly strayCopyWaitMs?: number;
  /** MqttIntakeOptions.identifierProbe. */
  readonly identifierProbe?: { readonly graceMs?: number; readonly timeoutMs?: number };
  /** MqttIntakeOptions.maxHeldCopies. */
  readonly maxHeldCopies?: number;
  /** MqttIntakeOptions.maxHeldPublications. */
  readonly maxHeldPublications?: number;
  /** Give the intake the stack's journal (results re-sent from it: mqtt-result-delivery.ts). */
  readonly journal?: boolean;
}

/**
 * What the MQTT intake tests share: a real Mosquitto and a stack (the simulated plant, the real
 * drivers, a journal file, the pipeline), started before the file's tests and stopped after
 * them, and intakes made on them. Cleanup is a last-in-first-out stack: what a test pushes on
 * `cleanups` is undone before the stack and the broker, in reverse order. `stackOptions` go to
 * startStack: `{ opcua: false }` for a file that never addresses `u1` (its OPC UA PLC costs
 * seconds of CPU to start and stop).
 */
export class MqttSite {
  readonly cleanups: (() => Promise<void> | void)[] = [];
  private parts: { readonly broker: Mosquitto; readonly stack: Stack } | null = null;

  constructor(
    private readonly brokerOptions: MosquittoOptions = {},
    private readonly stackOptions: StackOptions = {},
  ) {}

  get broker(): Mosquitto {
    return this.started().broker;
  }

  get stack(): Stack {
    return this.started().stack;
  }

  async start(): Promise<void> {
    const broker = await startMosquitto(this.brokerOptions);
    this.cleanups.push(() => broker.close());
    const stack = await startStack(this.stackOptions);
    this.cleanups.push(() => stack.stop());
    this.parts = { broker, stack };
  }

  async stop(): Promise<void> {
    for (const cleanup of this.cleanups.splice(0).reverse()) await cleanup();
  }

  /** An MQTT intake on this broker and stack, not started. */
  intake(options: SiteIntakeOptions): MqttIntake {
    return new MqttIntake({
      config: intakeConfig(this.broker.url, options.config),
      gatewayId: options.gatewayId,
      pipeline: options.pipeline ?? this.stack.pipeline,
      identities: this.stack.identities,
      metrics: this.stack.metrics,
      logger: options.logger ?? silentLogger,
      ...(options.reconnect === undefined ? {} : { reconnect: options.reconnect }),
      ...(options.topicRootsFile === undefined ? {} : { topicRootsFile: options.topicRootsFile }),
      retentionHours: options.retentionHours ?? 48,
      ...(options.strayCopyWaitMs === undefined
        ? {}
        : { strayCopyWaitMs: options.strayCopyWaitMs }),
      ...(options.identifierProbe === undefined
        ? {}
        : { identifierProbe: options.identifierProbe }),
      ...(options.maxHeldCopies === undefined ? {} : { maxHeldCopies: options.maxHeldCopies }),
      ...(options.maxHeldPublications === undefined
        ? {}
        : { maxHeldPublications: options.maxHeldPublications }),
      ...(options.journal === true ? { journal: this.stack.journal } : {}),
    });
  }

  /** Starts `intake` and waits until it is connected with its command subscription. */
  async connect(intake: MqttIntake): Promise<MqttIntake> {
    intake.start();
    await until(() => intake.connected() || undefined, 10_000, 'intake connected');
    return intake;
  }

  /**
   * `count` results at once: commands of identity `ops` on v1, which it may not command, each
   * journaled rejected FORBIDDEN_DEVICE at its claim, all in one turn (their results announced
   * together once on disk). Throws unless each is so.
   */
  forbiddenResults(count: number): CommandRecord[] {
    const ops = this.stack.identities.get('ops');
    if (ops === undefined) throw new Error('no identity ops');
    return Array.from({ length: count }, () => {
      const claim = this.stack.pipeline.submit({
        key: randomUUID(),
        identity: ops,
        intake: 'https',
        request: {
          device: 'v1',
          action: 'open',
          position: null,
          issuedAt: new Date().toISOString(),
          ttlMs: 30_000,
        },
      });
      if (claim.record.code !== 'FORBIDDEN_DEVICE') {
        throw new Error(`expected FORBIDDEN_DEVICE, got ${String(claim.record.code)}`);
      }
      return claim.record;
    });
  }

  /**
   * The plant system's side of a command test: a client that publishes commands, an observer
   * subscribed to `${prefix}/result/#`, both ended with the site, and valve v1's count of
   * writes received at the simulator (the ground truth).
   */
  async plantSide(prefix: string): Promise<{
    readonly plant: TestClient;
    readonly observer: TestClient;
    readonly writes: () => number;
  }> {
    const plant = await TestClient.connect(this.broker.url);
    this.cleanups.push(() => plant.end());
    const observer = await TestClient.connect(this.broker.url);
    this.cleanups.push(() => observer.end());
    await observer.subscribe(`${prefix}/result/#`);
    const writes = (): number => this.stack.plant.device('v1').counters.writesReceived;
    return { plant, observer, writes };
  }

  /**
   * What another client on the gateway's client id leaves in its persistent session:
   * mosquitto_sub with `clientId`, a clean-start-off session (`-c`) at QoS 1 (`qos`), subscribed to
   * `filters` with mosquitto_sub's default options (no retain-as-published, no Subscription
   * Identifier), the session's expiry `expirySeconds` when given (MQTT 5), ending after a
   * second; resolves once it has exited. The gateway's intake must be stopped meanwhile (the
   * tool takes its session over).
   */
  async leaveSubscriptions(
    clientId: string,
    filters: readonly string[],
    o: { readonly version?: 4 | 5; readonly expirySeconds?: number; readonly qos?: 1 | 2 } = {},
  ): Promise<void> {
    const tool = spawn(
      'mosquitto_sub',
      [
        ...['-h', '127.0.0.1', '-p', String(this.broker.port)],
        ...['-V', (o.version ?? 5) === 5 ? 'mqttv5' : 'mqttv311'],
        ...['-i', clientId, '-c', '-q', String(o.qos ?? 1), ...filters.flatMap((f) => ['-t', f])],
        ...(o.expirySeconds === undefined ? [] : ['-x', String(o.expirySeconds)]),
        ...['-W', '1'],
      ],
      { stdio: 'ignore' },
    );
    await new Promise<void>((resolve, reject) => {
      tool.once('error', reject);
      tool.once('exit', () => {
        resolve();
      });
    });
  }

  private started(): { readonly broker: Mosquitto; readonly stack: Stack } {
    if (this.parts === null) throw new Error('the MQTT site is used before its beforeAll ran');
    return this.parts;
  }
}

/**
 * An MQTT site for the calling `describe`: started in a beforeAll registered now (before the
 * file's own, which may use it), stopped in an afterAll that runs after the file's own.
 */
export function useMqttSite(
  brokerOptions: MosquittoOptions = {},
  stackOptions: StackOptions = {},
): MqttSite {
  const site = new MqttSite(brokerOptions, stackOptions);
  beforeAll(() => site.start(), 60_000);
  afterAll(() => site.stop());
  return site;
}
