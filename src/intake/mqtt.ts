import { readFileSync } from 'node:fs';
import {
  connect,
  type DoneCallback,
  type IClientOptions,
  type IClientPublishOptions,
  type IConnackPacket,
  type IPublishPacket,
  type MqttClient,
} from 'mqtt';
import { Backoff } from '../backoff.js';
import type { SluiceConfig } from '../config/config.js';
import { systemClock, type Clock } from '../core/clock.js';
import { isTerminal } from '../core/command.js';
import type { Readback } from '../core/driver.js';
import {
  InvalidCommandError,
  InvalidKeyError,
  JournalUnavailableError,
  ShuttingDownError,
  UnknownDeviceError,
} from '../core/errors.js';
import type { CommandRecord } from '../core/journal.js';
import type { Logger } from '../core/logger.js';
import type { CommandPipeline, SubmitOutcome } from '../core/pipeline.js';
import type { Metrics } from '../daemon/metrics.js';
import type { IdentityRegistry, NamedIdentity } from './identities.js';
import {
  errorDocument,
  parseCommandMessage,
  stateDocument,
  type MessageErrorCode,
} from './mqtt-message.js';
import { ResponseRoutes, type ResponseRoute } from './mqtt-response-routes.js';
import { GatewayTopics } from './mqtt-topics.js';
import { replayedResultBody, resultBody } from './outcome.js';

export type MqttConfig = NonNullable<SluiceConfig['mqtt']>;

export interface MqttIntakeOptions {
  readonly config: MqttConfig;
  readonly gatewayId: string;
  readonly pipeline: CommandPipeline;
  readonly identities: IdentityRegistry;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly clock?: Clock;
  /** Reconnect delays: jittered, doubling from `minMs` to `maxMs` (default 1 s … 30 s). */
  readonly reconnect?: { readonly minMs?: number; readonly maxMs?: number };
}

export interface MqttHealth {
  /** Connected, and the command subscription confirmed by the broker. */
  readonly connected: boolean;
  /** Whether messages are being taken (false once stopping, or the pipeline is shutting down). */
  readonly taking: boolean;
  readonly lastError: string | null;
}

/** What to do with a message after handling it: acknowledge it, or leave it with the broker. */
type Handling =
  | { readonly kind: 'ack' }
  | { readonly kind: 'withhold'; readonly reason: string; readonly reconnect: boolean };

/** mqttMessages{outcome}: every message on a command topic ends in exactly one of these. */
type MessageOutcome =
  | 'new'
  | 'replayed'
  | 'in_flight'
  | 'key_reused'
  | 'invalid'
  | 'unknown_device'
  | 'journal_unavailable'
  | 'withheld'
  | 'internal_error'
  | 'foreign_topic';

/** A connection that stayed up this long resets the reconnect backoff when it ends. */
const STABLE_CONNECTION_MS = 10_000;
/** How long stop() waits for `offline` to be acknowledged and for a clean DISCONNECT. */
const STOP_STEP_MS = 2_000;
/** MQTT 5 DISCONNECT reason 0x04: the broker publishes the Will (`offline`) even so. */
const DISCONNECT_WITH_WILL = 0x04;

const ACK: Handling = { kind: 'ack' };

/**
 * The MQTT intake (SPEC §5): commands from `{prefix}/cmd/{device}` on a persistent session,
 * results to `{prefix}/result/{device}` (and MQTT 5 Response Topics), the mirrored state
 * retained on `{prefix}/state/{device}`, and `online` / `offline` retained on
 * `{prefix}/status` (the Last Will).
 *
 * I5: a command message is acknowledged (PUBACK) only after the pipeline's synchronous claim
 * has committed. mqtt.js sends the PUBACK when the `handleMessage` callback is called without
 * an error; this intake overrides `handleMessage`, claims inside it, and calls the callback
 * afterwards. When the claim cannot be made (journal unavailable), the callback gets an
 * error — mqtt.js then skips the PUBACK and its packet pump moves on — and the connection is
 * dropped, because a broker redelivers an unacknowledged QoS 1 message only on a new
 * connection of the session (MQTT 5 §4.4). See docs/mqtt-api.md.
 */
