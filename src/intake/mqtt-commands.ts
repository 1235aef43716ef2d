import type { DoneCallback, IPublishPacket, MqttClient } from 'mqtt';
import type { Clock } from '../core/clock.js';
import { isTerminal } from '../core/command.js';
import {
  InvalidCommandError,
  InvalidKeyError,
  DeviceQueueFullError,
  JournalUnavailableError,
  ShuttingDownError,
  UnknownDeviceError,
} from '../core/errors.js';
import { claimRef } from '../core/journal.js';
import type { Logger } from '../core/logger.js';
import type { CommandPipeline, SubmitOutcome } from '../core/pipeline.js';
import type { NamedIdentity } from './identities.js';
import { afterWritten } from './mqtt-acks.js';
import { ACK, ACK_NOW, CommandAcks, type Handling, type Received } from './mqtt-command-acks.js';
import { parseCommandMessage } from './mqtt-message.js';
import type { MessageOutcome, MqttMetrics } from './mqtt-metrics.js';
import type { MqttPublisher } from './mqtt-publisher.js';
import { ExpiredRedeliveries } from './mqtt-expired-redeliveries.js';
import { HeldCopies, type HeldCopy, type MessageAck } from './mqtt-held-copies.js';
import { RetainedCommands } from './mqtt-retained-commands.js';
import { StrayAnswers } from './mqtt-stray-answers.js';
import { StrayCopies } from './mqtt-stray-copies.js';
import type { FormerCommandTopic, GatewayTopics } from './mqtt-topics.js';

/** What message handling needs of the session. */
export interface CommandLink {
  /** The current connection is being dropped: take nothing more from it. */
  readonly dropping: boolean;
  /** Drops the connection so that the broker redelivers what was not acknowledged. */
  dropConnection(client: MqttClient, reason: string): void;
  /** Unsubscribes a command filter of an earlier configuration, left in the persistent session. */
  unsubscribeFormer(filter: string): void;
  /** Unsubscribes the filters that could have delivered a message on a topic not ours. */
  unsubscribeForeign(topic: string): void;
  /** The command subscription's MQTT 5 Subscription Identifier on this connection, if any. */
  readonly commandSubscriptionId: number | undefined;
  /**
   * Whether `client`'s connection has yet to find whether the broker delivers the identifiers
   * it announced (IdentifierProbe): a copy without the command subscription's waits (HeldCopies).
   */
  identifiersPending(client: MqttClient): boolean;
  /** Unsubscribes the filters beside the command filter that deliver a command topic. */
  unsubscribeOverlapping(topic: string): void;
  /** Unsubscribes the filters beside the command filter that deliver a command topic at QoS 2. */
  unsubscribeQos2(topic: string): void;
  /** The MQTT version of the connection: 5, or 4 (3.1.1). */
  readonly protocolLevel: 4 | 5;
  /** The payload size of a command cut as it came (mqtt-inbound-cut.ts); undefined if not cut. */
  cutPayloadBytes(packet: IPublishPacket): number | undefined;
}

export interface CommandMessagesOptions {
  readonly pipeline: CommandPipeline;
  readonly identity: NamedIdentity;
  readonly topics: GatewayTopics;
  readonly publisher: MqttPublisher;
  readonly link: CommandLink;
  readonly metrics: MqttMetrics;
  readonly logger: Logger;
  readonly clock: Clock;
  /** `mqtt.acceptUntimedCommands` (SPEC §5). */
  readonly acceptUntimed: boolean;
  /** How long the journal keeps a settled key, s (CommandMessageInput.keysKeptS). */
  readonly keysKeptS?: number | undefined;
  /** How long a stray copy awaits the command subscription's copy (StrayCopies), ms. */
  readonly strayCopyWaitMs?: number | undefined;
  /** Copies held for the probe's verdict at most (HeldCopies). */
  readonly maxHeldCopies?: number | undefined;
}

/** Said of an untimed redelivery over MQTT 5 (CommandMessages.handle). */
const UNTIMED_REDELIVERY =
  '(message): a redelivery (DUP) without a Message Expiry Interval: if it was published with one, the interval ran out while it waited for its redelivery (a broker sends such a message without it), and it is stale';

