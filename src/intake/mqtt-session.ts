import {
  connect,
  type DoneCallback,
  type IClientOptions,
  type IConnackPacket,
  type IDisconnectPacket,
  type IPublishPacket,
  type MqttClient,
} from 'mqtt';
import { Backoff } from '../backoff.js';
import { withoutPassword } from '../config/config.js';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { ProtocolVersion, type MqttProtocol, type ProtocolLevel } from './mqtt-protocol-version.js';
import { CommandSubscription } from './mqtt-command-subscription.js';
import { cutOversizedPublishes, InboundCuts, PublishCutter } from './mqtt-inbound-cut.js';
import { IdentifierProbe, type IdentifierCheck } from './mqtt-identifier-probe.js';
import { LeftSubscriptions } from './mqtt-left-subscriptions.js';
import { SessionCloses } from './mqtt-session-closes.js';
import { SESSION_TAKEN_OVER } from './mqtt-takeover.js';
import {
  buildClientOptions,
  MAX_PACKET_BYTES,
  setTlsFiles,
  type MqttConfig,
  type TlsFiles,
} from './mqtt-client-options.js';
import { MAX_COMMAND_BYTES } from './mqtt-message.js';
import type { MqttMetrics } from './mqtt-metrics.js';
import type { Delivery } from './mqtt-publisher.js';
import type { GatewayTopics } from './mqtt-topics.js';
import { connectionErrorReason, loggedConnectionError } from './mqtt-connection-error.js';

export type { MqttConfig } from './mqtt-client-options.js';
export { MAX_PACKET_BYTES } from './mqtt-client-options.js';
export type { MqttProtocol, ProtocolLevel } from './mqtt-protocol-version.js';

/** What the session hands to the rest of the intake. */
export interface SessionEvents {
  /**
   * A PUBLISH from the broker, to be acknowledged (callback()) or not (callback(error)); the
   * client's `handleMessage` (see MqttIntake).
   */
  readonly message: (client: MqttClient, packet: IPublishPacket, callback: DoneCallback) => void;
  /**
   * Acknowledges now a PUBLISH that is no command (one the session reads itself), behind the
   * PUBACKs the intake holds for messages received before it ([MQTT-4.6.0-2]).
   */
  readonly acknowledge: (
    client: MqttClient,
    packet: IPublishPacket,
    callback: DoneCallback,
  ) => void;
  /** A connection is up (before its subscription is confirmed); `online` is on its way. */
  readonly connected: () => void;
  /**
   * Publishes the retained status (`online`, `offline`) on the current connection: the intake's
   * publisher (MqttPublisher.status), which keeps it within the broker's Receive Maximum with
   * the results and says a refusal as its own. Resolves with what became of it.
   */
  readonly publishStatus: (status: 'online' | 'offline') => Promise<Delivery>;
  /**
   * The connection's probe found that the broker delivers no Subscription Identifiers although
   * its CONNACK announced them (mqtt-identifier-probe.ts): command copies are no longer told
   * apart by them from now on.
   */
  readonly identifiersMissing: () => void;
  /**
   * A connection's probe of Subscription Identifiers ended (an answer, none in time, or the
   * connection gone): the command copies held for it are handled now or let go (HeldCopies).
   */
  readonly identifiersAnswered: () => void;
  /**
   * A QoS 2 PUBLISH as mqtt.js reads it off the connection, before it stores the packet and
   * answers PUBREC: mqtt.js hands it to `message` only at the broker's PUBREL, which may come on
   * a later connection (HeldCopies.qos2Came).
   */
  readonly qos2Came: (client: MqttClient, packet: IPublishPacket) => void;
}

