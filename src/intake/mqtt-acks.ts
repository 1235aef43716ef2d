import type { IPublishPacket, MqttClient } from 'mqtt';

/**
 * The PUBACKs of one MQTT client, sent by the intake itself when their messages' claims are on
 * disk, so that the connection's packet pump does not wait for the journal meanwhile.
 *
 * mqtt.js hands a connection's packets to `handleMessage` one at a time: it sends a message's
 * PUBACK when the callback is called and only then takes the next packet. A callback that waits
 * for the claim's barrier (I5: no PUBACK before the claim is durable) thus held every later
 * message of the connection — however many the broker had sent — until that fsync returned:
 * one message claimed per barrier, never several sharing one (group commit), and on a
 * gateway's flash, where a flush takes milliseconds, a burst of commands over MQTT (a plant
 * system closing a line's valves) was claimed at one per flush. Now the callback is called at
 * once with an error, which makes mqtt.js send no PUBACK and go on with the next packet, and
 * the PUBACK is sent from here once the claim is durable.
 *
 * A QoS 2 message (a copy through a filter another client left in the session at QoS 2: the
 * command subscription is QoS 1) is acknowledged in two steps: mqtt.js answers its PUBLISH with
 * PUBREC at once and keeps it in its incoming store, and hands it to `handleMessage` only at the
 * broker's PUBREL, whose callback sends PUBCOMP and releases the stored message. Its
 * acknowledgement held here is that PUBCOMP, sent as mqtt.js's PUBREL handler sends it. A PUBACK
 * for it is a protocol error: Mosquitto closed the connection, sent the PUBREL again on the next,
 * and was answered PUBACK again, for as long as the gateway ran (until 2026-12-07).
 *
 * A receiver sends its PUBACKs in the order of the PUBLISH packets (MQTT 5 §4.6,
 * [MQTT-4.6.0-2]; MQTT 3.1.1 §4.6): a PUBACK whose message is ready waits for those held
 * before it on the same connection, and a PUBCOMP likewise. A held acknowledgement of a
 * connection that is gone is never sent: the broker redelivers its message on the next
 * connection (MQTT 5 §4.4; a QoS 2 one's PUBREL, and mqtt.js hands the stored message again),
 * where it would name a packet id the broker may have given to another message.
 */

/** A held PUBACK (QoS 1) or PUBCOMP (QoS 2): `waiting` until its message's barrier returned. */
export interface HeldAck {
  readonly connection: unknown;
  readonly messageId: number;
  readonly qos: 1 | 2;
  state: 'waiting' | 'send' | 'skip';
}

/** The error that tells mqtt.js to send no PUBACK (nor PUBCOMP) and move on (see the class doc). */
export const PUBACK_HELD = new Error('PUBACK held until the claim is durable');

/** mqtt.js's own packet writer, the one its PUBACKs go through (MqttClient#_sendPacket). */
type PacketWriter = (
  packet:
    | { cmd: 'puback'; messageId: number; reasonCode: number }
    | { cmd: 'pubcomp'; messageId: number },
) => void;

function packetWriter(client: MqttClient): PacketWriter | null {
  const send = (client as unknown as { _sendPacket?: unknown })._sendPacket;
  if (typeof send !== 'function') return null;
  return (packet) => {
    (send as (this: MqttClient, p: typeof packet) => void).call(client, packet);
  };
}

/**
 * What mqtt.js's PUBREL handler does once `handleMessage`'s callback returns, before its PUBCOMP
 * (handlers/pubrel.js): the QoS 2 message is deleted from its incoming store, and its packet id
 * from those it counts against the gateway's Receive Maximum
 * (MqttClient#_releaseIncomingQoS2Publish). Kept, they piled up, and once the ids filled the
 * Receive Maximum mqtt.js ended the connection at the next QoS 2 message.
 */
type Qos2Release = (messageId: number) => void;