/**
 * The command messages of the MQTT intake: each PUBLISH on `{prefix}/cmd/{device}` is parsed,
 * claimed in the journal through the pipeline, and acknowledged or not; what cannot become a
 * command is answered (docs/mqtt-api.md "Errors").
 *
 * I5: a command message is acknowledged (PUBACK) only after its claim is on disk (the
 * journal's barrier). mqtt.js sends the PUBACK when the `handleMessage` callback is called
 * without an error; `receive` is that handleMessage: it claims, then gives the PUBACK or not
 * (CommandAcks, mqtt-command-acks.ts). A PUBACK that waits for a barrier is held and sent by
 * OrderedAcks (mqtt-acks.ts) instead, in the messages' order, while mqtt.js goes on with the
 * next messages, which join the same barrier. When the claim cannot be made (journal unavailable), the callback gets an error —
 * mqtt.js then skips the PUBACK and its packet pump moves on — and the connection is dropped,
 * because a broker redelivers an unacknowledged QoS 1 message only on a new connection of the
 * session (MQTT 5 §4.4).
 */
export class CommandMessages {
  private readonly pipeline: CommandPipeline;
  private readonly identity: NamedIdentity;
  private readonly topics: GatewayTopics;
  private readonly publisher: MqttPublisher;
  private readonly link: CommandLink;
  private readonly metrics: MqttMetrics;
  /** Set by handle() for receive(), which counts it (decide()). */
  private decided: MessageOutcome | null = null;
  private readonly logger: Logger;
  private readonly clock: Clock;
  private readonly acceptUntimed: boolean;
  private readonly keysKeptS: number | undefined;
  /** False once stopping or once the pipeline refuses as shutting down: nothing more is claimed. */
  private isTaking = true;
  /** The PUBACK of each message, given or withheld once it is handled (mqtt-command-acks.ts). */
  private readonly acks: CommandAcks;
  /** Commands timed by their Message Expiry Interval alone (mqtt-expired-redeliveries.ts). */
  private readonly expiryTimed: ExpiredRedeliveries;
  /** Retained commands refused (mqtt-retained-commands.ts). */
  private readonly retained: RetainedCommands;
  /** Copies of commands other subscriptions of the session delivered (strayCopy). */
  private readonly strays: StrayCopies;
  /** The answers to stray copies whose sibling did not come (mqtt-stray-answers.ts). */
  private readonly strayAnswers: StrayAnswers;
  /** Copies without the command subscription's identifier awaiting the probe's verdict. */
  private readonly held: HeldCopies;
  /** The connection copies past the hold limit were last said left with the broker on. */
  private leftOn: unknown = null;

  constructor(options: CommandMessagesOptions) {
    this.pipeline = options.pipeline;
    this.identity = options.identity;
    this.topics = options.topics;
    this.publisher = options.publisher;
    this.link = options.link;
    this.metrics = options.metrics;
    this.logger = options.logger;
    this.clock = options.clock;
    this.acceptUntimed = options.acceptUntimed;
    this.keysKeptS = options.keysKeptS;
    this.acks = new CommandAcks({
      pipeline: this.pipeline,
      publisher: this.publisher,
      link: this.link,
      metrics: this.metrics,
      logger: this.logger,
    });
    this.strays = new StrayCopies(options.strayCopyWaitMs);
    this.held = new HeldCopies(options.maxHeldCopies);
    this.strayAnswers = new StrayAnswers({
      publisher: this.publisher,
      logger: this.logger,
      journaled: (key) => this.pipeline.get({ scope: this.identity.scope, key }) !== undefined,
      acceptUntimed: this.acceptUntimed,
      keysKeptS: this.keysKeptS,
    });
    this.retained = new RetainedCommands(this.publisher, this.logger);
    this.expiryTimed = new ExpiredRedeliveries({
      publisher: this.publisher,
      logger: this.logger,
      clock: this.clock,
      journaled: (key) => this.pipeline.get({ scope: this.identity.scope, key }) !== undefined,
    });
  }

  /** Whether messages are being taken (false once stopping, or the pipeline is shutting down). */
  get taking(): boolean {
    return this.isTaking;
  }