export interface MqttSessionOptions {
  readonly config: MqttConfig;
  readonly gatewayId: string;
  readonly topics: GatewayTopics;
  readonly clock: Clock;
  readonly logger: Logger;
  readonly reconnect?: { readonly minMs?: number; readonly maxMs?: number } | undefined;
  /** The gauge of the probe's verdict and the counter of suspected takeovers. */
  readonly metrics?:
    Pick<MqttMetrics, 'mqttSubscriptionIdentifiers' | 'mqttTakeoversSuspected'> | undefined;
  /** The probe of Subscription Identifiers' waits, ms (IdentifierProbe): tests. */
  readonly identifierProbe?:
    { readonly graceMs?: number | undefined; readonly timeoutMs?: number | undefined } | undefined;
  /** How long the command subscription waits for its SUBACK, ms (CommandSubscription): tests. */
  readonly subackTimeoutMs?: number | undefined;
}

/** A connection that stayed up this long resets the reconnect backoff when it ends. */
const STABLE_CONNECTION_MS = 10_000;
/**
 * The Subscription Identifier of the command subscription (MQTT 5). Constant across connections
 * and runs: the broker keeps it with the subscription in the persistent session, and messages
 * queued there while the gateway was away carry it too.
 */
const COMMAND_SUBSCRIPTION_ID = 1;
/** How long stop() waits for `offline` to be acknowledged and for a clean DISCONNECT. */
const STOP_STEP_MS = 2_000;
/** MQTT 5 DISCONNECT reason 0x04: the broker publishes the Will (`offline`) even so. */
const DISCONNECT_WITH_WILL = 0x04;

/**
 * The MQTT session of the intake: one persistent session (clean start off) on one client id,
 * connected in the background and kept up with a jittered backoff; the protocol version (MQTT 5
 * preferred, 3.1.1 when the broker refuses 5 and the configuration allows it, SPEC §5:
 * mqtt-protocol-version.ts); the command subscription and the retained `online` / `offline`
 * status (mqtt-command-subscription.ts) with `offline` as the Last Will; and a bounded, clean
 * stop. It knows nothing of commands: PUBLISH packets go to the
 * `message` event given to start().
 */
export class MqttSession {
  readonly topics: GatewayTopics;
  private readonly config: MqttConfig;
  /**
   * The broker's URL as the log shows it: a password in it as `***`. The configuration refuses
   * one (config.ts), but an intake built from code is not checked there, and the log must not
   * carry it whatever it is given.
   */
  private readonly shownUrl: string;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly clientOptions: IClientOptions;
  private readonly backoff: Backoff;
  private readonly reconnectMinMs: number;
  private current: MqttClient | null = null;
  /** The MQTT version spoken, and the fallback to 3.1.1 (mqtt-protocol-version.ts). */
  private readonly version: ProtocolVersion;
  /** Set when publications must no longer be sent (the client is ending). */
  private isEnded = false;
  /** The current connection is being dropped: nothing more is taken from it. */
  private isDropping = false;
  /** A CONNECT was sent and no CONNACK accepted it yet. */
  private awaitingConnack = false;
  /** The connection attempt under way has had its failure said (onError, onStreamError). */
  private attemptFailed = false;
  /** The broker's Maximum Packet Size (MQTT 5 CONNACK), when it gave one. */
  private brokerMaxPacket: number | undefined;
  /** The broker's Receive Maximum (MQTT 5 CONNACK), when it gave one. */
  private brokerReceiveMaximum: number | undefined;
  /** When the connection came up, on the monotonic clock (clock.elapsed()); null: not connected. */
  private connectedAt: number | null = null;
  /** The command subscription and the retained status (mqtt-command-subscription.ts). */
  private readonly subscription: CommandSubscription;
  /**
   * The Subscription Identifier the command subscription is made with on the current connection
   * (MQTT 5, when the broker's CONNACK does not say it has none); undefined otherwise.
   */
  private subscriptionId: number | undefined;
  /** Whether the broker delivers the Subscription Identifiers it announces (IdentifierProbe). */
  private readonly probe: IdentifierProbe;
  /** Subscriptions an earlier configuration or another client left in the session (LeftSubscriptions). */
  private readonly left: LeftSubscriptions;
  /** The payload sizes of the MQTT 3.1.1 commands cut as they came (mqtt-inbound-cut.ts). */
  private readonly cuts = new InboundCuts();
  private error: string | null = null;
  private errorStreak = 0;
  /** The DISCONNECT the broker sent on the current connection (MQTT 5), if any. */
  private brokerDisconnect: IDisconnectPacket | null = null;
  /** Whether another client takes the session over, judged as connections end (SessionCloses). */
  private readonly closes: SessionCloses;
  /** The events given to start(). */
  private events: SessionEvents | null = null;

