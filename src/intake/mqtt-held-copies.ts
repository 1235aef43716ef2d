import { createHash } from 'node:crypto';
import type { DoneCallback, IPublishPacket, MqttClient } from 'mqtt';
import { PUBACK_HELD, type HeldAck, type OrderedAcks } from './mqtt-acks.js';

/**
 * How a message's PUBACK (a QoS 2 message's PUBCOMP: mqtt-acks.ts) is given once it is handled:
 * through mqtt.js's `handleMessage` callback (a message handled as it comes), or a PUBACK already
 * held in the messages' order (a message that waited, HeldCopies; QoS 0 has none, and waits with
 * a callback that does nothing).
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

/**
 * Copies held at most. Past it a QoS 1 copy is left with the broker (see HeldCopies); a QoS 0
 * copy, which the broker neither keeps nor sends again, is handled as it comes.
 */
const MAX_HELD = 1_000;

/**
 * Copies left with the broker (HeldCopies.hold: `left`) whose first coming is kept for their
 * redelivery, at most: past it the oldest are forgotten (one the broker no longer sends: its
 * message expiry ran out, its session was lost).
 */
const MAX_LEFT_REMEMBERED = 10_000;

/** A connection on which copies past the limit were left with the broker. */
export interface LeftCopies {
  readonly client: MqttClient;
  readonly connection: unknown;
}

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
 *
 * Past the limit a QoS 1 copy cannot wait here, and cannot be judged either: taken for another
 * filter's copy (acknowledged, never run) it lost a command the plant system sent whenever the
 * path drops identifiers; taken for the command subscription's it could run another client's
 * copy. It is left with the broker instead (no PUBACK), and once the connection's verdict is
 * known and the copies held are handled, the connection is dropped (leftToResend), so that the
 * broker sends it again on the next one, where it waits for that connection's verdict. A broker
 * redelivers an unacknowledged message only on a new connection (MQTT 5 §4.4); each connection
 * handles at least the copies held on it, so a backlog of any size is worked through.
 */
export class HeldCopies {
  private readonly held: HeldCopy[] = [];

  /** The connection on which copies past the limit were left with the broker; null: none. */
  private left: LeftCopies | null = null;

  /**
   * The connection copies were left on, kept past leftToResend until the connection ends: every
   * later QoS 1 command copy on it is left too (leavesBehind).
   */
  private leftConnection: unknown = null;

  /** When each copy left with the broker first came (clock.elapsed()), by leftId. */
  private readonly leftCame = new Map<string, number>();

  /**
   * When each QoS 2 message not acknowledged first came (clock.elapsed()), by the packet
   * mqtt.js stored for it: mqtt.js answers a QoS 2 PUBLISH with PUBREC and keeps the packet in
   * its incoming store, and hands that same packet at the broker's PUBREL, which may come on a
   * later connection (the connection lost between the PUBREC and the PUBREL), and again at the
   * broker's next PUBREL when it was withheld (no DUP: the broker sends the PUBREL again, not the
   * message). Set as the PUBLISH is read (qos2Came), else when the message is withheld. Kept as
   * long as mqtt.js keeps the packet (released with it at the PUBCOMP, or when a session not
   * resumed discards it).
   */
  private readonly storedCame = new WeakMap<IPublishPacket, number>();

  /** `maxHeld`: copies held at most (MAX_HELD; lower in tests). */
  constructor(private readonly maxHeld: number = MAX_HELD) {}