  /**
   * The broker delivers no Subscription Identifiers (mqtt-identifier-probe.ts): the copies
   * awaiting the command subscription's copy will not see one; answered now (StrayCopies).
   */
  identifiersMissing(): void {
    this.strays.answerAll();
  }

  /**
   * A connection's probe of Subscription Identifiers ended, or a connection did: the copies held
   * for its verdict are handled now, in their order, as any copy is from now on; those of a
   * connection gone are let go unacknowledged (the broker redelivers them).
   */
  identifiersAnswered(): void {
    const { ready, gone } = this.held.release((client) => this.link.identifiersPending(client));
    for (const copy of gone) this.letGo(copy);
    for (const copy of ready) {
      // Received when it came: a command timed by its receipt is not younger for the wait.
      const heldMs = this.clock.elapsed() - copy.receivedMono;
      this.process(copy.client, copy.packet, copy.ack, heldMs);
    }
    const left = this.held.leftToResend((client) => this.link.identifiersPending(client));
    if (left !== null) {
      // The copies left with the broker (HeldCopies) are sent again on a new connection only:
      // dropped once the PUBACKs of those handled above are out (their claims' barrier, then
      // written to the socket: afterWritten). Dropped in the barrier's turn, the connection took
      // them along unsent; the broker sent those copies again first on the next connection, where
      // they filled the hold again and the copies behind them were left again, for as long as
      // their commands were in flight.
      const drop = (): void => {
        if (left.client.stream !== left.connection) return;
        this.link.dropConnection(
          left.client,
          "command copies left unacknowledged past the number held for the probe's verdict, to be sent again by the broker",
        );
      };
      const written = (): void => {
        afterWritten(left.connection, drop);
      };
      this.pipeline.durable().then(written, written);
    }
  }

  /**
   * A QoS 2 PUBLISH as mqtt.js reads it, before it stores it and answers PUBREC: a command timed
   * by its receipt is timed from now, not from its hand-over at the broker's PUBREL
   * (HeldCopies.qos2Came).
   */
  qos2Came(client: MqttClient, packet: IPublishPacket): void {
    this.held.qos2Came(packet, storedQos2(client, packet.messageId), this.clock.elapsed());
  }

  /** Messages arriving from now on are left unacknowledged; the broker keeps them. */
  stopTaking(): void {
    this.isTaking = false;
    this.strays.stop();
    for (const copy of this.held.takeAll()) this.letGo(copy);
  }

  /**
   * Acknowledges a message that is no command (the gateway's own state or status read back) now,
   * behind the PUBACKs held before it on its connection (CommandAcks.acknowledge).
   */
  acknowledge(client: MqttClient, packet: IPublishPacket, callback: DoneCallback): void {
    this.acks.acknowledge(client, packet, callback);
  }

  /** The client's handleMessage: decides PUBACK or not for one message (see the class doc). */
  receive(client: MqttClient, packet: IPublishPacket, callback: DoneCallback): void {
    if (!client.connected && packet.qos > 0) {
      // Left over from a connection already closed: mqtt.js would queue a PUBACK now and send
      // it on the next connection, where the packet id may name another message. The broker
      // redelivers this one instead. A QoS 0 message has no PUBACK and no redelivery: it was
      // received whole (it came in with the close, behind a message whose claim was being made
      // durable), so it is handled as on an open connection — claimed, or refused and answered
      // — and its answer goes out on the next connection.
      this.count('withheld');
      callback(new Error('not acknowledged: the connection is closed'));
      return;
    }
    const now = this.clock.elapsed();
    // A copy left with the broker past the hold limit, sent again: timed from its first coming.
    const came = this.held.cameAt(packet, now);
    if (
      this.held.leavesBehind(client, packet) &&
      this.topics.commandDevice(packet.topic) !== null
    ) {
      // Copies were left with the broker on this connection: one handled now would overtake them.
      this.held.leave(packet, callback, came);
      this.count('withheld');
      return;
    }
    if (this.awaitsVerdict(client, packet)) {
      const acks = this.acks.acksOf(client);
      switch (this.held.hold(client, packet, callback, acks, came)) {
        case 'held':
          this.logger.debug(
            { topic: packet.topic.slice(0, 512), held: this.held.size },
            "command copy without the command subscription's identifier: held until the connection's probe finds whether the broker delivers identifiers",
          );
          return;
        case 'left':
          this.count('withheld');
          if (this.leftOn !== client.stream) {
            this.leftOn = client.stream;
            this.logger.warn(
              { topic: packet.topic.slice(0, 512), held: this.held.size },
              "command copies without the command subscription's identifier past the number held for the probe's verdict: left unacknowledged with the broker, which sends them again once the verdict is known (the connection is then dropped)",
            );
          }
          return;
        case 'unheld':
          break;
      }
    }
    this.process(client, packet, { kind: 'callback', callback }, now - came);
  }