  constructor(options: MqttSessionOptions) {
    this.config = options.config;
    this.shownUrl = withoutPassword(options.config.url);
    this.topics = options.topics;
    this.clock = options.clock;
    this.logger = options.logger;
    this.version = new ProtocolVersion(options.config, this.logger, this.shownUrl);
    this.reconnectMinMs = options.reconnect?.minMs ?? 1_000;
    this.backoff = new Backoff({
      minMs: this.reconnectMinMs,
      maxMs: options.reconnect?.maxMs ?? 30_000,
    });
    this.clientOptions = buildClientOptions({
      config: this.config,
      gatewayId: options.gatewayId,
      level: this.version.level,
      reconnectMinMs: this.reconnectMinMs,
      statusTopic: this.topics.status,
    });
    this.subscription = new CommandSubscription({
      topics: this.topics,
      logger: this.logger,
      level: () => this.version.level,
      current: (client) => client === this.current && !this.isEnded,
      failed: (reason) => {
        this.error = reason;
      },
      dropConnection: (client, reason) => {
        this.dropConnection(client, reason);
      },
      publishStatus: (status) => {
        void this.events?.publishStatus(status);
      },
      subackTimeoutMs: options.subackTimeoutMs,
    });
    this.closes = new SessionCloses({
      clientId: this.clientOptions.clientId ?? '',
      statusTopic: this.topics.status,
      clock: this.clock,
      logger: this.logger,
      sessionExpiryS: () => (this.version.level === 5 ? this.config.sessionExpiryS : undefined),
      lastStatus: () => this.subscription.lastStatus,
      current: (client) => client === this.current && !this.isEnded,
      cause: (cause) => {
        this.error = cause;
      },
      suspected: (evidence, closes) => {
        options.metrics?.mqttTakeoversSuspected.inc({ evidence }, closes);
      },
    });
    this.probe = new IdentifierProbe({
      topic: this.topics.status,
      logger: this.logger,
      missing: () => {
        this.events?.identifiersMissing();
      },
      foreign: (topic) => {
        this.left.unsubscribeForeign(topic);
      },
      answered: () => {
        this.events?.identifiersAnswered();
      },
      checked: (check) => {
        options.metrics?.mqttSubscriptionIdentifiers.set(identifiersDelivered(check));
      },
      graceMs: options.identifierProbe?.graceMs,
      timeoutMs: options.identifierProbe?.timeoutMs,
    });
    this.left = new LeftSubscriptions({
      topics: this.topics,
      logger: this.logger,
      client: () => this.client,
    });
  }

  /** The client while the session runs; null before start() and once stopped. */
  get client(): MqttClient | null {
    return this.isEnded ? null : this.current;
  }

  /** The protocol level of the next (or current) connection. */
  get protocolLevel(): ProtocolLevel {
    return this.version.level;
  }

  /**
   * The largest packet the broker takes, in bytes, as its last CONNACK said (MQTT 5 §3.2.2.3.6);
   * undefined when it set no limit, and with MQTT 3.1.1, which cannot say.
   */
  get maximumPacketSize(): number | undefined {
    return this.brokerMaxPacket;
  }

  /**
   * How many QoS 1 publications the broker takes unacknowledged, as its last accepted CONNACK
   * said (MQTT 5 §3.2.2.3.3); undefined when it set none (65,535), and with MQTT 3.1.1.
   */
  get receiveMaximum(): number | undefined {
    return this.brokerReceiveMaximum;
  }

  get ended(): boolean {
    return this.isEnded;
  }