function qos2Release(client: MqttClient): Qos2Release | null {
  const internals = client as unknown as {
    incomingStore?: { del?: unknown };
    _releaseIncomingQoS2Publish?: unknown;
  };
  const release = internals._releaseIncomingQoS2Publish;
  if (typeof internals.incomingStore?.del !== 'function' || typeof release !== 'function') {
    return null;
  }
  return (messageId) => {
    // Read at each call: mqtt.js makes a new store when a client ended is connected again.
    const store = client.incomingStore as unknown as {
      del(packet: { messageId: number }, cb: () => void): void;
    };
    store.del({ messageId }, () => undefined);
    (release as (this: MqttClient, id: number) => void).call(client, messageId);
  };
}

export class OrderedAcks {
  private readonly held: HeldAck[] = [];
  private readonly write: PacketWriter | null;
  private readonly releaseQos2: Qos2Release | null;

  constructor(readonly client: MqttClient) {
    this.write = packetWriter(client);
    this.releaseQos2 = qos2Release(client);
  }

  /**
   * False when this mqtt.js has no packet writer to send a PUBACK with, or no way to release a
   * QoS 2 message as its PUBREL handler does (another version than the one this was written
   * for): the caller then acknowledges through mqtt.js's callback, one barrier at a time as
   * before, rather than not at all.
   */
  get available(): boolean {
    return this.write !== null && this.releaseQos2 !== null;
  }

  /**
   * Holds the acknowledgement of the message `messageId` at `qos` (1 or 2), received on the
   * client's current connection, behind those held before it; `release` sends it (or drops it)
   * once its barrier has returned.
   */
  hold(messageId: number, qos: IPublishPacket['qos']): HeldAck {
    const ack: HeldAck = {
      connection: this.client.stream,
      messageId,
      qos: qos === 2 ? 2 : 1,
      state: 'waiting',
    };
    this.held.push(ack);
    return ack;
  }

  /**
   * Whether a PUBACK sent now on the current connection would overtake one held: a message
   * acknowledged at once (it wrote nothing the journal must keep) then queues behind them.
   */
  get holding(): boolean {
    this.drop();
    return this.held.length > 0;
  }

  /** The held PUBACK is to be sent (`send`) or not (`skip`); sends what is ready, in order. */
  release(ack: HeldAck, send: boolean): void {
    ack.state = send ? 'send' : 'skip';
    this.drop();
    while (this.held.length > 0 && this.held[0]?.state !== 'waiting') {
      const next = this.held.shift();
      if (next?.state !== 'send' || !this.client.connected || this.write === null) continue;
      if (next.qos === 1) {
        this.write({ cmd: 'puback', messageId: next.messageId, reasonCode: 0 });
      } else if (this.releaseQos2 !== null) {
        this.releaseQos2(next.messageId);
        this.write({ cmd: 'pubcomp', messageId: next.messageId });
      }
    }
  }

  /** Forgets the PUBACKs held for connections that are gone (never sent: see the class doc). */
  private drop(): void {
    const current = this.client.stream;
    while (this.held.length > 0 && this.held[0]?.connection !== current) this.held.shift();
  }
}

/** How long a drop waits for the PUBACKs written before it to leave (afterWritten), ms. */
const WRITTEN_WITHIN_MS = 2_000;

/**
 * Calls `then` once what was written on `stream` (a connection's) so far has been handed to the
 * socket, or after WRITTEN_WITHIN_MS, or at once when it cannot tell. mqtt.js writes each packet
 * into a corked stream and uncorks it on the next tick (mqtt-packet's writeToStream): a PUBACK
 * released at a barrier and the connection destroyed in the same turn (promise callbacks run
 * before the tick) never left, and the broker sent its message again on the next connection.
 * An empty write's callback comes after those of the writes queued before it.
 */
export function afterWritten(stream: unknown, then: () => void): void {
  let called = false;
  const once = (): void => {
    if (called) return;
    called = true;
    clearTimeout(bound);
    then();
  };
  const writable = stream as {
    write?: unknown;
    destroyed?: unknown;
    writableEnded?: unknown;
  } | null;
  const bound = setTimeout(once, WRITTEN_WITHIN_MS);
  bound.unref();
  if (
    writable === null ||
    typeof writable.write !== 'function' ||
    writable.destroyed === true ||
    writable.writableEnded === true
  ) {
    once();
    return;
  }
  (writable.write as (chunk: Buffer, callback: () => void) => boolean).call(
    writable,
    Buffer.alloc(0),
    once,
  );
}