  /**
   * Over MQTT 5, a copy on a command topic without the command subscription's identifier, on a
   * connection whose probe has not answered yet: another filter's copy (never run), or on a path
   * that drops identifiers the command subscription's own (run); not known until the verdict.
   */
  private awaitsVerdict(client: MqttClient, packet: IPublishPacket): boolean {
    if (this.link.commandSubscriptionId === undefined) return false;
    if (!this.link.identifiersPending(client)) return false;
    if (this.topics.commandDevice(packet.topic) === null) return false;
    return !this.deliveredByCommandFilter(packet);
  }

  /** A held copy whose connection ended: not acknowledged, the broker redelivers it. */
  private letGo(copy: HeldCopy): void {
    this.count('withheld');
    if (copy.ack.kind === 'held') copy.ack.acks.release(copy.ack.ack, false);
  }

  /**
   * Handles one message and gives its PUBACK, or not, through `ack`; `heldMs`: how long it waited
   * since it came (HeldCopies).
   */
  private process(client: MqttClient, packet: IPublishPacket, ack: MessageAck, heldMs = 0): void {
    let handling: Handling;
    let outcome: MessageOutcome | null;
    this.decided = null;
    const came = this.clock.elapsed() - heldMs;
    try {
      handling = this.handle(packet, heldMs);
      outcome = this.decided;
    } catch (error) {
      // A bug, not a verdict on the message: fail closed, the broker keeps it.
      this.logger.error({ err: error, topic: packet.topic }, 'command message handling failed');
      outcome = 'internal_error';
      handling = { kind: 'withhold', reason: 'internal error', reconnect: true };
    }
    // Sent again by the broker on the next connection: timed from when it first came (cameAt).
    if (handling.kind === 'withhold') this.held.withheld(packet, came);
    this.acks.give(client, packet, ack, handling, outcome);
  }

