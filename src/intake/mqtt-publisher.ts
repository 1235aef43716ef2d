import {
  ErrorWithReasonCode,
  type IClientPublishOptions,
  type IPublishPacket,
  type MqttClient,
} from 'mqtt';
import type { Readback } from '../core/driver.js';
import type { ClaimRef, CommandRecord } from '../core/journal.js';
import type { Logger } from '../core/logger.js';
import { errorDocument, stateDocument, type MessageErrorCode } from './mqtt-message.js';
import type { MqttMetrics, PublicationKind } from './mqtt-metrics.js';
import { ResponseRoutes, type ResponseRoute } from './mqtt-response-routes.js';
import type { GatewayTopics } from './mqtt-topics.js';
import { replayedResultBody, resultBody } from './outcome.js';

/** What the publisher needs of the session: the client to publish on, and its protocol level. */
export interface PublishingLink {
  /** Null before the start and once the session has ended. */
  readonly client: MqttClient | null;
  readonly protocolLevel: 4 | 5;
  /** The broker's Maximum Packet Size (MQTT 5), when it gave one. */
  readonly maximumPacketSize?: number | undefined;
  /** The broker's Receive Maximum (MQTT 5), when it gave one. */
  readonly receiveMaximum?: number | undefined;
}

export interface MqttPublisherOptions {
  readonly link: PublishingLink;
  readonly topics: GatewayTopics;
  /** `mqtt.responseTopics`: the filters a Response Topic must match. */
  readonly responseTopics: readonly string[];
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  /** At most this many publications held for the broker while disconnected (default 10 000). */
  readonly maxHeld?: number;
  /** At most this many topics remembered as refused by the broker (default 1 000). */
  readonly maxRefusedTopics?: number;
}

/**
 * Publications held for the broker while the gateway is disconnected, at most (about 1.5 KB a
 * result). mqtt.js, left to hold them, numbers them with 16-bit packet ids that wrap: past
 * 65 535 a new one silently replaced the oldest (measured: 70 000 results settled during a
 * broker outage, 65 535 delivered, the first 4 465 lost without a word, 100 MB of heap). Past
 * the bound a result is not held: it is in the journal, the drop is logged, and the result is
 * published again from the journal once those held are acknowledged (mqtt-result-delivery.ts).
 */
export const MAX_HELD_PUBLICATIONS = 10_000;

/**
 * What became of a publication: acknowledged by the broker; refused by it or never to be
 * accepted (a failure reason code, larger than its Maximum Packet Size, a topic too long: sent
 * again it would fare the same); or not sent, or sent and not acknowledged, by this process (not
 * held past the most held, a held state replaced by a later one of its topic, the session
 * ended or the publication failed on the way).
 */
export type Delivery = 'acknowledged' | 'refused' | 'unsent';

/**
 * A publication held while disconnected, sent by reconnected(), or past the broker's Receive
 * Maximum. A held state's payload, options and resolve are those of the latest state of its
 * topic (holdState()).
 */
interface HeldPublication {
  readonly topic: string;
  readonly topicBytes: number;
  payload: string;
  options: PublicationOptions;
  resolve: (delivery: Delivery) => void;
}

/** An error answer: the document of docs/mqtt-api.md "Errors". */
export interface MessageAnswer {
  readonly code: MessageErrorCode;
  readonly detail: string;
  readonly errors?: readonly string[];
}

/** Who sent a message, as far as it can be told: for the log lines about its answer. */
export interface Requester {
  readonly key: string | null;
  readonly device: string;
}

interface PublicationOptions {
  /** What is published, for the log and the metric of a refusal. */
  readonly kind: PublicationKind;
  readonly retain: boolean;
  readonly correlationData?: Buffer;
  readonly about: Requester;
  /** No content type: an empty payload is no JSON document. */
  readonly bare?: boolean;
}

/** The longest part of a refused Response Topic that is logged. */
const LOGGED_TOPIC_CHARS = 256;