export class MqttIntake {
  private readonly config: MqttConfig;
  private readonly pipeline: CommandPipeline;
  private readonly metrics: Metrics;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly identity: NamedIdentity;
  private readonly topics: GatewayTopics;
  private readonly clientOptions: IClientOptions;
  private readonly backoff: Backoff;
  private readonly reconnectMinMs: number;
  private readonly routes = new ResponseRoutes();
  private readonly detach: (() => void)[] = [];
  private client: MqttClient | null = null;
  /** False once stopping or once the pipeline refuses as shutting down: nothing more is claimed. */
  private taking = true;
  /** Set when publications must no longer be sent (the client is ending). */
  private ended = false;
  /** A claim was refused on the current connection; it is being dropped, take nothing more on it. */
  private dropping = false;
  private connectedAt: number | null = null;
  private subscribed = false;
  private lastError: string | null = null;
  private errorStreak = 0;
  private stopping: Promise<void> | null = null;
  /** Publications not yet acknowledged by the broker (QoS 1). */
  private readonly unacknowledged = new Set<Promise<void>>();

  constructor(options: MqttIntakeOptions) {
    this.config = options.config;
    this.pipeline = options.pipeline;
    this.metrics = options.metrics;
    this.logger = options.logger.child({ component: 'mqtt' });
    this.clock = options.clock ?? systemClock;
    const identity = options.identities.get(options.config.identity);
    if (identity === undefined) {
      throw new Error(`mqtt.identity: no identity named "${options.config.identity}"`);
    }
    this.identity = identity;
    this.topics = new GatewayTopics(options.gatewayId);
    this.reconnectMinMs = options.reconnect?.minMs ?? 1_000;
    this.backoff = new Backoff({
      minMs: this.reconnectMinMs,
      maxMs: options.reconnect?.maxMs ?? 30_000,
    });
    this.clientOptions = this.buildClientOptions(options.gatewayId);
  }

  /** The topic prefix `sluice/{gatewayId}`. */
  get prefix(): string {
    return this.topics.prefix;
  }

  /**
   * Connects in the background and keeps reconnecting with backoff: the daemon comes up and
   * serves its other intakes while the broker is down. Throws only for a second start.
   */
  start(): void {
    if (this.client !== null || this.stopping !== null) {
      throw new Error('the MQTT intake is started once; make a new one to start again');
    }
    this.detach.push(
      this.pipeline.onSettled((record) => {
        // Deferred: settlement can happen inside submit(), which runs inside handleMessage,
        // where publishing stalls mqtt.js (mqtt.js issue #2026), and before the requester's
        // Response Topic is recorded.
        setImmediate(() => {
          this.publishResult(record);
        });
      }),
      this.pipeline.onMirror((device, readback) => {
        setImmediate(() => {
          this.publishState(device, readback);
        });
      }),
    );
    // manualConnect: every listener is in place before the first CONNECT is written.
    const client = connect(this.config.url, { ...this.clientOptions, manualConnect: true });
    this.client = client;
    client.handleMessage = (packet, callback) => {
      this.onPublish(client, packet, callback);
    };
    client.on('packetsend', (packet) => {
      if (packet.cmd !== 'connect') return;
      // A new connection: packets of the dropped one can no longer reach handleMessage
      // (mqtt.js gives each connection its own packet pump). Reset here, not on the
      // 'connect' event: mqtt.js emits that only after resending its stored publications,
      // when the broker's redeliveries may already have been handled.
      this.dropping = false;
      // mqtt.js leaves Nagle's algorithm on: a result published right after a PUBACK would
      // wait for the broker's delayed ACK (~40 ms). Set on every new socket, as it is made.
      setNoDelay(client);
    });
    client.on('connect', (connack) => {
      this.onConnect(client, connack);
    });
    // Prepended: mqtt.js's own close handler schedules the reconnect with
    // `options.reconnectPeriod`, so the next delay must be set before it runs.
    client.prependListener('close', () => {
      this.onClose(client);
    });
    client.on('error', (error) => {
      this.onError(error);
    });
    client.connect();
  }

  /** Connected to the broker with the command subscription in place. */
  connected(): boolean {
    return this.client?.connected === true && this.subscribed && !this.ended;
  }

  health(): MqttHealth {
    return { connected: this.connected(), taking: this.taking, lastError: this.lastError };
  }

