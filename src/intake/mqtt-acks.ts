import type { MqttClient } from 'mqtt';

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
 * A receiver sends its PUBACKs in the order of the PUBLISH packets (MQTT 5 §4.6,
 * [MQTT-4.6.0-2]; MQTT 3.1.1 §4.6): a PUBACK whose message is ready waits for those held
 * before it on the same connection. A held PUBACK of a connection that is gone is never sent:
 * the broker redelivers its message on the next connection (MQTT 5 §4.4), where a PUBACK
 * would name a packet id the broker may have given to another message.
 */

/** A held PUBACK: `waiting` until its message's barrier has returned. */
export interface HeldAck {
  readonly connection: unknown;
  readonly messageId: number;
  state: 'waiting' | 'send' | 'skip';
}

/** The error that tells mqtt.js to send no PUBACK and move on (see the class doc). */
export const PUBACK_HELD = new Error('PUBACK held until the claim is durable');

/** mqtt.js's own packet writer, the one its PUBACKs go through (MqttClient#_sendPacket). */
type PacketWriter = (packet: { cmd: 'puback'; messageId: number; reasonCode: number }) => void;

function packetWriter(client: MqttClient): PacketWriter | null {
  const send = (client as unknown as { _sendPacket?: unknown })._sendPacket;
  if (typeof send !== 'function') return null;
  return (packet) => {
    (send as (this: MqttClient, p: typeof packet) => void).call(client, packet);
  };
}

export class OrderedAcks {
  private readonly held: HeldAck[] = [];
  private readonly write: PacketWriter | null;

  constructor(readonly client: MqttClient) {
    this.write = packetWriter(client);
  }

  /**
   * False when this mqtt.js has no packet writer to send a PUBACK with (another version than
   * the one this was written for): the caller then acknowledges through mqtt.js's callback,
   * one barrier at a time as before, rather than not at all.
   */
  get available(): boolean {
    return this.write !== null;
  }

  /**
   * Holds the PUBACK of `messageId`, received on the client's current connection, behind
   * those held before it; `release` sends it (or drops it) once its barrier has returned.
   */
  hold(messageId: number): HeldAck {
    const ack: HeldAck = { connection: this.client.stream, messageId, state: 'waiting' };
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
      if (next?.state === 'send' && this.client.connected && this.write !== null) {
        this.write({ cmd: 'puback', messageId: next.messageId, reasonCode: 0 });
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
