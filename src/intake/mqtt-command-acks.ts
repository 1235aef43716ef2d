import type { DoneCallback, IPublishPacket, MqttClient } from 'mqtt';
import type { ClaimRef } from '../core/journal.js';
import type { Logger } from '../core/logger.js';
import type { CommandPipeline } from '../core/pipeline.js';
import { OrderedAcks, PUBACK_HELD, type HeldAck } from './mqtt-acks.js';
import type { MessageAck } from './mqtt-held-copies.js';
import type { MessageOutcome, MqttMetrics } from './mqtt-metrics.js';
import type { MqttPublisher } from './mqtt-publisher.js';
import type { ResponseRoute } from './mqtt-response-routes.js';

/** What to do with a message after handling it: acknowledge it, or leave it with the broker. */
export type Handling =
  /**
   * `durable`: the PUBACK waits for the journal's barrier (group commit). `claimed`: the
   * message claimed or joined a command, whose claim the barrier makes durable.
   */
  | { readonly kind: 'ack'; readonly durable: boolean; readonly claimed?: Claimed }
  | { readonly kind: 'withhold'; readonly reason: string; readonly reconnect: boolean };

export const ACK: Handling = { kind: 'ack', durable: true };
/**
 * A message whose acknowledgement vouches for nothing in the journal: one that wrote nothing
 * there (malformed, untimed, for an unknown device, on a foreign topic), or a replay of a
 * settlement already on disk (its duplicate event is an audit line only). It waited for
 * whatever barrier was pending, and while the journal failed closed it was withheld and the
 * connection dropped for it: redelivered and answered again at every reconnection, for as
 * long as the journal failed (SPEC §5: acknowledged, so that it does not redeliver).
 */
export const ACK_NOW: Handling = { kind: 'ack', durable: false };

/** A message that names a device and a key, as far as it got. */
export interface Received {
  readonly device: string;
  readonly key: string;
  readonly route: ResponseRoute | undefined;
  readonly receivedAt: number;
}

/** A message that claimed a command, or joined one in flight: that command's claim. */
export interface Claimed extends Received {
  readonly claim: ClaimRef;
}

export interface CommandAcksOptions {
  readonly pipeline: Pick<CommandPipeline, 'syncPending' | 'durable' | 'claimed'>;
  readonly publisher: Pick<MqttPublisher, 'error' | 'forgetRoute'>;
  /** Drops the connection so that the broker redelivers what was not acknowledged. */
  readonly link: { dropConnection(client: MqttClient, reason: string): void };
  readonly metrics: Pick<MqttMetrics, 'mqttMessages' | 'journalFailures'>;
  readonly logger: Logger;
}

/**
 * The PUBACK of each command message once CommandMessages (mqtt-commands.ts) has handled it:
 * given at once, in the messages' order behind those held for a barrier, once the journal's
 * barrier has carried the message's claim to disk (I5; group commit), or withheld (no PUBACK:
 * the broker keeps the message, and the connection is dropped when it is to redeliver it now).
 * Each message is counted in sluice_mqtt_messages_total as its PUBACK is decided.
 */
export class CommandAcks {
  private readonly pipeline: CommandAcksOptions['pipeline'];
  private readonly publisher: CommandAcksOptions['publisher'];
  private readonly link: CommandAcksOptions['link'];
  private readonly metrics: CommandAcksOptions['metrics'];
  private readonly logger: Logger;
  /** The PUBACKs held for barriers, of the client messages come from (one per session). */
  private acks: OrderedAcks | null = null;

  constructor(options: CommandAcksOptions) {
    this.pipeline = options.pipeline;
    this.publisher = options.publisher;
    this.link = options.link;
    this.metrics = options.metrics;
    this.logger = options.logger;
  }

  /**
   * Gives `packet`'s PUBACK through `ack`, or withholds it, as `handling` says; `outcome` (if
   * any) is counted once that is decided.
   */
  give(
    client: MqttClient,
    packet: IPublishPacket,
    ack: MessageAck,
    handling: Handling,
    outcome: MessageOutcome | null,
  ): void {
    switch (handling.kind) {
      case 'ack':
        if (!handling.durable || !this.pipeline.syncPending) {
          if (outcome !== null) this.count(outcome);
          if (ack.kind === 'held') {
            ack.acks.release(ack.ack, true);
            return;
          }
          this.acknowledge(client, packet, ack.callback);
          return;
        }
        // Group commit: the PUBACK waits for the claim's fsync, shared with other commands.
        this.awaitDurable(client, packet, ack, handling.claimed, outcome);
        return;
      case 'withhold':
        if (outcome !== null) this.count(outcome);
        // With an error, mqtt.js sends no PUBACK and goes on with the connection's next packet
        // (a callback never called would stall every later packet of the connection, PUBACKs
        // and PINGRESP included, until the keepalive times out: mqtt.js issue #1935).
        if (ack.kind === 'held') ack.acks.release(ack.ack, false);
        else ack.callback(new Error(`not acknowledged: ${handling.reason}`));
        if (handling.reconnect) this.link.dropConnection(client, handling.reason);
        return;
    }
  }