  /**
   * Stops claiming commands; results and state are still published. For a graceful stop:
   * stopTakingCommands(), let the pipeline settle in-flight commands, then stop(). Messages
   * arriving now are left unacknowledged; the broker keeps them for the next session.
   */
  stopTakingCommands(): void {
    this.taking = false;
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
    this.taking = false;
    for (const detach of this.detach.splice(0)) detach();
    const client = this.client;
    if (client === null) return;
    if (client.connected) {
      // Results of commands that settled just before the stop (their publication is deferred
      // by one or two turns of the event loop) go out and are acknowledged before `offline`
      // and the DISCONNECT; ending the client earlier loses them.
      await new Promise((resolve) => setImmediate(resolve));
      await new Promise((resolve) => setImmediate(resolve));
      if (!(await this.within(STOP_STEP_MS, Promise.all([...this.unacknowledged])))) {
        this.logger.warn({}, 'results not acknowledged by the broker in time');
      }
      const published = await this.within(
        STOP_STEP_MS,
        client.publishAsync(this.topics.status, 'offline', { qos: 1, retain: true }),
      );
      if (!published) this.logger.warn({}, '`offline` not acknowledged in time');
    }
    this.ended = true;
    this.subscribed = false;
    const connected = client.connected;
    const ended = new Promise<void>((resolve) => {
      // MQTT 5: disconnecting "with Will Message" makes the broker publish `offline` too, in
      // case the explicit publication above did not get through.
      const opts = this.config.protocolVersion === 5 ? { reasonCode: DISCONNECT_WITH_WILL } : {};
      client.end(!connected, opts, () => {
        resolve();
      });
    });
    if (!(await this.within(STOP_STEP_MS, ended))) {
      // end() waits for unacknowledged publications; do not wait for them past the bound.
      client.stream.destroy();
      this.logger.warn({}, 'MQTT connection did not close in time; closed forcibly');
    }
    this.logger.info({}, 'MQTT intake stopped');
  }

  private buildClientOptions(gatewayId: string): IClientOptions {
    const c = this.config;
    const options: IClientOptions = {
      clientId: c.clientId ?? `sluice-${gatewayId}`,
      // A persistent session: the broker keeps the subscription and queues commands while
      // the gateway is away, and redelivers those it sent but never saw acknowledged.
      clean: false,
      protocolVersion: c.protocolVersion,
      keepalive: c.keepaliveS,
      // Replaced before every reconnection by onClose (jittered, growing).
      reconnectPeriod: this.reconnectMinMs,
      connectTimeout: 10_000,
      // Bad credentials may be fixed on the broker: keep trying, with backoff.
      reconnectOnConnackError: true,
      // The subscription is renewed by onConnect when the broker lost the session.
      resubscribe: false,
      will: { topic: this.topics.status, payload: Buffer.from('offline'), qos: 1, retain: true },
    };
    if (c.protocolVersion === 5) options.properties = { sessionExpiryInterval: c.sessionExpiryS };
    if (c.username !== undefined) options.username = c.username;
    if (c.passwordFile !== undefined) {
      const password = readFileSync(c.passwordFile, 'utf8').trim();
      if (password.length === 0) throw new Error(`mqtt.passwordFile: ${c.passwordFile} is empty`);
      options.password = password;
    }
    if (c.caFile !== undefined) options.ca = readFileSync(c.caFile);
    if (c.certFile !== undefined) options.cert = readFileSync(c.certFile);
    if (c.keyFile !== undefined) options.key = readFileSync(c.keyFile);
    return options;
  }

  private onConnect(client: MqttClient, connack: IConnackPacket): void {
    if (this.ended) return;
    this.connectedAt = this.clock.now();
    this.errorStreak = 0;
    this.lastError = null;
    const sessionPresent = connack.sessionPresent;
    this.logger.info({ sessionPresent }, 'connected to the MQTT broker');
    this.publish(this.topics.status, 'online', { retain: true });
    if (!sessionPresent) this.subscribed = false;
    if (!this.subscribed) this.subscribe(client);
    // State changes are not queued while offline; the current mirror is published instead.
    for (const view of this.pipeline.devices()) {
      if (view.mirror !== null) this.publishState(view.id, view.mirror);
    }
  }

  private subscribe(client: MqttClient): void {
    // MQTT 5: retained messages are not sent at subscription (retain handling 2), and the
    // retain flag is kept as published (rap), so that a command published retained — which
    // the broker would replay to every new subscriber — is refused rather than executed.
    const options =
      this.config.protocolVersion === 5
        ? { qos: 1 as const, rh: 2, rap: true }
        : { qos: 1 as const };
    client.subscribe(this.topics.commandFilter, options, (error, granted) => {
      // A connection lost before the SUBACK: the next one subscribes again.
      if (client !== this.client || this.ended || !client.connected) return;
      const qos = granted?.[0]?.qos;
      if (error === null && qos !== undefined && qos < 0x80) {
        this.subscribed = true;
        this.logger.info(
          { topic: this.topics.commandFilter, qos },
          'subscribed to the command topics',
        );
        return;
      }
      this.lastError = error?.message ?? 'subscription refused by the broker';
      this.logger.error(
        { topic: this.topics.commandFilter, err: error ?? undefined, qos },
        'the broker refused the command subscription; reconnecting to try again',
      );
      this.dropConnection(client, 'subscription refused');
    });
  }