/**
 * Topics whose refusal by the broker has been logged at warn and is remembered (see refused()),
 * at most: their names come from the site's devices but also from requesters (Response Topics,
 * the device level of a command topic), so the set is bounded. When it is full it is emptied
 * and starts again: a requester with a new Response Topic per command must not leave the
 * refusal of a device's result topic unsaid.
 */
export const MAX_REFUSED_TOPICS = 1_000;

/** MQTT 5 reason code 0x87 Not authorized (§2.4): what a broker's ACL answers. */
const NOT_AUTHORIZED = 0x87;

/** The gateway's own publications (its status) answer no requester and name no device. */
const NO_REQUESTER: Requester = { key: null, device: '' };

/** A topic name is a UTF-8 string of at most this many bytes (MQTT 5 §1.5.4, 3.1.1 §1.5.3). */
const MAX_TOPIC_BYTES = 65_535;

/** Receive Maximum when the broker gives none (MQTT 5 §3.2.2.3.3), and over MQTT 3.1.1. */
const UNLIMITED_RECEIVE_MAXIMUM = 65_535;

/**
 * Everything the MQTT intake publishes: results (to the result topic and the Response Topics of
 * the commands' requesters), replays, error answers, the retained state and the gateway's
 * retained status (status(): `online` and `offline`, which the session asks for). Also decides
 * which Response Topics may be answered (mqtt-topics.ts), and keeps those of commands in flight
 * until their outcome.
 *
 * Publications are QoS 1 and never synchronous: called from the client's handleMessage they are
 * deferred to the next turn of the event loop, after the PUBACK (mqtt.js issue #2026). While
 * disconnected, the publisher holds results and sends them on reconnection (in memory only,
 * at most MAX_HELD_PUBLICATIONS), not mqtt.js: mqtt.js sends what it holds one at a time, each
 * after the broker's PUBACK of the one before, and takes no new publication (nor says it is
 * connected) until it is done, so a backlog delayed everything by its length times the round
 * trip to the broker. Connected or not, no more are unacknowledged at once than the broker's
 * Receive Maximum allows (inFlightLimit); the rest are held the same way, a device's state once,
 * the latest (holdState()).
 */
export class MqttPublisher {
  private readonly link: PublishingLink;
  private readonly topics: GatewayTopics;
  private readonly allowed: readonly string[];
  private readonly metrics: MqttMetrics;
  private readonly logger: Logger;
  private readonly routes = new ResponseRoutes();
  /** Publications not yet acknowledged by the broker (QoS 1). */
  private readonly unacknowledged = new Set<Promise<Delivery>>();
  /** Publications deferred to the next turn, sent there together (see publish()). */
  private readonly deferred: (() => void)[] = [];
  private readonly maxHeld: number;
  private readonly maxRefusedTopics: number;
  /** Publications handed to mqtt.js and not yet acknowledged (or given up) by the broker. */
  private handed = 0;
  /** Of those, states: not counted towards the most held (holdState()). */
  private handedStates = 0;
  /**
   * Publications not handed to mqtt.js yet, in order: made while disconnected, for the next
   * connection, or past the broker's Receive Maximum, for the PUBACKs of those before them. A
   * status goes ahead of the results held (status()); a state is held once per topic
   * (holdState()).
   */
  private readonly held: HeldPublication[] = [];
  /** The states in `held`, by topic: at most one each, the latest (holdState()). */
  private readonly heldStates = new Map<string, HeldPublication>();
  /**
   * Whether the connection publications are handed on has been announced (reconnected()):
   * false once one found the client disconnected, so that those held then go out first.
   */
  private live = true;
  /** Publications not held since the connection was lost (see MAX_HELD_PUBLICATIONS). */
  private dropped = 0;
  /**
   * Topics on which the broker refused a publication and has not accepted one since, on this
   * connection: each refusal streak is logged at warn once (refused()).
   */
  private readonly refusedTopics = new Set<string>();