  private handle(packet: IPublishPacket, heldMs: number): Handling {
    const receivedAt = this.clock.now() - heldMs;
    const device = this.topics.commandDevice(packet.topic);
    if (device === null) {
      const former = this.topics.formerCommandTopic(packet.topic);
      if (former !== null) return this.formerRoot(packet, former, receivedAt);
      // A subscription left in the persistent session by an earlier configuration. Under another
      // gateway id it is not answered: a gateway that has that id now answers its own commands.
      const filter = this.topics.formerCommandFilter(packet.topic);
      if (filter !== null) this.link.unsubscribeFormer(filter);
      // Or by another client that used this client id (a `mosquitto_sub -c -i …` left a `#`):
      // whatever delivered it is not the gateway's subscription, and is removed.
      this.link.unsubscribeForeign(packet.topic);
      this.logger.warn({ topic: packet.topic }, 'message on a topic that is not a command topic');
      this.decide('foreign_topic');
      return ACK_NOW;
    }
    if (this.link.commandSubscriptionId !== undefined) {
      const payload = Buffer.isBuffer(packet.payload)
        ? packet.payload
        : Buffer.from(packet.payload);
      if (!this.deliveredByCommandFilter(packet)) {
        // A copy another filter in the session delivered (one that overlaps the command filter):
        // that filter is removed, and the copy is never run (its retain flag may have been
        // cleared); the command filter's copy is handled as usual (StrayCopies).
        this.link.unsubscribeOverlapping(packet.topic);
        return this.strayCopy(packet, payload, device, receivedAt);
      }
      this.strays.ours(packet.topic, payload);
    }
    if (packet.qos === 2) {
      // The command subscription is QoS 1: a filter another client left in the session at QoS 2
      // delivered this copy (over MQTT 3.1.1 instead of the command filter, which sends none
      // then). Handled as the command's; the filter is removed, so that later commands come at
      // QoS 1. It stayed, and every command through it came at QoS 2, its PUBREC sent before its
      // claim was durable (until 2026-12-07).
      this.link.unsubscribeQos2(packet.topic);
    }
    let message = parseCommandMessage({
      device,
      payload: Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload),
      payloadBytes: this.link.cutPayloadBytes(packet),
      userProperties: packet.properties?.userProperties,
      retained: packet.retain,
      messageExpiryS: packet.properties?.messageExpiryInterval,
      acceptUntimed: this.acceptUntimed,
      keysKeptS: this.keysKeptS,
    });
    if (this.expiryTimed.refused(packet, message, device, receivedAt)) {
      this.decide('expired');
      return ACK_NOW;
    }
    if (
      message.kind === 'malformed' &&
      message.untimed !== undefined &&
      this.pipeline.get({ scope: this.identity.scope, key: message.untimed.key }) !== undefined
    ) {
      // An untimed retry of a command the journal holds (sent untimed over HTTPS, over MQTT 5
      // with a Message Expiry Interval, or while the site accepted untimed commands), or one
      // timed by an interval longer than the journal keeps a settled key: its key
      // can start no new command, so the rule against untimed commands (that one queued while
      // the gateway was away must not run late) has nothing to prevent. Claimed as a retry, it
      // is replayed, joins the command in flight, or is a key reuse; it was answered
      // INVALID_COMMAND "nothing was written", though the command had run.
      message = { kind: 'command', key: message.untimed.key, request: message.untimed.request };
    }
    const route = this.publisher.responseRoute(packet, { key: message.key, device });
    if (
      message.kind === 'malformed' &&
      packet.payload.length === 0 &&
      message.key === null &&
      route === undefined
    ) {
      // The clearing of a retained command, as docs/mqtt-api.md tells an operator to make it (an
      // empty retained message on the command topic; delivered retained over MQTT 5, retain as
      // published, and without the flag over 3.1.1 to a subscriber already there): no command,
      // and no one to answer. It was logged at warn as a malformed command message.
      this.logger.info(
        { device },
        'empty message on a command topic (the clearing of a retained command): acknowledged, nothing to do',
      );
      this.decide('invalid');
      return ACK_NOW;
    }
    if (message.kind === 'malformed' && message.cause === 'retained') {
      this.decide('invalid');
      this.retained.refuse(packet, message, device, route, receivedAt, this.link.protocolLevel);
      return ACK_NOW;
    }
    if (message.kind === 'malformed') {
      // Answered on the result topic when a key can be read, on the Response Topic when one
      // was given (MqttPublisher.error): with neither, nothing is sent, and the line says so.
      const how =
        message.key !== null || route !== undefined
          ? 'acknowledged and answered'
          : 'acknowledged, not answered (no key for the result topic, no Response Topic)';
      // A redelivery over MQTT 5 that came untimed may have lost its interval on the way: a
      // broker redelivers a message whose interval ran out without it (mqtt-expired-redeliveries.ts). Not
      // known here (not seen with one in this run): both are said.
      const perhapsExpired =
        message.cause === 'untimed' && packet.dup && this.link.protocolLevel === 5;
      const errors: readonly string[] = perhapsExpired
        ? [...message.errors, UNTIMED_REDELIVERY]
        : message.errors;
      this.logger.warn(
        { key: message.key, device, code: message.code, detail: errors.join('; ') },
        message.cause !== 'untimed'
          ? `malformed command message ${how}`
          : perhapsExpired
            ? `untimed command refused (no issuedAt, and redelivered without a message expiry: none was set, or it ran out): ${how}, nothing written`
            : `untimed command refused (no issuedAt, no message expiry): ${how}, nothing written`,
      );
      this.decide(message.cause === 'untimed' ? 'untimed' : 'invalid');
      this.publisher.error({ key: message.key, device }, route, receivedAt, {
        code: message.code,
        detail: errors.join('; '),
        errors,
      });
      return ACK_NOW;
    }
    const { key } = message;
    const received: Received = { device, key, route, receivedAt };
    const log = this.logger.child({ key, device });
    if (!this.isTaking) return this.refuse(packet, log, received, 'SHUTTING_DOWN', false);
    if (this.link.dropping && packet.qos > 0) {
      // Already parsed off a connection being dropped: left for its redelivery. A QoS 0 command
      // has none: it is claimed as on an open connection (refused and answered only when the
      // journal refuses it). It was answered JOURNAL_UNAVAILABLE "nothing was claimed" whatever
      // the drop was for (an internal error, a refused subscription, one failed commit).
      return this.refuse(packet, log, received, 'JOURNAL_UNAVAILABLE', false);
    }
    log.debug({ qos: packet.qos, dup: packet.dup }, 'command message received');