  private onClose(client: MqttClient): void {
    const now = this.clock.now();
    const wasConnected = this.connectedAt !== null;
    const stable =
      this.connectedAt !== null && now - this.connectedAt >= STABLE_CONNECTION_MS && !this.dropping;
    this.connectedAt = null;
    if (this.ended) return;
    if (stable) this.backoff.reset();
    const delay = this.backoff.next();
    client.options.reconnectPeriod = delay;
    if (wasConnected) {
      this.logger.warn({ reconnectInMs: delay }, 'disconnected from the MQTT broker');
    } else {
      this.logger.debug({ reconnectInMs: delay }, 'MQTT connection attempt failed');
    }
  }

  private onError(error: Error): void {
    this.lastError = error.message;
    this.errorStreak += 1;
    // The first failure of a streak is worth a warning; a broker down for an hour is not
    // worth thousands of them.
    const level = this.errorStreak === 1 ? 'warn' : 'debug';
    this.logger[level]({ err: error, url: this.config.url }, 'MQTT connection error');
  }

  /** The client's handleMessage: decides PUBACK or not for one message (see the class doc). */
  private onPublish(client: MqttClient, packet: IPublishPacket, callback: DoneCallback): void {
    if (!client.connected) {
      // Left over from a connection already closed: mqtt.js would queue a PUBACK now and send
      // it on the next connection, where the packet id may name another message. The broker
      // redelivers this one instead.
      this.count('withheld');
      callback(new Error('not acknowledged: the connection is closed'));
      return;
    }
    let handling: Handling;
    try {
      handling = this.handle(packet);
    } catch (error) {
      // A bug, not a verdict on the message: fail closed, the broker keeps it.
      this.logger.error({ err: error, topic: packet.topic }, 'command message handling failed');
      this.count('internal_error');
      handling = { kind: 'withhold', reason: 'internal error', reconnect: true };
    }
    switch (handling.kind) {
      case 'ack':
        callback();
        return;
      case 'withhold':
        // With an error, mqtt.js sends no PUBACK and goes on with the connection's next packet
        // (a callback never called would stall every later packet of the connection, PUBACKs
        // and PINGRESP included, until the keepalive times out: mqtt.js issue #1935).
        callback(new Error(`not acknowledged: ${handling.reason}`));
        if (handling.reconnect) this.dropConnection(client, handling.reason);
        return;
    }
  }

  private handle(packet: IPublishPacket): Handling {
    const receivedAt = this.clock.now();
    const device = this.topics.commandDevice(packet.topic);
    if (device === null) {
      // A subscription left in the persistent session by an earlier configuration.
      this.logger.warn({ topic: packet.topic }, 'message on a topic that is not a command topic');
      this.count('foreign_topic');
      return ACK;
    }
    const route = this.responseRouteOf(packet, device);
    const message = parseCommandMessage({
      device,
      payload: Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload),
      userProperties: packet.properties?.userProperties,
      retained: packet.retain,
    });
    if (message.kind === 'malformed') {
      this.logger.warn(
        { key: message.key, device, code: message.code, detail: message.detail },
        'malformed command message acknowledged and answered',
      );
      this.count('invalid');
      this.answerError(device, message.key, route, receivedAt, {
        code: message.code,
        detail: message.detail,
        errors: message.errors,
      });
      return ACK;
    }
    const { key } = message;
    const log = this.logger.child({ key, device });
    if (!this.taking) {
      return this.refuse(packet, log, { device, key, route, receivedAt }, 'SHUTTING_DOWN', false);
    }
    if (this.dropping) {
      // Already parsed off a connection being dropped: left for its redelivery.
      return this.refuse(
        packet,
        log,
        { device, key, route, receivedAt },
        'JOURNAL_UNAVAILABLE',
        false,
      );
    }
    log.debug({ qos: packet.qos, dup: packet.dup }, 'command message received');

