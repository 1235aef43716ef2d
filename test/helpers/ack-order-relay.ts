import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { nextPacket, type Packet } from './receive-maximum-proxy.js';

/** A PUBLISH the broker sent at QoS 1 or 2, and the client's acknowledgement of it, if any. */
export interface RelayedPublish {
  readonly topic: string;
  readonly qos: 1 | 2;
  readonly messageId: number;
  /**
   * The place of the client's PUBACK (QoS 1) or PUBREC (QoS 2) among the acknowledgements of
   * that kind it sent on the connection (0 first); null until it sends one.
   */
  acked: number | null;
}

/** MQTT control packet types (MQTT 3.1.1 §2.2.1). */
const PUBLISH = 3;
const PUBACK = 4;
const PUBREC = 5;

/**
 * TCP between an MQTT client (the gateway) and Mosquitto that passes every byte unchanged and
 * records, for each connection, the QoS 1 and 2 PUBLISHes the broker sent the client in the order
 * they reached it, and the order in which the client acknowledged them (PUBACK, PUBREC), as they
 * left it for the broker: the ground truth of [MQTT-4.6.0-2] and [MQTT-4.6.0-3] (a client sends
 * its PUBACKs, and its PUBRECs, in the order the PUBLISHes came).
 */
export class AckOrderRelay {
  /** Per connection, oldest first: the broker's QoS 1 and 2 PUBLISHes, in the order sent. */
  readonly connections: RelayedPublish[][] = [];
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async open(brokerPort: number): Promise<AckOrderRelay> {
    const holder: { relay: AckOrderRelay | null } = { relay: null };
    const server = createServer((inbound) => {
      const relay = holder.relay;
      if (relay === null) {
        inbound.destroy();
        return;
      }
      const outbound = createConnection({ host: '127.0.0.1', port: brokerPort });
      relay.sockets.add(inbound);
      relay.sockets.add(outbound);
      const close = (): void => {
        inbound.destroy();
        outbound.destroy();
        relay.sockets.delete(inbound);
        relay.sockets.delete(outbound);
      };
      inbound.on('error', close).on('close', close);
      outbound.on('error', close).on('close', close);
      const published: RelayedPublish[] = [];
      relay.connections.push(published);
      const sent = { pubacks: 0, pubrecs: 0 };
      relayPackets(outbound, inbound, (packet) => {
        if (packet.type !== PUBLISH) return;
        const qos = (packet.flags >> 1) & 0x03;
        if (qos !== 1 && qos !== 2) return;
        const topicLength = packet.body.readUInt16BE(0);
        published.push({
          topic: packet.body.subarray(2, 2 + topicLength).toString('utf8'),
          qos,
          messageId: packet.body.readUInt16BE(2 + topicLength),
          acked: null,
        });
      });
      relayPackets(inbound, outbound, (packet) => {
        if (packet.type !== PUBACK && packet.type !== PUBREC) return;
        const id = packet.body.readUInt16BE(0);
        const qos = packet.type === PUBACK ? 1 : 2;
        const place = qos === 1 ? sent.pubacks++ : sent.pubrecs++;
        const of = published.find((p) => p.qos === qos && p.messageId === id && p.acked === null);
        if (of !== undefined) of.acked = place;
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    const relay = new AckOrderRelay(server, port);
    holder.relay = relay;
    return relay;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
  }

  /** The last connection's PUBLISHes (see `connections`); empty before the first. */
  get current(): readonly RelayedPublish[] {
    return this.connections.at(-1) ?? [];
  }

  async close(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    this.sockets.clear();
    await new Promise<void>((resolve) => {
      this.server.close(() => {
        resolve();
      });
    });
  }
}

/** Writes what `from` sends to `to`, calling `seen` with each whole packet first. */
function relayPackets(from: Socket, to: Socket, seen: (packet: Packet) => void): void {
  let pending = Buffer.alloc(0);
  from.on('data', (chunk: Buffer) => {
    to.write(chunk);
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      const packet = nextPacket(pending);
      if (packet === null) return;
      pending = pending.subarray(packet.bytes.length);
      seen(packet);
    }
  });
}