  constructor(options: MqttPublisherOptions) {
    this.link = options.link;
    this.topics = options.topics;
    this.allowed = options.responseTopics;
    this.metrics = options.metrics;
    this.logger = options.logger;
    this.maxHeld = options.maxHeld ?? MAX_HELD_PUBLICATIONS;
    this.maxRefusedTopics = options.maxRefusedTopics ?? MAX_REFUSED_TOPICS;
  }

  /**
   * A connection is up: says how many publications were not held while it was down (each is
   * in the journal: `GET /v1/commands/{key}`, `sluicectl show`).
   */
  reconnected(): void {
    // A broker's ACL may have been changed meanwhile: a refusal on the new connection is said
    // again.
    this.refusedTopics.clear();
    // A status held from an earlier connection is not sent: `online` before this connection's
    // subscription is granted would say the gateway hears commands it does not hear yet. This
    // connection publishes its own at its SUBACK.
    for (let i = this.held.length - 1; i >= 0; i--) {
      const publication = this.held[i];
      if (publication?.options.kind !== 'status') continue;
      this.held.splice(i, 1);
      publication.resolve('unsent');
    }
    // Held while disconnected: sent now, in their order, without waiting for a PUBACK between
    // them, as many as the broker takes unacknowledged (see the class comment).
    this.live = true;
    this.handHeld();
    if (this.dropped === 0) return;
    this.logger.warn(
      { dropped: this.dropped, held: this.maxHeld },
      'results not published while disconnected from the MQTT broker: more were waiting than are held; they are in the journal',
    );
    this.dropped = 0;
  }

  /**
   * The MQTT 5 Response Topic of a message, when it may be answered there. A refused one is
   * logged (never with the payload) and counted; the message is still answered on the result
   * topic.
   */
  responseRoute(packet: IPublishPacket, requester: Requester): ResponseRoute | undefined {
    const topic = packet.properties?.responseTopic;
    if (topic === undefined) return undefined;
    const verdict = this.topics.responseTopicVerdict(topic, this.allowed);
    if (!verdict.ok) {
      this.metrics.mqttResponseTopicsRefused.inc({ reason: verdict.reason });
      this.logger.warn(
        {
          key: requester.key,
          device: requester.device,
          reason: verdict.reason,
          responseTopic: topic.slice(0, LOGGED_TOPIC_CHARS),
        },
        'response topic refused; answered on the result topic only',
      );
      return undefined;
    }
    return { topic, correlationData: packet.properties?.correlationData };
  }

  /** Answers the requester when the command settles (in memory only, docs/mqtt-api.md). */
  awaitOutcome(record: CommandRecord, route: ResponseRoute | undefined): void {
    if (route !== undefined) this.routes.add(record, route);
  }

  /**
   * A requester's route of a claim lost with its batch (its COMMIT failed): nothing more is
   * sent there for that message (ResponseRoutes.drop).
   */
  forgetRoute(claim: ClaimRef, route: ResponseRoute): void {
    this.routes.drop(claim, route);
  }

  /** A settled command's stored result, to the result topic and its requesters' routes. */
  result(record: CommandRecord): void {
    void this.publishResult(record);
  }

  /**
   * result(), resolving with what became of the publication on the result topic (the routes'
   * copies are not waited for): mqtt-result-delivery.ts.
   */
  publishResult(record: CommandRecord): Promise<Delivery> {
    const body = resultBody(record);
    const delivery = this.send(this.topics.result(record.device), body, {
      kind: 'result',
      retain: false,
      about: record,
    });
    for (const route of this.routes.take(record)) this.publishToRoute(route, body, record);
    return delivery;
  }

  /** A retry of a settled command: its stored result, marked as a replay. */
  replay(record: CommandRecord, route: ResponseRoute | undefined): void {
    const body = replayedResultBody(record);
    this.publish(this.topics.result(record.device), body, {
      kind: 'result',
      retain: false,
      about: record,
    });
    if (route !== undefined) this.publishToRoute(route, body, record);
  }