    let claim: SubmitOutcome;
    try {
      claim = this.pipeline.submit({
        key,
        identity: this.identity,
        intake: 'mqtt',
        request: message.request,
      });
    } catch (error) {
      if (error instanceof JournalUnavailableError) {
        this.metrics.journalFailures.inc();
        this.metrics.accepted.inc({ intake: 'mqtt', outcome: 'refused' });
        log.error({ err: error }, 'journal unavailable: command not acknowledged (fail closed)');
        this.count('journal_unavailable');
        return this.refuse(
          packet,
          log,
          { device, key, route, receivedAt },
          'JOURNAL_UNAVAILABLE',
          true,
        );
      }
      if (error instanceof ShuttingDownError) {
        this.taking = false;
        return this.refuse(packet, log, { device, key, route, receivedAt }, 'SHUTTING_DOWN', false);
      }
      if (error instanceof UnknownDeviceError) {
        log.warn({}, 'command for an unknown device acknowledged and answered');
        this.count('unknown_device');
        this.answerError(device, key, route, receivedAt, {
          code: 'UNKNOWN_DEVICE',
          detail: error.message,
        });
        return ACK;
      }
      if (error instanceof InvalidCommandError || error instanceof InvalidKeyError) {
        // submit() validates again what parseCommandMessage let through (the device profile's
        // actions); the key was checked already, but both are told apart all the same.
        const code =
          error instanceof InvalidKeyError ? 'MISSING_IDEMPOTENCY_KEY' : 'INVALID_COMMAND';
        log.warn({ code, detail: error.message }, 'invalid command acknowledged and answered');
        this.count('invalid');
        this.answerError(device, key, route, receivedAt, {
          code,
          detail: error.message,
          errors: error instanceof InvalidCommandError ? error.errors : [],
        });
        return ACK;
      }
      throw error;
    }