    let claim: SubmitOutcome;
    try {
      claim = this.pipeline.submit({
        key,
        identity: this.identity,
        intake: 'mqtt',
        request: message.request,
        heldMs,
      });
    } catch (error) {
      if (error instanceof JournalUnavailableError) {
        this.metrics.journalFailures.inc();
        this.metrics.accepted.inc({ intake: 'mqtt', outcome: 'refused' });
        log.error({ err: error }, 'journal unavailable: command not acknowledged (fail closed)');
        this.decide('journal_unavailable');
        return this.refuse(packet, log, received, 'JOURNAL_UNAVAILABLE', true);
      }
      if (error instanceof ShuttingDownError) {
        this.isTaking = false;
        return this.refuse(packet, log, received, 'SHUTTING_DOWN', false);
      }
      if (error instanceof UnknownDeviceError) {
        log.warn({}, 'command for an unknown device acknowledged and answered');
        this.decide('unknown_device');
        this.publisher.error({ key, device }, route, receivedAt, {
          code: 'UNKNOWN_DEVICE',
          detail: error.message,
        });
        return ACK_NOW;
      }
      if (error instanceof DeviceQueueFullError) {
        // Refused before it was journaled, as a command for an unknown device is: acknowledged
        // and answered (withheld, it would come back only at the next connection, behind what
        // came since), so that its issuer retries later or sends a stop, which is always taken.
        log.warn(
          { code: error.code },
          'command refused and answered: its device has too many waiting',
        );
        this.decide('device_queue_full');
        this.publisher.error({ key, device }, route, receivedAt, {
          code: 'DEVICE_QUEUE_FULL',
          detail: error.message,
        });
        return ACK_NOW;
      }
      if (error instanceof InvalidCommandError || error instanceof InvalidKeyError) {
        // submit() validates again what parseCommandMessage let through (the device profile's
        // actions); the key was checked already, but both are told apart all the same.
        const code =
          error instanceof InvalidKeyError ? 'MISSING_IDEMPOTENCY_KEY' : 'INVALID_COMMAND';
        log.warn({ code, detail: error.message }, 'invalid command acknowledged and answered');
        this.decide('invalid');
        this.publisher.error({ key, device }, route, receivedAt, {
          code,
          detail: error.message,
          errors: error instanceof InvalidCommandError ? error.errors : [],
        });
        return ACK_NOW;
      }
      throw error;
    }