  /**
   * The answer to a message that did not become (or join) a command: on the result topic of
   * the device its topic names when a key can be read (without one, the result topic's
   * subscribers could not tell whose error it is), and on its Response Topic. `resultTopic`:
   * the result topic that mirrors the command topic, when that is not this gateway's (a former
   * topic root's).
   */
  error(
    requester: Requester,
    route: ResponseRoute | undefined,
    receivedAt: number,
    answer: MessageAnswer,
    resultTopic = this.topics.result(requester.device),
  ): void {
    const body = errorDocument({
      key: requester.key,
      device: requester.device,
      code: answer.code,
      detail: answer.detail,
      ...(answer.errors === undefined ? {} : { errors: answer.errors }),
      receivedAt: new Date(receivedAt).toISOString(),
    });
    if (requester.key !== null) {
      this.publish(resultTopic, body, { kind: 'result', retain: false, about: requester });
    }
    if (route !== undefined) this.publishToRoute(route, body, requester);
  }

  /**
   * The retained state; not queued while disconnected (the mirror is published on connect).
   * Held past the broker's Receive Maximum, the latest of a device replaces the one held before
   * it (holdState()).
   */
  state(device: string, readback: Readback): void {
    if (this.link.client?.connected !== true) return;
    this.publish(this.topics.state(device), stateDocument(device, readback), {
      kind: 'state',
      retain: true,
      about: { key: null, device },
    });
  }

  /**
   * Clears the retained state of a device the site no longer configures: an empty retained
   * message (mqtt-retained-state.ts).
   */
  clearState(device: string): void {
    void this.clearRetained(this.topics.state(device), device);
  }

  /**
   * An empty retained message on `topic` (MQTT 5 §3.3.1.3: the broker keeps no retained message
   * there). Resolves true once the broker acknowledged it (mqtt-former-roots.ts).
   */
  async clearRetained(topic: string, device = ''): Promise<boolean> {
    const delivery = await this.send(topic, '', {
      kind: 'state',
      retain: true,
      about: { key: null, device },
      bare: true,
    });
    return delivery === 'acknowledged';
  }

  /**
   * Publications held for the next connection or handed to mqtt.js and not yet acknowledged,
   * once those deferred by the last turns are made too (as flush()): while disconnected, those
   * the intake's stop leaves unpublished (it says how many).
   */
  async unpublished(): Promise<number> {
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    return this.handed + this.held.length;
  }

  /** Whether the client is connected to the broker now (ResultSink). */
  linked(): boolean {
    return this.link.client?.connected === true;
  }

  /** The session has ended: publications still held will never be sent. */
  ended(): void {
    this.heldStates.clear();
    for (const publication of this.held.splice(0)) publication.resolve('unsent');
  }

  /** Resolves once every publication made so far is acknowledged (or given up). */
  async flush(): Promise<void> {
    // Results of commands that settled just before (their publication is deferred by one or
    // two turns of the event loop) are included.
    await new Promise((resolve) => setImmediate(resolve));
    await new Promise((resolve) => setImmediate(resolve));
    await Promise.all([...this.unacknowledged]);
  }

  private publishToRoute(route: ResponseRoute, body: string, about: Requester): void {
    this.publish(route.topic, body, {
      kind: 'response',
      retain: false,
      about,
      ...(route.correlationData === undefined ? {} : { correlationData: route.correlationData }),
    });
  }

  private publish(topic: string, payload: string, options: PublicationOptions): void {
    void this.send(topic, payload, options);
  }