  get dropping(): boolean {
    return this.isDropping;
  }

  get lastError(): string | null {
    return this.error;
  }

  /** Connected, and the command subscription confirmed by the broker. */
  connected(): boolean {
    return this.current?.connected === true && this.subscription.subscribed && !this.isEnded;
  }

  protocol(): MqttProtocol {
    return this.version.protocol(this.probe.check === 'missing');
  }

  /** Connects in the background; reconnects with backoff until stop(). */
  start(events: SessionEvents): void {
    this.events = events;
    // manualConnect: every listener is in place before the first CONNECT is written.
    const client = connect(this.config.url, { ...this.clientOptions, manualConnect: true });
    this.current = client;
    // MQTT 3.1.1 cannot tell the broker the largest packet the gateway takes: a larger command
    // is cut as it comes (its start kept, for its key), never held whole.
    cutOversizedPublishes(
      client,
      () => this.version.level === 4,
      () => new PublishCutter(MAX_PACKET_BYTES, MAX_COMMAND_BYTES + 1, this.cuts),
    );
    client.handleMessage = (packet, callback) => {
      if (this.closes.receive(client, packet) || this.probe.receive(client, packet)) {
        // A copy of the gateway's own status (QoS 0) it reads back, never a command.
        events.acknowledge(client, packet, callback);
        return;
      }
      events.message(client, packet, callback);
    };
    client.on('packetsend', (packet) => {
      if (packet.cmd !== 'connect') return;
      // A new connection: packets of the dropped one can no longer reach handleMessage
      // (mqtt.js gives each connection its own packet pump). Reset here, not on the
      // 'connect' event: mqtt.js emits that only after resending its stored publications,
      // when the broker's redeliveries may already have been handled.
      this.isDropping = false;
      this.awaitingConnack = true;
      this.attemptFailed = false;
      this.brokerDisconnect = null;
      this.left.connectionMade();
      // MQTT.js passes on only the stream errors that carry a code (a socket's): when MQTT.js
      // itself refuses to write a packet (mqtt-packet's "Invalid …", "Username is required to
      // use password") it ends the stream with an error without one, which it swallows.
      const stream = client.stream;
      stream.on('error', (error: Error & { code?: unknown }) => {
        if (error.code === undefined && client.stream === stream) this.onStreamError(error);
      });
      // mqtt.js leaves Nagle's algorithm on: a result published right after a PUBACK would
      // wait for the broker's delayed ACK (~40 ms). Set on every new socket, as it is made.
      setNoDelay(client);
    });
    // The CONNACK as it is read, before mqtt.js resends what it stored and says 'connect': the
    // broker's queued messages may be handled meanwhile, by this connection's identifiers.
    client.on('packetreceive', (packet) => {
      if (packet.cmd === 'connack') this.onConnack(client, packet);
      else if (packet.cmd === 'publish' && packet.qos === 2) events.qos2Came(client, packet);
    });
    client.on('connect', (connack) => {
      this.onConnect(client, connack, events);
    });
    // MQTT 5: a broker may say why it ends the connection (a DISCONNECT before it closes it).
    client.on('disconnect', (packet) => {
      this.brokerDisconnect = packet;
    });
    // Prepended: mqtt.js's own close handler schedules the reconnect with
    // `options.reconnectPeriod`, so the next delay must be set before it runs.
    client.prependListener('close', () => {
      this.onClose(client);
    });
    client.on('error', (error) => {
      this.onError(client, error);
    });
    try {
      client.connect();
    } catch (error) {
      // mqtt.js makes the connection's stream inside connect(): TLS material it cannot use (a
      // key or certificate that does not parse: an intake built from code, or files changed
      // after the start's check) throws here, before any stream exists, and nothing reconnects.
      // Said as the connection's error (the log, /readyz) instead of ending the daemon's start;
      // the session stays down until it is stopped.
      this.attemptFailed = true;
      this.failed(error instanceof Error ? error : new Error(String(error)));
    }
  }