  /**
   * Holds `packet`, received on `client`'s current connection (`held`). Past the limit a QoS 1
   * copy is left with the broker, unacknowledged (`left`; see the class doc). `unheld`: it
   * cannot be held (a QoS 0 copy past the limit, or an mqtt.js without the packet writer held
   * PUBACKs need) and is to be handled as it comes. `callback` is mqtt.js's, called here unless
   * `unheld`. `receivedMono`: when it came (clock.elapsed()).
   */
  hold(
    client: MqttClient,
    packet: IPublishPacket,
    callback: DoneCallback,
    acks: OrderedAcks,
    receivedMono: number,
  ): 'held' | 'left' | 'unheld' {
    if (this.held.length >= this.maxHeld) {
      if (packet.qos === 0 || packet.messageId === undefined) return 'unheld';
      this.left = { client, connection: client.stream };
      this.leftConnection = client.stream;
      this.leave(packet, callback, receivedMono);
      return 'left';
    }
    let ack: MessageAck;
    if (packet.qos > 0) {
      if (packet.messageId === undefined || !acks.available) return 'unheld';
      ack = { kind: 'held', acks, ack: acks.hold(packet.messageId, packet.qos) };
      callback(PUBACK_HELD);
    } else {
      // QoS 0: no PUBACK, no redelivery; mqtt.js goes on with the next packet.
      callback();
      ack = { kind: 'callback', callback: () => undefined };
    }
    this.held.push({ client, connection: client.stream, packet, ack, receivedMono });
    return 'held';
  }

  /**
   * Whether a QoS 1 command copy on `client`'s current connection is to be left with the broker
   * behind the copies left on it (hold: `left`), whatever its identifier and whether the
   * verdict is known: the broker sends those again only on the next connection, so one handled
   * now would run before them. A command published after them to the same device, coming once
   * the verdict was known and before the drop (while the claims of the copies held commit),
   * overtook an older one left here (the valve took the two in the opposite order).
   */
  leavesBehind(client: MqttClient, packet: IPublishPacket): boolean {
    return (
      this.leftConnection !== null &&
      client.stream === this.leftConnection &&
      packet.qos > 0 &&
      packet.messageId !== undefined
    );
  }

  /**
   * Leaves `packet` with the broker, unacknowledged (`callback` with an error: mqtt.js sends no
   * PUBACK and goes on with the connection's next packet), remembering when it first came.
   */
  leave(packet: IPublishPacket, callback: DoneCallback, receivedMono: number): void {
    callback(
      new Error('not acknowledged: left with the broker, to be sent again on the next connection'),
    );
    this.remember(packet, receivedMono);
  }

  /**
   * Remembers when `packet`, withheld (not acknowledged: the journal refused its claim, the
   * connection is being dropped, the gateway is stopping, an internal error), first came, for
   * its redelivery (cameAt): a command timed by its receipt is timed from then, as a held or left
   * copy is. Timed afresh at each redelivery, one the gateway withheld while its journal could
   * not be written was written once it could, past its ttlMs from its first coming (I3).
   */
  withheld(packet: IPublishPacket, receivedMono: number): void {
    this.remember(packet, receivedMono);
  }

  /**
   * A QoS 2 PUBLISH as mqtt.js reads it off the connection, before it stores `packet` and answers
   * PUBREC (`now`: clock.elapsed()): the message came now, though it is handed over only at the
   * broker's PUBREL (cameAt), maybe on a later connection. Timed from that hand-over, a command
   * whose connection was lost between the PUBREC and the PUBREL was timed from the next
   * connection, and one whose ttlMs ran out meanwhile was written (I3). `stored`: the packet
   * mqtt.js holds under the same packet identifier, if any. A sender sends a QoS 2 message again
   * under its packet identifier until it has the PUBREC, and uses the identifier for no other
   * message until the PUBCOMP (MQTT 5 §4.3.3; 3.1.1 §4.3.3), while mqtt.js drops what it stored
   * when the session is not resumed: `packet` is then that message sent again (DUP, our PUBREC
   * lost with the connection), which mqtt.js stores in place of `stored`, and keeps its first
   * coming.
   */
  qos2Came(packet: IPublishPacket, stored: IPublishPacket | undefined, now: number): void {
    if (packet.qos !== 2 || packet.messageId === undefined) return;
    const first = stored === undefined ? undefined : this.storedCame.get(stored);
    this.storedCame.set(packet, first === undefined ? now : Math.min(first, now));
  }