  /** Publishes; resolves once the broker acknowledged it, or it was refused or not sent. */
  private send(topic: string, payload: string, options: PublicationOptions): Promise<Delivery> {
    const topicBytes = Buffer.byteLength(topic);
    if (topicBytes > MAX_TOPIC_BYTES) {
      // Only the answer to a command topic whose device level fills it: `result/` is 3 bytes
      // longer than `cmd/`. mqtt.js would write half the PUBLISH and then throw, outside any
      // handler (the daemon exited on one such message).
      this.logger.warn(
        {
          key: options.about.key,
          device: options.about.device.slice(0, LOGGED_TOPIC_CHARS),
          topic: topic.slice(0, LOGGED_TOPIC_CHARS),
          topicBytes,
        },
        `not published: the topic is longer than MQTT allows (${MAX_TOPIC_BYTES} bytes)`,
      );
      return Promise.resolve('refused');
    }
    const sent = new Promise<Delivery>((resolve) => {
      this.defer(() => {
        const client = this.link.client;
        if (client === null) {
          resolve('unsent');
          return;
        }
        // Behind those held, until reconnected() sends them: mqtt.js says it is connected
        // before its own resending is done and the intake is told. And held while as many
        // as the broker takes are unacknowledged (inFlightLimit).
        if (!client.connected) this.live = false;
        const publication = { topic, topicBytes, payload, options, resolve };
        if (options.kind === 'status') {
          // Ahead of the results held, behind the statuses held before it; out now if the
          // connection is announced and the broker takes one more unacknowledged.
          const firstResult = this.held.findIndex((h) => h.options.kind !== 'status');
          this.held.splice(firstResult === -1 ? this.held.length : firstResult, 0, publication);
          this.handHeld();
          return;
        }
        if (
          !client.connected ||
          !this.live ||
          this.held.length > 0 ||
          this.handed >= this.inFlightLimit()
        ) {
          if (options.kind === 'state') {
            this.holdState(publication);
            return;
          }
          if (this.counted() >= this.maxHeld) {
            this.drop(topic, options.about);
            resolve('unsent');
            return;
          }
          this.held.push(publication);
          return;
        }
        this.hand(publication);
      });
    });
    this.unacknowledged.add(sent);
    void sent.then(() => this.unacknowledged.delete(sent));
    return sent;
  }

  /** Publications handed or held that count towards the most held: all but states. */
  private counted(): number {
    return this.handed - this.handedStates + this.held.length - this.heldStates.size;
  }

  /**
   * A state (or the clearing of one) held: in place of the one of its topic held already, if
   * any, which is then not sent ('unsent') — the broker keeps a state topic's latest message
   * only, and a subscriber is owed the latest state, not every position a travelling valve
   * passed. At most one per topic, so as many as devices (and topics cleared): never dropped
   * for the most held, nor counted towards it (nor are those handed to mqtt.js: as many as the
   * broker's Receive Maximum at most). Until 2026-12-07 states were held one per reading: those
   * of valves travelling while the broker was slow to acknowledge filled the most held, past it
   * the last state of a valve (`OPEN`) was dropped, and the broker kept `OPENING 99` until the
   * device next changed; after an outage, the mirror published at the reconnection was dropped
   * the same way behind the results held.
   */
  private holdState(publication: HeldPublication): void {
    const earlier = this.heldStates.get(publication.topic);
    if (earlier === undefined) {
      this.held.push(publication);
      this.heldStates.set(publication.topic, publication);
      return;
    }
    earlier.resolve('unsent');
    earlier.payload = publication.payload;
    earlier.options = publication.options;
    earlier.resolve = publication.resolve;
  }