  /**
   * Has the broker send the retained messages of `filter` (to the `message` event): subscribes
   * at QoS 0 and unsubscribes at once, both on the current connection. A broker sends the
   * retained messages of a subscription as it takes the SUBSCRIBE, so they precede the UNSUBACK
   * on the wire: when this resolves `read`, all of them have been handled. `refused`: the broker
   * refused the subscription (an ACL); `lost`: the connection ended first. MQTT 5: No Local, so
   * that the gateway's own publications meanwhile are not sent back.
   */
  readRetained(filter: string): Promise<'read' | 'refused' | 'lost'> {
    const client = this.client;
    if (client?.connected !== true) return Promise.resolve('lost');
    const options =
      this.version.level === 5 ? { qos: 0 as const, nl: true, rh: 0 } : { qos: 0 as const };
    return new Promise((resolve) => {
      let refused = false;
      client.subscribe(filter, options, (error, granted) => {
        // A refusal (reason code 0x80 and up) comes as an error; a closed connection too, and
        // then the UNSUBSCRIBE fails as well.
        const qos = granted?.[0]?.qos;
        refused = error !== null || qos === undefined || qos >= 0x80;
      });
      client.unsubscribe(filter, (error) => {
        // mqtt.js calls back with null, not undefined, on success.
        if (error instanceof Error) resolve('lost');
        else resolve(refused ? 'refused' : 'read');
      });
    });
  }

  /** See LeftSubscriptions.unsubscribeFormer. */
  unsubscribeFormer(filter: string): void {
    this.left.unsubscribeFormer(filter);
  }

  /** See LeftSubscriptions.unsubscribeForeign. */
  unsubscribeForeign(topic: string): void {
    this.left.unsubscribeForeign(topic);
  }

  /**
   * The Subscription Identifier the command subscription carries on this connection, which the
   * broker puts on every message that subscription delivers (MQTT 5 §3.8.2.1.2); undefined over
   * MQTT 3.1.1 and with a broker that has none.
   */
  get commandSubscriptionId(): number | undefined {
    // While the connection's probe has not answered, a copy without it waits for the answer
    // (identifiersPending). A broker found to deliver none (IdentifierProbe): every copy is
    // taken as the command subscription's, as with a broker whose CONNACK says it has none.
    const client = this.current;
    if (client !== null && this.probe.pending(client)) return this.subscriptionId;
    return this.probe.usable ? this.subscriptionId : undefined;
  }

  /**
   * Whether `client`'s connection announced Subscription Identifiers and its probe has not
   * answered yet (IdentifierProbe.pending): a command copy without the command subscription's
   * identifier cannot be judged before, and waits (HeldCopies).
   */
  identifiersPending(client: MqttClient): boolean {
    return this.probe.pending(client);
  }

  /** Whether the broker delivers the Subscription Identifiers it announces (IdentifierProbe). */
  get subscriptionIdentifiers(): IdentifierCheck {
    return this.probe.check;
  }

  /** The payload size `packet` had before it was cut as it came, once; undefined if not cut. */
  cutPayloadBytes(packet: IPublishPacket): number | undefined {
    return this.cuts.take(packet.topic, packet.messageId);
  }

  /** See LeftSubscriptions.unsubscribeOverlapping. */
  unsubscribeOverlapping(topic: string): void {
    this.left.unsubscribeOverlapping(topic);
  }

  /** See LeftSubscriptions.unsubscribeStateCopies. */
  unsubscribeStateCopies(topic: string): void {
    this.left.unsubscribeStateCopies(topic);
  }

  /** See LeftSubscriptions.unsubscribeQos2. */
  unsubscribeQos2(topic: string): void {
    this.left.unsubscribeQos2(topic);
  }