  /** Remembers when `packet` first came, for its redelivery (cameAt). */
  private remember(packet: IPublishPacket, receivedMono: number): void {
    if (packet.qos === 0 || packet.messageId === undefined) return;
    if (packet.qos === 2) {
      if (!this.storedCame.has(packet)) this.storedCame.set(packet, receivedMono);
      return;
    }
    const id = leftId(packet);
    if (this.leftCame.has(id)) return;
    this.leftCame.set(id, receivedMono);
    for (const oldest of this.leftCame.keys()) {
      if (this.leftCame.size <= MAX_LEFT_REMEMBERED) break;
      this.leftCame.delete(oldest);
    }
  }

  /**
   * When `packet` came, for its timing (`now`: clock.elapsed()): when it first came if it is the
   * redelivery (DUP) of a copy left with the broker (hold: `left`), held until its connection
   * ended (release: `gone`; a broker stopped or restarted, a link cut) or withheld, else now. The gateway had
   * it then, and held or left it for its own reasons: a command timed by its receipt is timed from then,
   * as a held copy is (HeldCopy.receivedMono); timed from the redelivery, one whose ttlMs ran out
   * meanwhile was written (I3). The broker sends it again with its packet identifier (MQTT 5
   * §4.4), topic and payload. A QoS 2 message is timed from its PUBLISH (storedCame, qos2Came),
   * not from its hand-over by mqtt.js at the broker's PUBREL: until 2026-12-07 it was timed from
   * each hand-over, and one withheld while the journal could not be written was written once it
   * could, past its ttlMs from its first coming.
   */
  cameAt(packet: IPublishPacket, now: number): number {
    if (packet.qos === 2) {
      const stored = this.storedCame.get(packet);
      if (stored === undefined) return now;
      this.storedCame.delete(packet);
      return Math.min(stored, now);
    }
    if (!packet.dup || packet.qos === 0 || packet.messageId === undefined) return now;
    if (this.leftCame.size === 0) return now;
    const id = leftId(packet);
    const came = this.leftCame.get(id);
    if (came === undefined) return now;
    this.leftCame.delete(id);
    return Math.min(came, now);
  }

  /**
   * The connection copies were left on (hold: `left`), once its verdict is known (`pending`
   * false): to be dropped, so that the broker sends them again. Null while it is pending, or
   * when there is none or it ended (the broker sends them again anyway).
   */
  leftToResend(pending: (client: MqttClient) => boolean): LeftCopies | null {
    const left = this.left;
    if (left === null) return null;
    if (!isOpen(left.client, left.connection)) {
      this.left = null;
      return null;
    }
    if (pending(left.client)) return null;
    this.left = null;
    return left;
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
      if (!isOpen(copy.client, copy.connection)) {
        // Sent again by the broker on a later connection: timed from when it came here (cameAt).
        this.remember(copy.packet, copy.receivedMono);
        gone.push(copy);
      } else if (pending(copy.client)) kept.push(copy);
      else ready.push(copy);
    }
    this.held.splice(0, this.held.length, ...kept);
    return { ready, gone };
  }

  /** All of them, held no more (the intake stops taking commands). */
  takeAll(): readonly HeldCopy[] {
    this.left = null;
    this.leftConnection = null;
    return this.held.splice(0);
  }
}

/**
 * Whether `connection` is `client`'s connection and still open. mqtt.js says a client connected
 * until its own close handler has run, and MqttSession's runs before it (prepended, and it ends
 * the probe there): a copy held on a connection that is closing looked ready, was handled as if
 * its verdict were known, and was answered "not run" though the broker sends it again. The
 * stream is destroyed once it has closed.
 */
function isOpen(client: MqttClient, connection: unknown): boolean {
  return (
    client.stream === connection &&
    client.connected &&
    (connection as { readonly destroyed?: boolean } | null)?.destroyed !== true
  );
}

/** A copy left with the broker, as its redelivery shows it again: packet id, topic, payload. */
function leftId(packet: IPublishPacket): string {
  const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
  const digest = createHash('sha256').update(payload).digest('base64');
  return `${String(packet.messageId)}\u0000${packet.topic}\u0000${digest}`;
}