  /**
   * Hands a publication to mqtt.js, with the properties and the packet size limit of the
   * connection it goes out on (a fallback to MQTT 3.1.1 may have come in between).
   */
  private hand(publication: HeldPublication): void {
    const { topic, topicBytes, payload, options, resolve } = publication;
    const client = this.link.client;
    if (client === null) {
      resolve('unsent');
      return;
    }
    const publishOptions: IClientPublishOptions = { qos: 1, retain: options.retain };
    if (this.link.protocolLevel === 5 && options.bare !== true) {
      publishOptions.properties = {
        contentType: options.kind === 'status' ? 'text/plain' : 'application/json',
        payloadFormatIndicator: true,
        ...(options.correlationData === undefined
          ? {}
          : { correlationData: options.correlationData }),
      };
    }
    const limit = this.link.maximumPacketSize;
    const bytes = publishPacketBytes(topicBytes, Buffer.byteLength(payload), publishOptions);
    if (limit !== undefined && bytes > limit) {
      // The broker would close the connection on it (MQTT 5 §3.2.2.3.6: a packet over its
      // limit is a protocol error), and mqtt.js would send it again on every reconnection:
      // the intake would go on losing its connection, commands and all (measured on
      // mosquitto with max_packet_size). The result is in the journal.
      this.logger.warn(
        {
          key: options.about.key,
          device: options.about.device.slice(0, LOGGED_TOPIC_CHARS),
          topic: topic.slice(0, LOGGED_TOPIC_CHARS),
          bytes,
          maximumPacketSize: limit,
        },
        "not published: larger than the broker's Maximum Packet Size",
      );
      resolve('refused');
      return;
    }
    const state = options.kind === 'state';
    this.handed += 1;
    if (state) this.handedStates += 1;
    client.publish(topic, payload, publishOptions, (error) => {
      this.handed -= 1;
      if (state) this.handedStates -= 1;
      // Its slot in the broker's Receive Maximum is free: the next one held goes out.
      this.handHeld();
      // mqtt.js calls back with null, not undefined, on success.
      if (!(error instanceof Error)) this.refusedTopics.delete(topic);
      else if (error instanceof ErrorWithReasonCode) this.refused(topic, options, error);
      else if (this.link.client !== null) {
        this.logger.warn(
          {
            err: error,
            key: options.about.key,
            device: options.about.device.slice(0, LOGGED_TOPIC_CHARS),
            topic: topic.slice(0, LOGGED_TOPIC_CHARS),
          },
          'MQTT publication failed',
        );
      }
      resolve(
        !(error instanceof Error)
          ? 'acknowledged'
          : error instanceof ErrorWithReasonCode
            ? 'refused'
            : 'unsent',
      );
    });
  }

  /**
   * At most this many QoS 1 publications are unacknowledged by the broker at once: its Receive
   * Maximum (MQTT 5 §3.3.4: a client MUST NOT send more; a broker that enforces it ends the
   * connection with 0x93 Receive Maximum exceeded, and mqtt.js, which does not keep to it,
   * sent every one it held again on the next connection, over the limit again). The retained
   * status is one of them (status()). Mosquitto announces 20 (max_inflight_messages) and does
   * not enforce it.
   */
  private inFlightLimit(): number {
    return Math.max(1, this.link.receiveMaximum ?? UNLIMITED_RECEIVE_MAXIMUM);
  }

  /**
   * Hands the publications held, in order, as long as the connection is announced and up and the
   * broker takes more unacknowledged (inFlightLimit).
   */
  private handHeld(): void {
    const client = this.link.client;
    while (
      this.held.length > 0 &&
      this.live &&
      client?.connected === true &&
      this.handed < this.inFlightLimit()
    ) {
      const publication = this.held.shift();
      if (publication === undefined) continue;
      if (this.heldStates.get(publication.topic) === publication) {
        this.heldStates.delete(publication.topic);
      }
      this.hand(publication);
    }
  }

  /**
   * The broker answered a publication with a failure reason code (MQTT 5 PUBACK, §3.4.2.1):
   * most often 0x87 Not authorized, from an ACL that does not let the gateway publish on the
   * topic. mqtt.js has dropped the publication by then (it is not sent again, and holds no
   * memory), and the outcome is in the journal; only the topic's subscribers miss it. The first
   * refusal on a topic is logged at warn with its key, device and the broker's reason, then
   * those on the same topic at debug until one there is accepted or the gateway reconnects:
   * the state of a travelling valve changes several times a second, and a denied state topic
   * would otherwise log as fast. Each is counted. Over MQTT 3.1.1 a PUBACK carries no reason,
   * and a broker drops a denied publication unsaid (Mosquitto acknowledges it as accepted).
   */
  private refused(topic: string, options: PublicationOptions, error: ErrorWithReasonCode): void {
    const reasonCode = `0x${error.code.toString(16).padStart(2, '0')}`;
    this.metrics.mqttPublicationsRefused.inc({ kind: options.kind, reason: reasonCode });
    const first = !this.refusedTopics.has(topic);
    if (first) {
      if (this.refusedTopics.size >= this.maxRefusedTopics) this.refusedTopics.clear();
      this.refusedTopics.add(topic);
    }
    this.logger[first ? 'warn' : 'debug'](
      {
        key: options.about.key,
        device: options.about.device.slice(0, LOGGED_TOPIC_CHARS),
        topic: topic.slice(0, LOGGED_TOPIC_CHARS),
        kind: options.kind,
        reasonCode,
        reason: error.message.replace(/^Publish error: /, ''),
        ...(error.code === NOT_AUTHORIZED
          ? { hint: "the broker's ACL does not let this gateway publish on this topic" }
          : {}),
      },
      first
        ? `not published: the MQTT broker refused the publication; it is not sent again (${options.kind === 'status' ? 'the status is published again at the next connection' : 'the outcome is in the journal'}), and further refusals on this topic are logged at debug`
        : 'not published: the MQTT broker refused the publication',
    );
  }