  /**
   * Drops the connection without DISCONNECT so that the broker keeps the unacknowledged
   * messages for the session and redelivers them on the reconnection, after a backoff. The
   * broker publishes the Will (`offline`) meanwhile: the gateway is not taking commands.
   */
  dropConnection(client: MqttClient, reason: string): void {
    if (this.isDropping || this.isEnded || client !== this.current) return;
    this.isDropping = true;
    this.logger.warn({ reason }, 'dropping the MQTT connection; the broker keeps the message');
    client.stream.destroy();
  }

  /**
   * Publishes retained `offline` once `flush` (the results still being published) is done, and
   * ends the connection cleanly; each step bounded. Unacknowledged messages stay in the
   * broker's session for the next start. Resolves true when it was connected (`flush` ran),
   * false when the publications held for the broker go with the process.
   */
  async stop(flush: () => Promise<unknown>): Promise<boolean> {
    const client = this.current;
    // No stream: its connect() threw (start()), and mqtt.js's end() would throw on it too.
    if (client === null || (client.stream as MqttClient['stream'] | undefined) === undefined) {
      this.isEnded = true;
      return false;
    }
    const wasConnected = client.connected;
    // Before `offline`, which the probe's subscription would bring back.
    this.probe.end();
    if (wasConnected) {
      if (!(await this.within(STOP_STEP_MS, flush()))) {
        this.logger.warn({}, 'results not acknowledged by the broker in time');
      }
      const events = this.events;
      const published =
        events !== null &&
        (await this.within(
          STOP_STEP_MS,
          events.publishStatus('offline').then((delivery) => {
            if (delivery !== 'acknowledged') throw new Error(delivery);
          }),
        ));
      if (!published) this.logger.warn({}, '`offline` not acknowledged in time');
    }
    this.isEnded = true;
    this.subscription.subscribed = false;
    this.subscription.connectionEnded();
    const connected = client.connected;
    const ended = new Promise<void>((resolve) => {
      // MQTT 5: disconnecting "with Will Message" makes the broker publish `offline` too, in
      // case the explicit publication above did not get through.
      const opts = this.version.level === 5 ? { reasonCode: DISCONNECT_WITH_WILL } : {};
      client.end(!connected, opts, () => {
        resolve();
      });
    });
    if (!(await this.within(STOP_STEP_MS, ended))) {
      // end() waits for unacknowledged publications; do not wait for them past the bound.
      client.stream.destroy();
      this.logger.warn({}, 'MQTT connection did not close in time; closed forcibly');
    }
    return wasConnected;
  }

  /**
   * TLS files for the connections from now on (checked by the caller: src/config/preflight.ts).
   * TLS authenticates at the handshake, so the connection that is up keeps its session; the next
   * one, a reconnection included, presents these. MQTT.js makes each connection from the
   * client's own options object (as fallBack relies on), and over `wss://` from its copy of
   * them in `wsOptions`: setTlsFiles sets both. Returns whether a connection is up (it goes on
   * with the files it was made with).
   */
  replaceTlsFiles(files: TlsFiles): boolean {
    for (const options of [this.clientOptions, this.current?.options]) {
      if (options !== undefined) setTlsFiles(options, files);
    }
    return this.current?.connected === true && !this.isEnded;
  }

  /**
   * The password (mqtt.passwordFile, read again and checked by the caller:
   * src/daemon/token-reload.ts) for the connections from now on. The broker checks it at CONNECT,
   * so the connection that is up keeps its session; the next one, a reconnection included, sends
   * this one (MQTT.js builds each CONNECT from the client's own options object, as
   * replaceTlsFiles relies on). Returns whether it differs from the one before, and whether a
   * connection is up.
   */
  replacePassword(password: string): { readonly changed: boolean; readonly connected: boolean } {
    const changed = this.clientOptions.password !== password;
    for (const options of [this.clientOptions, this.current?.options]) {
      if (options !== undefined) options.password = password;
    }
    return { changed, connected: this.current?.connected === true && !this.isEnded };
  }

