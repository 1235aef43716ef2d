import type { DoneCallback, IPublishPacket, MqttClient } from 'mqtt';
import { PUBACK_HELD, type HeldAck, type OrderedAcks } from './mqtt-acks.js';

/**
 * How a message's PUBACK is given once it is handled: through mqtt.js's `handleMessage` callback
 * (a message handled as it comes), or a PUBACK already held in the messages' order (a message
 * that waited, HeldCopies; QoS 0 has none, and waits with a callback that does nothing).
 */
export type MessageAck =
  | { readonly kind: 'callback'; readonly callback: DoneCallback }
  | { readonly kind: 'held'; readonly acks: OrderedAcks; readonly ack: HeldAck };

/** A copy waiting for its connection's verdict on Subscription Identifiers. */
export interface HeldCopy {
  readonly client: MqttClient;
  /** The connection it came on (mqtt.js makes a stream for each). */
  readonly connection: unknown;
  readonly packet: IPublishPacket;
  readonly ack: MessageAck;
  /** When it came (the monotonic clock): a command with no issuedAt is timed from then. */
  readonly receivedMono: number;
}

/** Copies held at most: past it a copy is handled as it comes (as a copy another filter sent). */
const MAX_HELD = 1_000;

/**
 * Command copies without the command subscription's Subscription Identifier that came before the
 * connection's probe answered whether the broker delivers identifiers (mqtt-identifier-probe.ts):
 * such a copy is either one another filter of the session delivered (never run) or, on a path
 * that drops identifiers, the command subscription's own (run), and which cannot be told yet.
 * Commands queued for the gateway come first on a connection, before the probe can answer. Each
 * waits here unacknowledged (its PUBACK held in order, mqtt-acks.ts, so that mqtt.js goes on
 * with the connection's next packets, the probe's among them) and is handled once the verdict is
 * known, as any copy is then; bounded by the probe's own timeout (10 s). A copy whose connection
 * ended meanwhile is let go unacknowledged: the broker redelivers it on the next one.
 */
export class HeldCopies {
  private readonly held: HeldCopy[] = [];

  /**
   * Holds `packet`, received on `client`'s current connection: returns false when it cannot be
   * held (too many held, or an mqtt.js without the packet writer held PUBACKs need), and it is
   * then to be handled as it comes. `callback` is mqtt.js's, called here. `receivedMono`: when it
   * came (clock.elapsed()).
   */
  hold(
    client: MqttClient,
    packet: IPublishPacket,
    callback: DoneCallback,
    acks: OrderedAcks,
    receivedMono: number,
  ): boolean {
    if (this.held.length >= MAX_HELD) return false;
    let ack: MessageAck;
    if (packet.qos > 0) {
      if (packet.messageId === undefined || !acks.available) return false;
      ack = { kind: 'held', acks, ack: acks.hold(packet.messageId) };
      callback(PUBACK_HELD);
    } else {
      // QoS 0: no PUBACK, no redelivery; mqtt.js goes on with the next packet.
      callback();
      ack = { kind: 'callback', callback: () => undefined };
    }
    this.held.push({ client, connection: client.stream, packet, ack, receivedMono });
    return true;
  }

  get size(): number {
    return this.held.length;
  }

  /**
   * The copies that no longer wait, in the order they came: `ready` (their connection's verdict
   * is known), and `gone` (their connection ended). The others stay held.
   */
  release(pending: (client: MqttClient) => boolean): {
    readonly ready: readonly HeldCopy[];
    readonly gone: readonly HeldCopy[];
  } {
    const ready: HeldCopy[] = [];
    const gone: HeldCopy[] = [];
    const kept: HeldCopy[] = [];
    for (const copy of this.held) {
      if (copy.client.stream !== copy.connection || !copy.client.connected) gone.push(copy);
      else if (pending(copy.client)) kept.push(copy);
      else ready.push(copy);
    }
    this.held.splice(0, this.held.length, ...kept);
    return { ready, gone };
  }

  /** All of them, held no more (the intake stops taking commands). */
  takeAll(): readonly HeldCopy[] {
    return this.held.splice(0);
  }
}
