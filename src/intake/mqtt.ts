import { systemClock, type Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { CommandPipeline } from '../core/pipeline.js';
import type { IdentityRegistry } from './identities.js';
import { CommandMessages } from './mqtt-commands.js';
import type { IdentifierCheck } from './mqtt-identifier-probe.js';
import type { MqttMetrics } from './mqtt-metrics.js';
import { MqttPublisher } from './mqtt-publisher.js';
import { FormerRootSweep } from './mqtt-former-roots.js';
import { ResultDelivery, type ResultJournal } from './mqtt-result-delivery.js';
import { RetainedStateSweep } from './mqtt-retained-state.js';
import { MqttSession, type MqttConfig, type MqttProtocol } from './mqtt-session.js';
import { GatewayTopics } from './mqtt-topics.js';

export type { MqttConfig, MqttProtocol } from './mqtt-session.js';
export type { MqttMetrics } from './mqtt-metrics.js';

export interface MqttIntakeOptions {
  readonly config: MqttConfig;
  readonly gatewayId: string;
  readonly pipeline: CommandPipeline;
  readonly identities: IdentityRegistry;
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Reconnect delays: jittered, doubling from `minMs` to `maxMs` (default 1 s … 30 s). */
  readonly reconnect?: { readonly minMs?: number; readonly maxMs?: number };
  /**
   * The file (in the state folder) that lists the topic roots this gateway published under, so
   * that the retained topics under a root given up are cleared (mqtt-former-roots.ts). Without
   * it they are not.
   */
  readonly topicRootsFile?: string;
  /**
   * How long the journal keeps a settled key (`journal.retentionHours`), in hours: a command
   * timed by a Message Expiry Interval longer than that is refused (mqtt-message.ts). Unset: no
   * bound (the daemon always sets it).
   */
  readonly retentionHours?: number;
  /**
   * How long a command copy another subscription of the session delivered waits for the command
   * subscription's copy before it is answered as not run (mqtt-stray-copies.ts; 5 s): tests.
   */
  readonly strayCopyWaitMs?: number;
  /** The probe of Subscription Identifiers' waits, ms (mqtt-identifier-probe.ts): tests. */
  readonly identifierProbe?: { readonly graceMs?: number; readonly timeoutMs?: number };
  /** How long the command subscription waits for its SUBACK, ms (10 s): tests. */
  readonly subackTimeoutMs?: number;
  /** Command copies held for the probe's verdict at most (mqtt-held-copies.ts; 1,000): tests. */
  readonly maxHeldCopies?: number;
  /** Publications held for the broker at most (MAX_HELD_PUBLICATIONS, 10,000): tests. */
  readonly maxHeldPublications?: number;
  /**
   * The journal, for results that survive a stop or a crash (mqtt-result-delivery.ts): which
   * the broker acknowledged is kept in its meta row, and those it may not have are published
   * again at the next start. Without it (tests) results held in memory go with the process.
   */
  readonly journal?: ResultJournal;
}

export interface MqttHealth {
  /** Connected, and the command subscription confirmed by the broker. */
  readonly connected: boolean;
  /** Whether messages are being taken (false once stopping, or the pipeline is shutting down). */
  readonly taking: boolean;
  readonly lastError: string | null;
  /**
   * Whether the broker delivers the Subscription Identifiers it announces, as the last MQTT 5
   * connection's probe found (mqtt-identifier-probe.ts); `missing` is also said in protocol().
   */
  readonly subscriptionIdentifiers: IdentifierCheck;
}

/**
 * The MQTT intake (SPEC §5): commands from `{prefix}/cmd/{device}` on a persistent session,
 * results to `{prefix}/result/{device}` (and allowed MQTT 5 Response Topics), the mirrored
 * state retained on `{prefix}/state/{device}`, and `online` / `offline` retained on
 * `{prefix}/status` (the Last Will). See docs/mqtt-api.md.
 *
 * Composed of three parts, one job each: the session (mqtt-session.ts: connection, protocol
 * version, reconnection, subscription, status, stop), the command messages (mqtt-commands.ts:
 * parse, claim, PUBACK or not, answer) and the publisher (mqtt-publisher.ts: results, replays,
 * errors, state, Response Topics); besides them, the clearing of the retained state of devices
 * no longer configured (mqtt-retained-state.ts) and of the retained topics under topic roots
 * given up (mqtt-former-roots.ts). This class builds them and wires them to the pipeline.
 */
export class MqttIntake {
  private readonly pipeline: CommandPipeline;
  private readonly logger: Logger;
  private readonly topics: GatewayTopics;
  private readonly session: MqttSession;
  private readonly publisher: MqttPublisher;
  private readonly commands: CommandMessages;
  private readonly retainedState: RetainedStateSweep;
  private readonly formerRoots: FormerRootSweep | null;
  private readonly delivery: ResultDelivery | null;
  private readonly detach: (() => void)[] = [];
  private started = false;
  private stopping: Promise<void> | null = null;

  constructor(options: MqttIntakeOptions) {
    const config = options.config;
    this.pipeline = options.pipeline;
    this.logger = options.logger.child({ component: 'mqtt' });
    const clock = options.clock ?? systemClock;
    const identity = options.identities.get(config.identity);
    if (identity === undefined) {
      throw new Error(`mqtt.identity: no identity named "${config.identity}"`);
    }
    this.topics = new GatewayTopics(options.gatewayId, config.topicRoot);
    this.session = new MqttSession({
      config,
      gatewayId: options.gatewayId,
      topics: this.topics,
      clock,
      logger: this.logger,
      reconnect: options.reconnect,
      metrics: options.metrics,
      identifierProbe: options.identifierProbe,
      subackTimeoutMs: options.subackTimeoutMs,
    });
    this.publisher = new MqttPublisher({
      link: this.session,
      topics: this.topics,
      responseTopics: config.responseTopics,
      metrics: options.metrics,
      logger: this.logger,
      ...(options.maxHeldPublications === undefined
        ? {}
        : { maxHeld: options.maxHeldPublications }),
    });
    this.delivery =
      options.journal === undefined
        ? null
        : new ResultDelivery({
            journal: options.journal,
            sink: this.publisher,
            logger: this.logger,
          });
    this.commands = new CommandMessages({
      pipeline: this.pipeline,
      identity,
      topics: this.topics,
      publisher: this.publisher,
      link: this.session,
      metrics: options.metrics,
      logger: this.logger,
      clock,
      acceptUntimed: config.acceptUntimedCommands,
      keysKeptS:
        options.retentionHours === undefined
          ? undefined
          : Math.floor(options.retentionHours * 3600),
      strayCopyWaitMs: options.strayCopyWaitMs,
      maxHeldCopies: options.maxHeldCopies,
    });
    this.retainedState = new RetainedStateSweep({
      topics: this.topics,
      reader: this.session,
      clearer: this.publisher,
      configured: (device) => this.pipeline.hasDevice(device),
      logger: this.logger,
    });
    this.formerRoots =
      options.topicRootsFile === undefined
        ? null
        : new FormerRootSweep({
            topics: this.topics,
            reader: this.session,
            clearer: this.publisher,
            path: options.topicRootsFile,
            logger: this.logger,
          });
  }

  /** The topic prefix `{root}/{gatewayId}`. */
  get prefix(): string {
    return this.topics.prefix;
  }

  /**
   * Connects in the background and keeps reconnecting with backoff: the daemon comes up and
   * serves its other intakes while the broker is down. Throws only for a second start.
   */
  start(): void {
    if (this.started || this.stopping !== null) {
      throw new Error('the MQTT intake is started once; make a new one to start again');
    }
    this.started = true;
    this.detach.push(
      this.pipeline.onSettled((record) => {
        if (this.delivery !== null) {
          this.delivery.settled(record);
          return;
        }
        // Deferred: settlement can happen inside submit(), which runs inside handleMessage,
        // where publishing stalls mqtt.js (mqtt.js issue #2026), and before the requester's
        // Response Topic is recorded.
        setImmediate(() => {
          this.publisher.result(record);
        });
      }),
      this.pipeline.onMirror((device, readback) => {
        setImmediate(() => {
          this.publisher.state(device, readback);
        });
      }),
    );
    this.delivery?.start();
    // The current root is on disk before anything is published under it.
    this.formerRoots?.start();
    this.session.start({
      message: (client, packet, callback) => {
        if (this.formerRoots?.receive(packet) === true) {
          // The reading of a former root's retained topics (QoS 0), never a command.
          this.commands.acknowledge(client, packet, callback);
          return;
        }
        if (this.topics.stateDevice(packet.topic) !== null) {
          // The sweep's reading of the state topics (QoS 0), never a command. At QoS 1 or 2 a
          // filter another client left in the session delivered it: removed.
          if (packet.qos > 0) this.session.unsubscribeStateCopies(packet.topic);
          this.retainedState.receive(packet);
          this.commands.acknowledge(client, packet, callback);
          return;
        }
        this.commands.receive(client, packet, callback);
      },
      acknowledge: (client, packet, callback) => {
        this.commands.acknowledge(client, packet, callback);
      },
      connected: () => {
        this.publisher.reconnected();
        // Results the broker may not have acknowledged before this start, behind those held.
        this.delivery?.connected();
        this.publishMirror();
        this.retainedState.connected();
        this.formerRoots?.connected();
      },
      publishStatus: (status) => this.publisher.status(status),
      identifiersMissing: () => {
        this.commands.identifiersMissing();
      },
      identifiersAnswered: () => {
        this.commands.identifiersAnswered();
      },
      qos2Came: (client, packet) => {
        this.commands.qos2Came(client, packet);
      },
    });
  }

  /** Connected to the broker with the command subscription in place. */
  connected(): boolean {
    return this.session.connected();
  }

  /** The MQTT version spoken, and whether the broker's refusal of MQTT 5 made it 3.1.1. */
  protocol(): MqttProtocol {
    return this.session.protocol();
  }

  health(): MqttHealth {
    return {
      connected: this.connected(),
      taking: this.commands.taking,
      lastError: this.session.lastError,
      subscriptionIdentifiers: this.session.subscriptionIdentifiers,
    };
  }

  /**
   * TLS files (`mqtt.caFile`, `certFile`, `keyFile`, checked) for the next connection to the
   * broker; the connection that is up stays. Returns whether one is up.
   */
  replaceTlsFiles(files: Parameters<MqttSession['replaceTlsFiles']>[0]): boolean {
    return this.session.replaceTlsFiles(files);
  }

  /** mqtt.passwordFile read again (a reload) for the next connection: MqttSession.replacePassword. */
  replacePassword(password: string): { readonly changed: boolean; readonly connected: boolean } {
    return this.session.replacePassword(password);
  }

  /**
   * Stops claiming commands; results and state are still published. For a graceful stop:
   * stopTakingCommands(), let the pipeline settle in-flight commands, then stop(). Messages
   * arriving now are left unacknowledged; the broker keeps them for the next session.
   */
  stopTakingCommands(): void {
    this.commands.stopTaking();
    // The retained status says `offline` from now on: the gateway no longer hears commands.
    this.session.stopTakingCommands();
  }

  /**
   * Publishes retained `offline`, stops taking messages and ends the connection cleanly
   * (bounded). Unacknowledged messages stay in the broker's session for the next start.
   */
  stop(): Promise<void> {
    this.stopping ??= this.shutdown();
    return this.stopping;
  }

  private async shutdown(): Promise<void> {
    this.commands.stopTaking();
    // Every settlement journaled so far is announced before the intake stops listening.
    await this.delivery?.stopping();
    for (const detach of this.detach.splice(0)) detach();
    if (!this.started) return;
    // Results of commands that settled just before the stop go out and are acknowledged
    // before `offline` and the DISCONNECT; ending the client earlier loses them.
    // Held while the broker was away (sent on reconnection), they go with the process: the stop
    // went without a word, and an operator could not tell that clients on the result topic
    // missed outcomes (docs/mqtt-api.md: they are in the journal).
    const held = await this.publisher.unpublished();
    const wasConnected = await this.session.stop(() => this.publisher.flush());
    this.publisher.ended();
    await this.delivery?.stop();
    if (!wasConnected && held > 0) {
      this.logger.warn(
        { held },
        this.delivery === null
          ? 'stopped while disconnected from the MQTT broker: the results held for it were not published (they are in the journal: GET /v1/commands/{key}, sluicectl show)'
          : 'stopped while disconnected from the MQTT broker: the results held for it were not published; they are published at the next start (from the journal)',
      );
    }
    this.logger.info({}, 'MQTT intake stopped');
  }

  /** State changes are not queued while offline; the current mirror is published instead. */
  private publishMirror(): void {
    for (const view of this.pipeline.devices()) {
      if (view.mirror !== null) this.publisher.state(view.id, view.mirror);
    }
  }
}