  /**
   * Acknowledges `packet` now (`callback`: mqtt.js's), in the messages' order: a PUBACK (a QoS 2
   * message's PUBCOMP) behind those held for a barrier before it on the connection, sent as soon
   * as they are. For a message whose acknowledgement vouches for nothing in the journal: a
   * command message that wrote nothing there (ACK_NOW), and every message that is no command (a
   * copy of the gateway's state or status, mqtt.ts), which was acknowledged at once and so
   * overtook the PUBACKs of command messages received before it (MQTT 5 §4.6, [MQTT-4.6.0-2]).
   */
  acknowledge(client: MqttClient, packet: IPublishPacket, callback: DoneCallback): void {
    const acks = this.acksOf(client);
    if (packet.qos > 0 && packet.messageId !== undefined && acks.holding) {
      callback(PUBACK_HELD);
      acks.release(acks.hold(packet.messageId, packet.qos), true);
      return;
    }
    callback();
  }

  /** Acknowledges once the journal's barrier carried the message's claim to disk (I5). */
  private awaitDurable(
    client: MqttClient,
    packet: IPublishPacket,
    ack: MessageAck,
    claimed: Claimed | undefined,
    outcome: MessageOutcome | null,
  ): void {
    // The connection the message came on: mqtt.js makes a new stream for each.
    const connection = client.stream;
    const acks = ack.kind === 'held' ? ack.acks : this.acksOf(client);
    // mqtt.js takes the connection's next packet only once this one's callback is called: it
    // is called now, and the PUBACK sent once the barrier has returned (mqtt-acks.ts), so that
    // the messages that follow are claimed meanwhile and share the barrier. A QoS 0 message has
    // no PUBACK to wait for. A message that waited (HeldCopies) has its PUBACK held already.
    let held: HeldAck | null | undefined;
    if (ack.kind === 'held') held = ack.ack;
    else {
      held =
        packet.qos === 0
          ? null
          : packet.messageId !== undefined && acks.available
            ? acks.hold(packet.messageId, packet.qos)
            : undefined;
      if (held !== undefined) ack.callback(held === null ? undefined : PUBACK_HELD);
    }
    const acknowledge = (send: boolean, error?: Error): void => {
      if (held === undefined) {
        if (ack.kind === 'callback') ack.callback(send ? undefined : error);
      } else if (held !== null) acks.release(held, send);
    };
    this.pipeline.durable().then(
      () => {
        if (packet.qos > 0 && (client.stream !== connection || !client.connected)) {
          // That connection is gone. mqtt.js would send this PUBACK on the next one (queued
          // while disconnected, or written at once on the new stream), where the broker has
          // redelivered the message under the same packet id: one delivery, two PUBACKs, and
          // the second names an id the broker may have given to another message meanwhile
          // (MQTT 5 §2.2.1), acknowledging it before it is journaled. The redelivery is
          // acknowledged on its own connection; its claim is on disk now.
          this.count('withheld');
          acknowledge(false, new Error('not acknowledged: the connection it came on is closed'));
          return;
        }
        if (outcome !== null) this.count(outcome);
        acknowledge(true);
      },
      (error: unknown) => {
        this.logger.error(
          { err: error, topic: packet.topic },
          'journal sync failed: not acknowledged (fail closed)',
        );
        this.count('journal_unavailable');
        // With group commit a full disk shows here, at the commit, not at the claim.
        this.metrics.journalFailures.inc();
        if (claimed !== undefined) this.forgetIfLost(claimed);
        if (packet.qos === 0) {
          // Never redelivered, so dropping the connection would not bring it back: its
          // requester is told instead, as when the claim itself is refused (refuse()).
          if (claimed !== undefined) this.lostClaim(claimed);
          acknowledge(true);
          return;
        }
        acknowledge(false, new Error('not acknowledged: journal sync failed'));
        this.link.dropConnection(client, 'journal sync failed');
      },
    );
  }

  /**
   * A QoS 0 command whose claim the journal's barrier failed to make durable: the batch it was
   * in was lost (none of its writes kept), or its fsync failed (kept in the journal file, not
   * known to be on disk). Which one cannot be told here, so the answer says both; publishing
   * it again with the same key is safe either way: one command, written at most once (I1).
   */
  private lostClaim(message: Received): void {
    const { device, key, route, receivedAt } = message;
    this.logger.warn(
      { key, device, code: 'JOURNAL_UNAVAILABLE' },
      'QoS 0 command not made durable: answered (QoS 0 is never redelivered)',
    );
    this.publisher.error({ key, device }, route, receivedAt, {
      code: 'JOURNAL_UNAVAILABLE',
      detail:
        'the journal could not make this command durable; it may not have been kept: publish it again with the same key (it runs at most once), at QoS 1 so that the broker redelivers it',
    });
  }

  /**
   * A message whose claim's barrier failed: when the claim was lost with its batch (its key
   * names no command of it now: readClaim), its requester's Response Topic is forgotten. Kept,
   * it was sent the outcome of the next command claimed under the key with the same payload,
   * though this message was done with. When the batch was kept (its fsync failed) the claim
   * runs and its requester is answered there; when the journal cannot be read now, the route
   * is kept as well.
   */
  private forgetIfLost(message: Claimed): void {
    if (message.route === undefined) return;
    try {
      if (this.pipeline.claimed(message.claim) !== undefined) return;
    } catch {
      return;
    }
    this.publisher.forgetRoute(message.claim, message.route);
  }

  /** The held PUBACKs of `client` (the session's one client; a new one starts afresh). */
  acksOf(client: MqttClient): OrderedAcks {
    if (this.acks?.client !== client) this.acks = new OrderedAcks(client);
    return this.acks;
  }

  count(outcome: MessageOutcome): void {
    this.metrics.mqttMessages.inc({ outcome });
  }
}
