import { createConnection, createServer, type Server, type Socket } from 'node:net';

/**
 * TCP between an MQTT 5 client and Mosquitto that enforces the Receive Maximum the broker
 * announced in its CONNACK (Mosquitto: `max_inflight_messages`), as MQTT 5 §3.3.4 lets a
 * broker do and brokers such as HiveMQ do: a client that has more QoS 1 PUBLISHes
 * unacknowledged than that is sent DISCONNECT 0x93 (Receive Maximum exceeded) and its connection
 * is closed. Mosquitto announces the limit and does not enforce it on what it receives, which
 * is why this double exists. `limit` is the one the broker was configured to announce; every
 * other byte passes unchanged.
 */
export class ReceiveMaximumProxy {
  /** Connections ended for a PUBLISH past the limit. */
  exceeded = 0;
  /** The most QoS 1 PUBLISHes the client had unacknowledged at once, on any connection. */
  mostInFlight = 0;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async open(brokerPort: number, limit: number): Promise<ReceiveMaximumProxy> {
    const holder: { proxy: ReceiveMaximumProxy | null } = { proxy: null };
    const server = createServer((inbound) => {
      const proxy = holder.proxy;
      if (proxy === null) {
        inbound.destroy();
        return;
      }
      const outbound = createConnection({ host: '127.0.0.1', port: brokerPort });
      proxy.sockets.add(inbound);
      proxy.sockets.add(outbound);
      const close = (): void => {
        inbound.destroy();
        outbound.destroy();
        proxy.sockets.delete(inbound);
        proxy.sockets.delete(outbound);
      };
      inbound.on('error', close).on('close', close);
      outbound.on('error', close).on('close', close);
      /** Packet ids of the client's QoS 1 and 2 PUBLISHes not yet acknowledged by the broker. */
      const inFlight = new Set<number>();
      let fromClient = Buffer.alloc(0);
      let ended = false;
      inbound.on('data', (chunk: Buffer) => {
        fromClient = Buffer.concat([fromClient, chunk]);
        for (;;) {
          if (ended) return;
          const packet = nextPacket(fromClient);
          if (packet === null) return;
          fromClient = fromClient.subarray(packet.bytes.length);
          const id = publishId(packet);
          if (id !== null) {
            inFlight.add(id);
            proxy.mostInFlight = Math.max(proxy.mostInFlight, inFlight.size);
            if (inFlight.size > limit) {
              // DISCONNECT, reason 0x93 Receive Maximum exceeded, no properties.
              ended = true;
              proxy.exceeded++;
              inbound.end(Buffer.from([0xe0, 0x02, 0x93, 0x00]), close);
              outbound.destroy();
              return;
            }
          }
          outbound.write(packet.bytes);
        }
      });
      let fromBroker = Buffer.alloc(0);
      outbound.on('data', (chunk: Buffer) => {
        fromBroker = Buffer.concat([fromBroker, chunk]);
        for (;;) {
          const packet = nextPacket(fromBroker);
          if (packet === null) return;
          fromBroker = fromBroker.subarray(packet.bytes.length);
          // PUBACK (QoS 1) or PUBCOMP (QoS 2) ends a PUBLISH's flight (MQTT 5 §4.9).
          if ((packet.type === 4 || packet.type === 7) && packet.body.length >= 2) {
            inFlight.delete(packet.body.readUInt16BE(0));
          }
          if (!ended) inbound.write(packet.bytes);
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    const proxy = new ReceiveMaximumProxy(server, port);
    holder.proxy = proxy;
    return proxy;
  }

  get url(): string {
    return `mqtt://127.0.0.1:${this.port}`;
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

export interface Packet {
  readonly type: number;
  readonly flags: number;
  /** The whole packet. */
  readonly bytes: Buffer;
  /** What follows the fixed header. */
  readonly body: Buffer;
}

/** The first whole MQTT packet in `buffer` (fixed header, remaining length), or null. */
export function nextPacket(buffer: Buffer): Packet | null {
  if (buffer.length < 2) return null;
  let length = 0;
  let multiplier = 1;
  let offset = 1;
  for (;;) {
    if (offset >= buffer.length) return null;
    const byte = buffer[offset]!;
    length += (byte & 0x7f) * multiplier;
    multiplier *= 128;
    offset++;
    if ((byte & 0x80) === 0) break;
    if (offset > 4) throw new Error('malformed remaining length');
  }
  const end = offset + length;
  if (buffer.length < end) return null;
  const first = buffer[0]!;
  return {
    type: first >> 4,
    flags: first & 0x0f,
    bytes: buffer.subarray(0, end),
    body: buffer.subarray(offset, end),
  };
}

/** The packet id of a QoS 1 or 2 PUBLISH (after its topic), null for anything else. */
function publishId(packet: Packet): number | null {
  if (packet.type !== 3 || ((packet.flags >> 1) & 0x03) === 0) return null;
  const topicLength = packet.body.readUInt16BE(0);
  return packet.body.readUInt16BE(2 + topicLength);
}