  /**
   * The gateway's retained status (`online` at a connection's SUBACK, `offline` once it takes no
   * more commands: mqtt-command-subscription.ts, mqtt-session.ts). A QoS 1 publication like the
   * others, within the broker's Receive Maximum with them: published beside them, past a
   * Receive Maximum of 1 the broker ends the connection (0x93), and the status and the results
   * in flight with it are lost with the connection. Held, it goes ahead of the results held,
   * after any status held before it; it is never dropped for the most held, nor sent on a later
   * connection (reconnected()). A refusal is said as a refused result is (refused()), at warn on
   * each connection, since reconnected() forgets the topics refused on the last one; subscribers
   * to the status topic are left with whatever it held (`offline`, the Will, or nothing).
   */
  status(status: 'online' | 'offline'): Promise<Delivery> {
    return this.send(this.topics.status, status, {
      kind: 'status',
      retain: true,
      about: NO_REQUESTER,
    });
  }

  /**
   * A publication not held for the broker: the first of an outage is logged with its key. A
   * result, replay, error or Response Topic copy: a state is never dropped (holdState()), nor a
   * status.
   */
  private drop(topic: string, about: Requester): void {
    this.metrics.mqttResultsNotPublished.inc();
    this.dropped += 1;
    if (this.dropped > 1) return;
    this.logger.warn(
      { key: about.key, device: about.device, topic, held: this.maxHeld },
      this.link.client?.connected === true
        ? 'the MQTT broker is not acknowledging results, with the most held past its Receive Maximum: further results are not published (they are in the journal)'
        : 'disconnected from the MQTT broker with the most results held: further results are not published (they are in the journal)',
    );
  }

  /**
   * Runs `publication` in the next turn of the event loop, with every other publication of
   * this turn, in order: mqtt.js corks the socket for each packet until the next tick, so the
   * packets of one turn leave in one write (results and state of commands that settled
   * together) rather than one system call each.
   */
  private defer(publication: () => void): void {
    this.deferred.push(publication);
    if (this.deferred.length > 1) return;
    setImmediate(() => {
      for (const run of this.deferred.splice(0)) run();
    });
  }
}

/**
 * The size of a QoS 1 PUBLISH packet (MQTT 5 §3.3, 3.1.1 §3.3), never under it: each length
 * counted at its widest encoding. Fixed header (1 byte and the remaining length, up to 4),
 * topic (2-byte length and its bytes), packet identifier (2), the MQTT 5 properties (their
 * length, up to 4, then each one's identifier byte and value) and the payload.
 */
function publishPacketBytes(
  topicBytes: number,
  payloadBytes: number,
  options: IClientPublishOptions,
): number {
  let properties = 0;
  const p = options.properties;
  if (p !== undefined) {
    properties += 4;
    if (p.payloadFormatIndicator !== undefined) properties += 2;
    if (p.contentType !== undefined) properties += 3 + Buffer.byteLength(p.contentType);
    if (p.correlationData !== undefined) properties += 3 + p.correlationData.length;
  }
  return 5 + 2 + topicBytes + 2 + properties + payloadBytes;
}