  /**
   * A CONNACK, as mqtt.js reads it: when it accepts the connection, the identifiers it announces
   * are this connection's from now on, for the messages the broker sends before the 'connect'
   * event (onConnect) too.
   */
  private onConnack(client: MqttClient, connack: IConnackPacket): void {
    const code = this.version.level === 5 ? connack.reasonCode : connack.returnCode;
    if ((code ?? 0) !== 0 || this.isEnded) return;
    // Read at the CONNACK: mqtt.js sends the publications a dropped connection left unacknowledged
    // before it says 'connect' (onConnect).
    this.brokerReceiveMaximum =
      this.version.level === 5 ? connack.properties?.receiveMaximum : undefined;
    // A broker without Subscription Identifiers says so in its CONNACK, and would end the
    // connection on a SUBSCRIBE that carries one (MQTT 5 §3.8.3.1, 0xA1).
    this.subscriptionId =
      this.version.level === 5 && connack.properties?.subscriptionIdentifiersAvailable !== false
        ? COMMAND_SUBSCRIPTION_ID
        : undefined;
    this.probe.connack(client, this.subscriptionId !== undefined);
  }

  private onConnect(client: MqttClient, connack: IConnackPacket, events: SessionEvents): void {
    this.awaitingConnack = false;
    if (this.isEnded) return;
    // A duration follows (a stable connection?): the monotonic clock, which never steps.
    this.connectedAt = this.clock.elapsed();
    this.brokerMaxPacket =
      this.version.level === 5 ? connack.properties?.maximumPacketSize : undefined;
    this.errorStreak = 0;
    this.error = null;
    const sessionPresent = connack.sessionPresent;
    this.logger.info(
      { sessionPresent, protocol: this.protocol().summary },
      'connected to the MQTT broker',
    );
    // Subscribed again at every connection, the session present or not: the session may have
    // lost the command filter while this gateway was away — another gateway given the same
    // mqtt.clientId (a copied site file) took the session over meanwhile and unsubscribed the
    // filter as one left by an earlier configuration (unsubscribeFormer), as this one does its
    // filter in turn. Trusting the session, the gateway stayed deaf once the other had gone,
    // connected and ready. The same filter subscribed again replaces its subscription without
    // a gap; no retained message comes with it over MQTT 5 (retain handling 2), and over 3.1.1 a
    // retained command is refused as at any subscription. Ready (subscribed) only at the SUBACK,
    // session present or not: until then the session may be without the filter, and a command
    // published meanwhile is dropped by the broker (no subscriber), not held for this gateway.
    this.subscription.subscribed = false;
    // First: the read subscribes the status filter, which the probe subscribes next.
    this.closes.connected(client, this.version.level, sessionPresent);
    if (this.subscriptionId === undefined) this.probe.notUsed();
    else this.probe.begin(client);
    this.subscription.subscribe(client, this.subscriptionId);
    events.connected();
  }

  /**
   * The gateway takes no more commands (a graceful stop has begun; the connection stays up for
   * the results of the commands still settling): the retained status says `offline` now
   * (CommandSubscription.stopTakingCommands).
   */
  stopTakingCommands(): void {
    this.subscription.stopTakingCommands(this.client);
  }