    const record = claim.record;
    switch (claim.kind) {
      case 'new':
        if (route !== undefined) this.routes.add(record, route);
        this.count('new');
        this.metrics.accepted.inc({ intake: 'mqtt', outcome: 'new' });
        log.debug({ dup: packet.dup }, 'command claimed; acknowledging');
        return ACK;
      case 'duplicate':
        if (isTerminal(record.state)) {
          // A retry of a settled command: its stored result again, marked as a replay.
          const body = replayedResultBody(record);
          this.publish(this.topics.result(device), body, { retain: false });
          if (route !== undefined) this.publishToRoute(route, body);
          this.count('replayed');
          this.metrics.accepted.inc({ intake: 'mqtt', outcome: 'replayed' });
          log.info(
            { state: record.state, dup: packet.dup },
            'duplicate of a settled command: replayed',
          );
        } else {
          // Still in flight: its outcome will be published, to this requester's route too.
          if (route !== undefined) this.routes.add(record, route);
          this.count('in_flight');
          this.metrics.accepted.inc({ intake: 'mqtt', outcome: 'in_flight' });
          log.info({ state: record.state, dup: packet.dup }, 'duplicate of a command in flight');
        }
        return ACK;
      case 'reused':
        log.warn({}, 'idempotency key reused with a different command; acknowledged and answered');
        this.count('key_reused');
        this.metrics.accepted.inc({ intake: 'mqtt', outcome: 'key_reused' });
        this.answerError(device, key, route, receivedAt, {
          code: 'IDEMPOTENCY_KEY_REUSED',
          detail: `key "${key}" was used for a different command (${record.action} on ${record.device}); a key names one command`,
        });
        return ACK;
    }
  }

  /**
   * A command that cannot be claimed now. QoS 1 and 2: withheld (no PUBACK), so the broker
   * keeps it for the next connection of the session. QoS 0 has no redelivery: the requester
   * is told instead, and the message is done with.
   */
  private refuse(
    packet: IPublishPacket,
    log: Logger,
    message: {
      readonly device: string;
      readonly key: string;
      readonly route: ResponseRoute | undefined;
      readonly receivedAt: number;
    },
    code: 'JOURNAL_UNAVAILABLE' | 'SHUTTING_DOWN',
    reconnect: boolean,
  ): Handling {
    // A claim the journal refused is counted by the caller; everything else here is withheld.
    if (!reconnect) this.count('withheld');
    const { device, key, route, receivedAt } = message;
    const detail =
      code === 'JOURNAL_UNAVAILABLE'
        ? 'the journal cannot be written; nothing was claimed or written'
        : 'the gateway is stopping and takes no new commands';
    if (packet.qos === 0) {
      log.warn({ code }, 'QoS 0 command refused and answered (QoS 0 is never redelivered)');
      this.answerError(device, key, route, receivedAt, { code, detail });
      return ACK;
    }
    log.info({ code, reconnect }, 'command left unacknowledged with the broker');
    return { kind: 'withhold', reason: detail, reconnect };
  }

  /**
   * Drops the connection without DISCONNECT so that the broker keeps the unacknowledged
   * messages for the session and redelivers them on the reconnection, after a backoff. The
   * broker publishes the Will (`offline`) meanwhile: the gateway is not taking commands.
   */
  private dropConnection(client: MqttClient, reason: string): void {
    if (this.dropping || this.ended || client !== this.client) return;
    this.dropping = true;
    this.logger.warn({ reason }, 'dropping the MQTT connection; the broker keeps the message');
    client.stream.destroy();
  }

  private responseRouteOf(packet: IPublishPacket, device: string): ResponseRoute | undefined {
    const topic = packet.properties?.responseTopic;
    if (topic === undefined) return undefined;
    if (!this.topics.isResponseTopic(topic)) {
      this.logger.warn(
        { device, responseTopic: topic },
        'response topic refused; not answered there',
      );
      return undefined;
    }
    return { topic, correlationData: packet.properties?.correlationData };
  }

  private answerError(
    device: string,
    key: string | null,
    route: ResponseRoute | undefined,
    receivedAt: number,
    error: { code: MessageErrorCode; detail: string; errors?: readonly string[] },
  ): void {
    const body = errorDocument({
      key,
      device,
      code: error.code,
      detail: error.detail,
      ...(error.errors === undefined ? {} : { errors: error.errors }),
      receivedAt: new Date(receivedAt).toISOString(),
    });
    // Without a key the result topic's subscribers could not tell whose error it is.
    if (key !== null) this.publish(this.topics.result(device), body, { retain: false });
    if (route !== undefined) this.publishToRoute(route, body);
  }

  private publishResult(record: CommandRecord): void {
    const body = resultBody(record);
    this.publish(this.topics.result(record.device), body, { retain: false });
    for (const route of this.routes.take(record)) this.publishToRoute(route, body);
  }

  private publishState(device: string, readback: Readback): void {
    // Not queued while disconnected: onConnect publishes the current mirror instead.
    if (this.client?.connected !== true) return;
    this.publish(this.topics.state(device), stateDocument(device, readback), { retain: true });
  }

  private publishToRoute(route: ResponseRoute, body: string): void {
    this.publish(route.topic, body, {
      retain: false,
      ...(route.correlationData === undefined ? {} : { correlationData: route.correlationData }),
    });
  }

  /**
   * Publishes at QoS 1, never synchronously: called from handleMessage it is deferred to the
   * next turn of the event loop, after the PUBACK (mqtt.js issue #2026). While disconnected,
   * mqtt.js holds results and sends them on reconnection (in memory only).
   */
  private publish(
    topic: string,
    payload: string,
    options: { retain: boolean; correlationData?: Buffer },
  ): void {
    const sent = new Promise<void>((resolve) => {
      setImmediate(() => {
        const client = this.client;
        if (client === null || this.ended) {
          resolve();
          return;
        }
        const publishOptions: IClientPublishOptions = { qos: 1, retain: options.retain };
        if (this.config.protocolVersion === 5) {
          publishOptions.properties = {
            contentType: topic === this.topics.status ? 'text/plain' : 'application/json',
            payloadFormatIndicator: true,
            ...(options.correlationData === undefined
              ? {}
              : { correlationData: options.correlationData }),
          };
        }
        client.publish(topic, payload, publishOptions, (error) => {
          // mqtt.js calls back with null, not undefined, on success.
          if (error instanceof Error && !this.ended) {
            this.logger.warn({ err: error, topic }, 'MQTT publication failed');
          }
          resolve();
        });
      });
    });
    this.unacknowledged.add(sent);
    void sent.then(() => this.unacknowledged.delete(sent));
  }

  private count(outcome: MessageOutcome): void {
    this.metrics.mqttMessages.inc({ outcome });
  }

  private async within(ms: number, work: Promise<unknown>): Promise<boolean> {
    const timeout = new AbortController();
    const done = work.then(
      () => true,
      () => false,
    );
    const result = await Promise.race([
      done,
      this.clock.sleep(ms, timeout.signal).then(() => false),
    ]);
    timeout.abort();
    return result;
  }
}

function setNoDelay(client: MqttClient): void {
  const socket = client.stream as unknown as { setNoDelay?: (noDelay?: boolean) => unknown };
  if (typeof socket.setNoDelay === 'function') socket.setNoDelay(true);
}