    const record = claim.record;
    switch (claim.kind) {
      case 'new':
        this.publisher.awaitOutcome(record, route);
        this.decide('new');
        this.metrics.accepted.inc({ intake: 'mqtt', outcome: 'new' });
        log.debug({ dup: packet.dup }, 'command claimed; acknowledging');
        return { kind: 'ack', durable: true, claimed: { ...received, claim: claimRef(record) } };
      case 'duplicate':
        if (isTerminal(record.state)) {
          // A retry of a settled command: its stored result again, marked as a replay (once
          // that result is on disk: it may have settled a moment ago, under group commit).
          const durable = this.pipeline.settledDurably(record);
          if (!durable) {
            this.pipeline.durable().then(
              () => {
                this.publisher.replay(record, route);
              },
              (error: unknown) => {
                log.error({ err: error }, 'journal sync failed: replay not published');
              },
            );
          } else {
            this.publisher.replay(record, route);
          }
          this.decide('replayed');
          this.metrics.accepted.inc({ intake: 'mqtt', outcome: 'replayed' });
          log.info(
            { state: record.state, dup: packet.dup },
            'duplicate of a settled command: replayed',
          );
          if (durable) return ACK_NOW;
        } else {
          // Still in flight: its outcome will be published, to this requester's route too.
          this.publisher.awaitOutcome(record, route);
          this.decide('in_flight');
          this.metrics.accepted.inc({ intake: 'mqtt', outcome: 'in_flight' });
          log.info({ state: record.state, dup: packet.dup }, 'duplicate of a command in flight');
          // Its original's claim may be in the batch the barrier carries (the same turn).
          return { kind: 'ack', durable: true, claimed: { ...received, claim: claimRef(record) } };
        }
        return ACK;
      case 'reused':
        log.warn({}, 'idempotency key reused with a different command; acknowledged and answered');
        this.decide('key_reused');
        this.metrics.accepted.inc({ intake: 'mqtt', outcome: 'key_reused' });
        // Published once the command it names is on disk, as HTTPS answers 422 after the same
        // barrier: that command's claim may be in the batch the barrier carries, and a batch
        // lost at its COMMIT takes it along. Published at once, the requester was told its key
        // named a command the journal never held, and saw the key run its own command next.
        this.pipeline.durable().then(
          () => {
            this.publisher.error({ key, device }, route, receivedAt, {
              code: 'IDEMPOTENCY_KEY_REUSED',
              detail: `key "${key}" was used for a different command (${record.action} on ${record.device}); a key names one command`,
            });
          },
          (error: unknown) => {
            log.error(
              { err: error },
              'journal sync failed: the key reuse is not answered (the command holding the key may be lost)',
            );
            // QoS 1: not acknowledged, so the broker sends it again and it is answered then.
            // QoS 0 is never sent again: its requester is told.
            if (packet.qos !== 0) return;
            this.publisher.error({ key, device }, route, receivedAt, {
              code: 'JOURNAL_UNAVAILABLE',
              detail:
                'the journal could not make the command holding this key durable; nothing was written for this message: publish it again with the same key, at QoS 1, to learn what the key names',
            });
          },
        );
        return ACK;
    }
  }

  /**
   * A message on this gateway's command topic under a topic root the site no longer uses: its
   * `mqtt.topicRoot` changed, and the persistent session kept the old subscription. Never run
   * (the site said commands no longer come from there) nor dropped unanswered: answered
   * INVALID_COMMAND on the result topic under that root, where its requester listens, and on
   * its Response Topic; acknowledged; and the old subscription is dropped, so that the broker
   * stops delivering such commands and queueing them while the gateway is away.
   */
  private formerRoot(
    packet: IPublishPacket,
    former: FormerCommandTopic,
    receivedAt: number,
  ): Handling {
    this.link.unsubscribeFormer(former.filter);
    const { device } = former;
    const message = parseCommandMessage({
      device,
      payload: Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload),
      userProperties: packet.properties?.userProperties,
      retained: packet.retain,
      messageExpiryS: packet.properties?.messageExpiryInterval,
      acceptUntimed: this.acceptUntimed,
      keysKeptS: this.keysKeptS,
    });
    const key = message.key;
    const route = this.publisher.responseRoute(packet, { key, device });
    const commandTopic = this.topics.command(device);
    this.logger.warn(
      { key, device: device.slice(0, 256), topic: packet.topic.slice(0, 512), root: former.root },
      'command on a topic root this gateway no longer uses: answered, acknowledged, not run',
    );
    this.decide('foreign_topic');
    this.publisher.error(
      { key, device },
      route,
      receivedAt,
      {
        code: 'INVALID_COMMAND',
        detail: `(topic): "${former.root}" is a topic root this gateway no longer uses (mqtt.topicRoot is "${this.topics.root}"); publish its commands to ${commandTopic}; nothing was written`,
      },
      former.result,
    );
    return ACK_NOW;
  }

  /**
   * A command that cannot be claimed now. QoS 1: withheld (no PUBACK), so the broker keeps it
   * for the next connection of the session. QoS 2: withheld (no PUBCOMP); the broker, which had
   * its PUBREC, sends the PUBREL again on the next connection, and mqtt.js hands the message it
   * stored again (lost if the process ends first: docs/mqtt-api.md "QoS 2"). QoS 0 has no
   * redelivery: the requester is told instead, and the message is done with.
   */
  private refuse(
    packet: IPublishPacket,
    log: Logger,
    message: Received,
    code: 'JOURNAL_UNAVAILABLE' | 'SHUTTING_DOWN',
    reconnect: boolean,
  ): Handling {
    // A claim the journal refused is counted by the caller; everything else here is withheld.
    if (!reconnect) this.decide('withheld');
    const { device, key, route, receivedAt } = message;
    const detail =
      code === 'JOURNAL_UNAVAILABLE'
        ? 'the journal cannot be written; nothing was claimed or written'
        : 'the gateway is stopping and takes no new commands';
    if (packet.qos === 0) {
      log.warn({ code }, 'QoS 0 command refused and answered (QoS 0 is never redelivered)');
      this.publisher.error({ key, device }, route, receivedAt, { code, detail });
      return ACK_NOW;
    }
    log.info({ code, reconnect }, 'command left unacknowledged with the broker');
    return { kind: 'withhold', reason: detail, reconnect };
  }

  /**
   * A copy of a command that a subscription other than the command subscription delivered (MQTT
   * 5: without its Subscription Identifier). Never claimed nor run: that subscription's options
   * are another client's, and without Retain As Published a command published retained comes
   * through it unflagged (MQTT 5 §3.3.1.3), as a fresh one. Acknowledged (its sibling through the
   * command filter is the one handled); answered, as not run, only when that sibling does not
   * come (StrayCopies).
   */
  private strayCopy(
    packet: IPublishPacket,
    payload: Buffer,
    device: string,
    receivedAt: number,
  ): Handling {
    if (!this.isTaking) {
      // Stopping: left with the broker, as its sibling is (an answer meanwhile would say "not
      // run" of a command the next start may run).
      this.decide('withheld');
      return {
        kind: 'withhold',
        reason: 'the gateway is stopping and takes no new commands',
        reconnect: false,
      };
    }
    this.decide('other_subscription');
    const seen = this.strays.stray(packet.topic, payload, (why) => {
      this.strayAnswers.answer(packet, payload, device, receivedAt, why);
    });
    this.logger.debug(
      { device, sibling: seen },
      'command copy from another subscription than the command filter: acknowledged, not run',
    );
    return ACK_NOW;
  }

  /**
   * Whether the command subscription delivered `packet`: over MQTT 5 the broker puts the
   * identifiers of the subscriptions that delivered a message on it (§3.3.4: all of them on a
   * single copy). Without an identifier in use (MQTT 3.1.1, a broker without them) it cannot be
   * told, and is taken as delivered by it.
   */
  private deliveredByCommandFilter(packet: IPublishPacket): boolean {
    const ours = this.link.commandSubscriptionId;
    if (ours === undefined) return true;
    const ids = packet.properties?.subscriptionIdentifier;
    return Array.isArray(ids) ? ids.includes(ours) : ids === ours;
  }

  private count(outcome: MessageOutcome): void {
    this.acks.count(outcome);
  }

  /**
   * The outcome handle() found for the message: counted by receive() once the message is done
   * with — at once, or when its barrier has returned: a message whose claim the journal then
   * could not make durable is `journal_unavailable` (not acknowledged), not also `new`.
   */
  private decide(outcome: MessageOutcome): void {
    this.decided = outcome;
  }
}

/**
 * The QoS 2 message mqtt.js holds in its incoming store under `messageId` (PUBREC sent, PUBCOMP
 * not yet), if any. Its memory store answers at once; a store that answered later would be
 * taken to hold none.
 */
function storedQos2(client: MqttClient, messageId: number | undefined): IPublishPacket | undefined {
  if (messageId === undefined) return undefined;
  let stored: IPublishPacket | undefined;
  client.incomingStore.get({ messageId }, (error, packet) => {
    // The memory store calls back with null, not undefined, when it has the packet.
    if (!(error instanceof Error) && packet?.cmd === 'publish') stored = packet;
  });
  return stored;
}
