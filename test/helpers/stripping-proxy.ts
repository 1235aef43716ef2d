import { createConnection, createServer, type Server, type Socket } from 'node:net';

/**
 * TCP between the gateway and Mosquitto that removes the Subscription Identifier property (0x0B)
 * from every MQTT 5 PUBLISH the broker sends: a broker path that announces Subscription
 * Identifiers and delivers none (a bridge or proxy that drops them), which Mosquitto cannot be
 * made to be. The rest passes unchanged.
 * `down()` resets its connections and refuses new ones until `up()`. `strip` false passes the
 * property; `holdTopic` delays the broker's PUBLISHes on one topic (a slow path for them).
 */
export class StrippingProxy {
  stripped = 0;
  strip = true;
  holdTopic: { readonly topic: string; readonly ms: number } | null = null;
  private isUp = true;
  private readonly sockets = new Set<Socket>();

  private constructor(
    private readonly server: Server,
    readonly port: number,
  ) {}

  static async open(brokerPort: number): Promise<StrippingProxy> {
    const holder: { proxy: StrippingProxy | null } = { proxy: null };
    const server = createServer((inbound) => {
      const proxy = holder.proxy;
      if (proxy === null || !proxy.isUp) {
        inbound.resetAndDestroy();
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
      inbound.pipe(outbound);
      let pending = Buffer.alloc(0);
      outbound.on('data', (chunk: Buffer) => {
        pending = Buffer.concat([pending, chunk]);
        for (;;) {
          const packet = nextPacket(pending);
          if (packet === null) break;
          pending = pending.subarray(packet.length);
          const out = proxy.strip ? stripIdentifiers(packet) : Buffer.from(packet);
          if (out !== packet && proxy.strip) proxy.stripped++;
          const hold = proxy.holdTopic;
          if (hold !== null && publishTopic(out) === hold.topic) {
            setTimeout(() => inbound.write(out), hold.ms);
          } else {
            inbound.write(out);
          }
        }
      });
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const address = server.address();
    const port = typeof address === 'object' && address !== null ? address.port : 0;
    const proxy = new StrippingProxy(server, port);
    holder.proxy = proxy;
    return proxy;
  }

  down(): void {
    this.isUp = false;
    for (const socket of this.sockets) socket.resetAndDestroy();
    this.sockets.clear();
  }

  up(): void {
    this.isUp = true;
  }

  async close(): Promise<void> {
    this.down();
    await new Promise<void>((resolve) =>
      this.server.close(() => {
        resolve();
      }),
    );
  }
}

/** A variable byte integer at `at`: its value and its length in bytes, or null if incomplete. */
function varint(buffer: Buffer, at: number): { value: number; bytes: number } | null {
  let value = 0;
  for (let i = 0; i < 4; i++) {
    const byte = buffer[at + i];
    if (byte === undefined) return null;
    value += (byte & 0x7f) * 128 ** i;
    if ((byte & 0x80) === 0) return { value, bytes: i + 1 };
  }
  throw new Error('malformed variable byte integer');
}

function encodeVarint(value: number): Buffer {
  const bytes: number[] = [];
  do {
    let byte = value % 128;
    value = Math.floor(value / 128);
    if (value > 0) byte |= 0x80;
    bytes.push(byte);
  } while (value > 0);
  return Buffer.from(bytes);
}

/** The first whole MQTT packet of `buffer`, or null. */
function nextPacket(buffer: Buffer): Buffer | null {
  if (buffer.length < 2) return null;
  const length = varint(buffer, 1);
  if (length === null) return null;
  const total = 1 + length.bytes + length.value;
  return buffer.length < total ? null : buffer.subarray(0, total);
}

/** The topic of a PUBLISH; null for any other packet. */
function publishTopic(packet: Buffer): string | null {
  if ((packet[0] ?? 0) >> 4 !== 3) return null;
  const remaining = varint(packet, 1);
  if (remaining === null) return null;
  const at = 1 + remaining.bytes;
  return packet.subarray(at + 2, at + 2 + packet.readUInt16BE(at)).toString('utf8');
}

/** The PUBLISH without its Subscription Identifier properties; any other packet as it is. */
function stripIdentifiers(packet: Buffer): Buffer {
  const first = packet[0] ?? 0;
  if (first >> 4 !== 3) return packet;
  const qos = (first >> 1) & 3;
  const remaining = varint(packet, 1);
  if (remaining === null) return packet;
  let at = 1 + remaining.bytes;
  at += 2 + packet.readUInt16BE(at);
  if (qos > 0) at += 2;
  const propsLength = varint(packet, at);
  if (propsLength === null) return packet;
  const propsStart = at + propsLength.bytes;
  const propsEnd = propsStart + propsLength.value;
  const kept: Buffer[] = [];
  let p = propsStart;
  let removed = false;
  while (p < propsEnd) {
    const id = packet[p] ?? 0;
    let end: number;
    switch (id) {
      case 0x01: // Payload Format Indicator
        end = p + 2;
        break;
      case 0x02: // Message Expiry Interval
        end = p + 5;
        break;
      case 0x23: // Topic Alias
        end = p + 3;
        break;
      case 0x03: // Content Type
      case 0x08: // Response Topic
      case 0x09: // Correlation Data
        end = p + 3 + packet.readUInt16BE(p + 1);
        break;
      case 0x26: {
        // User Property: two strings
        const keyEnd = p + 3 + packet.readUInt16BE(p + 1);
        end = keyEnd + 2 + packet.readUInt16BE(keyEnd);
        break;
      }
      case 0x0b: {
        const value = varint(packet, p + 1);
        if (value === null) throw new Error('malformed Subscription Identifier');
        end = p + 1 + value.bytes;
        removed = true;
        p = end;
        continue;
      }
      default:
        throw new Error(`PUBLISH property 0x${id.toString(16)} not known to the proxy`);
    }
    kept.push(packet.subarray(p, end));
    p = end;
  }
  if (!removed) return packet;
  const props = Buffer.concat(kept);
  const body = Buffer.concat([
    packet.subarray(1 + remaining.bytes, at),
    encodeVarint(props.length),
    props,
    packet.subarray(propsEnd),
  ]);
  return Buffer.concat([Buffer.from([first]), encodeVarint(body.length), body]);
}