  private onClose(client: MqttClient): void {
    const now = this.clock.elapsed();
    const upMs = this.connectedAt === null ? null : now - this.connectedAt;
    const stable = upMs !== null && upMs >= STABLE_CONNECTION_MS && !this.isDropping;
    const disconnect = this.brokerDisconnect;
    this.brokerDisconnect = null;
    this.connectedAt = null;
    const unanswered = this.awaitingConnack && !this.attemptFailed;
    this.awaitingConnack = false;
    // Not ready again before the next connection's SUBACK: mqtt.js counts a connection as up
    // from its CONNACK, and sends what it held (an `online` or a result still in flight when
    // the last one ended) before it says 'connect' — a while on a slow uplink, in which the
    // last connection's subscription said ready of one that has none yet.
    this.subscription.subscribed = false;
    this.subscription.connectionEnded();
    this.probe.end();
    // The copies held for a verdict on this connection go with it (the broker redelivers them).
    this.events?.identifiersAnswered();
    if (this.isEnded) return;
    if (unanswered) {
      // The CONNECT went out and the connection ended with neither a CONNACK nor an error: the
      // broker closed it, as Mosquitto does on a CONNECT it finds malformed ("protocol error")
      // or will not take. Said like any other failure, or the intake would stay unconnected
      // with nothing in the log above debug and /readyz saying only "not connected".
      this.failed(
        new Error(
          'the broker closed the connection without answering the CONNECT: it refused it (its log says why; e.g. a client id, user name or topic root it does not accept)',
        ),
      );
    }
    if (stable) this.backoff.reset();
    const delay = this.backoff.next();
    client.options.reconnectPeriod = delay;
    if (upMs !== null) {
      const reason = disconnect === null ? {} : brokerReason(disconnect);
      this.logger.warn(
        { reconnectInMs: delay, connectedForMs: Math.round(upMs), ...reason },
        'disconnected from the MQTT broker',
      );
      // Closed by the broker (not dropped by the gateway, no error), with no reason or because
      // another client took the session over.
      const byBroker =
        !this.isDropping &&
        !this.attemptFailed &&
        (disconnect === null || disconnect.reasonCode === SESSION_TAKEN_OVER);
      this.closes.connectionEnded(upMs, byBroker, disconnect);
    } else {
      this.logger.debug({ reconnectInMs: delay }, 'MQTT connection attempt failed');
      this.closes.attemptFailed();
    }
  }

  private onError(client: MqttClient, error: Error): void {
    this.attemptFailed = true;
    if (this.version.refuses(error, this.awaitingConnack)) {
      if (this.config.protocolVersion === 'auto') {
        this.version.fallBack(client, error);
        this.backoff.reset();
        return;
      }
      this.failed(
        error,
        `${error.message}: the broker does not speak MQTT ${this.version.level === 5 ? '5' : '3.1.1'} (mqtt.protocolVersion ${this.config.protocolVersion}; \`auto\` falls back to 3.1.1)`,
      );
    } else {
      this.failed(error);
    }
  }

  /** An error MQTT.js swallows (see start()): a packet it refused to write, the CONNECT above all. */
  private onStreamError(error: Error): void {
    if (this.isEnded) return;
    this.attemptFailed = true;
    this.failed(error, `MQTT client refused to send a packet: ${error.message}`);
  }

  /** Records why the intake is not connected (/readyz) and logs it. */
  private failed(error: Error, reason = connectionErrorReason(error)): void {
    const changed = reason !== this.error;
    this.error = reason;
    this.errorStreak += 1;
    // The first failure of a streak is worth a warning, and so is a new reason (a broker that
    // was down comes up and refuses the CONNECT); a broker down for an hour is not worth
    // thousands of them.
    const level = this.errorStreak === 1 || changed ? 'warn' : 'debug';
    this.logger[level](
      {
        err: loggedConnectionError(error),
        url: this.shownUrl,
        ...(reason === error.message ? {} : { reason }),
      },
      'MQTT connection error',
    );
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

/** sluice_mqtt_subscription_identifiers_delivered: 1, 0, or NaN while not known or not used. */
function identifiersDelivered(check: IdentifierCheck): number {
  switch (check) {
    case 'delivered':
      return 1;
    case 'missing':
      return 0;
    case 'unverified':
    case 'not_used':
      return Number.NaN;
  }
}

/** The reason of a broker's DISCONNECT, for the log. */
function brokerReason(packet: IDisconnectPacket): Record<string, unknown> {
  const code = packet.reasonCode ?? 0;
  const reasonString = packet.properties?.reasonString;
  return {
    reasonCode: `0x${code.toString(16).padStart(2, '0')}`,
    ...(reasonString === undefined ? {} : { reason: reasonString }),
  };
}

function setNoDelay(client: MqttClient): void {
  const socket = client.stream as unknown as { setNoDelay?: (noDelay?: boolean) => unknown };
  if (typeof socket.setNoDelay === 'function') socket.setNoDelay(true);
}
