import { Transform, type Duplex, type TransformCallback } from 'node:stream';
import type { MqttClient } from 'mqtt';

/** PUBLISH packets cut remembered for the intake, at most (InboundCuts). */
const MAX_CUTS = 100;

/**
 * The payload sizes of the PUBLISH packets PublishCutter cut, for the intake's answer ("(body):
 * N bytes; …"): by topic and packet identifier, taken once.
 */
export class InboundCuts {
  private readonly sizes = new Map<string, number>();

  record(topic: Buffer, messageId: number | undefined, payloadBytes: number): void {
    const id = cutId(topic.toString('utf8'), messageId);
    this.sizes.delete(id);
    this.sizes.set(id, payloadBytes);
    for (const oldest of this.sizes.keys()) {
      if (this.sizes.size <= MAX_CUTS) break;
      this.sizes.delete(oldest);
    }
  }

  /** The payload size a cut packet had, once; undefined for a packet not cut. */
  take(topic: string, messageId: number | undefined): number | undefined {
    const id = cutId(topic, messageId);
    const size = this.sizes.get(id);
    this.sizes.delete(id);
    return size;
  }
}

function cutId(topic: string, messageId: number | undefined): string {
  return `${topic}\u0000${messageId ?? ''}`;
}

/**
 * Cuts MQTT 3.1.1 PUBLISH packets larger than `limit` bytes (remaining length) on their way from
 * the socket to mqtt.js's parser, which holds a packet whole before it hands it over: MQTT 3.1.1
 * has no Maximum Packet Size a client can tell the broker (MQTT 5 §3.1.2.11 has), so a broker
 * delivers a message of any size up to the protocol's 256 MB, and the gateway held every byte
 * of it (twice: the parser's list and the payload sliced from it) before refusing it — on an
 * edge gateway's memory. The packet is passed on with its fixed and variable headers (topic,
 * packet identifier: acknowledged as any other) and the first `keep` bytes of its payload, its
 * length rewritten; the rest is read off the socket and dropped as it comes. Its real payload
 * size goes to `cuts`. Every other packet, and every byte of it, passes unchanged.
 */
export class PublishCutter extends Transform {
  /** Bytes of the fixed header read so far (type and flags, remaining length). */
  private fixed: number[] = [];
  /** What the bytes that come now are. */
  private state:
    | { readonly kind: 'header' }
    | { kind: 'pass'; left: number }
    | { kind: 'variable'; readonly flags: number; readonly remaining: number; bytes: Buffer[] }
    | {
        kind: 'keep';
        readonly flags: number;
        readonly head: Buffer;
        readonly payload: number;
        kept: Buffer[];
        left: number;
      }
    | { kind: 'drop'; left: number }
    | { readonly kind: 'raw' } = { kind: 'header' };

  constructor(
    private readonly limit: number,
    private readonly keep: number,
    private readonly cuts: InboundCuts,
  ) {
    super();
  }

  override _transform(chunk: Buffer, _encoding: BufferEncoding, done: TransformCallback): void {
    let at = 0;
    while (at < chunk.length) {
      const state = this.state;
      switch (state.kind) {
        case 'raw':
          this.push(chunk.subarray(at));
          at = chunk.length;
          break;
        case 'header': {
          const byte = chunk[at] ?? 0;
          at += 1;
          this.fixed.push(byte);
          if (this.fixed.length === 1) break;
          if (byte & 0x80) {
            // A fifth length byte is malformed (MQTT 3.1.1 §2.2.3): mqtt-packet says so.
            if (this.fixed.length === 5) this.toRaw();
            break;
          }
          const remaining = this.fixed
            .slice(1)
            .reduce((sum, b, i) => sum + (b & 0x7f) * 128 ** i, 0);
          const first = this.fixed[0] ?? 0;
          const header = Buffer.from(this.fixed);
          this.fixed = [];
          if (first >> 4 !== 3 || remaining <= this.limit) {
            this.push(header);
            if (remaining > 0) this.state = { kind: 'pass', left: remaining };
          } else {
            this.state = { kind: 'variable', flags: first, remaining, bytes: [] };
          }
          break;
        }
        case 'pass': {
          const n = Math.min(state.left, chunk.length - at);
          this.push(chunk.subarray(at, at + n));
          at += n;
          state.left -= n;
          if (state.left === 0) this.state = { kind: 'header' };
          break;
        }
        case 'variable': {
          // Topic (two length bytes, then the name) and, at QoS 1 and 2, the packet identifier.
          const had = Buffer.concat(state.bytes);
          const withId = ((state.flags >> 1) & 0x3) > 0 ? 2 : 0;
          const need = had.length < 2 ? 2 : 2 + had.readUInt16BE(0) + withId;
          const n = Math.min(need - had.length, chunk.length - at);
          state.bytes = [had, chunk.subarray(at, at + n)];
          at += n;
          const head = Buffer.concat(state.bytes);
          if (head.length < 2 || head.length < 2 + head.readUInt16BE(0) + withId) break;
          const payload = state.remaining - head.length;
          if (payload < 0) {
            // A topic longer than the packet: malformed, mqtt-packet's to refuse.
            this.push(Buffer.from([state.flags, ...lengthBytes(state.remaining)]));
            this.push(head);
            this.state = { kind: 'raw' };
            break;
          }
          this.state = {
            kind: 'keep',
            flags: state.flags,
            head,
            payload,
            kept: [],
            left: Math.min(payload, this.keep),
          };
          if (this.state.left === 0) this.emitCut();
          break;
        }
        case 'keep': {
          const n = Math.min(state.left, chunk.length - at);
          state.kept.push(Buffer.from(chunk.subarray(at, at + n)));
          at += n;
          state.left -= n;
          if (state.left === 0) this.emitCut();
          break;
        }
        case 'drop': {
          const n = Math.min(state.left, chunk.length - at);
          at += n;
          state.left -= n;
          if (state.left === 0) this.state = { kind: 'header' };
          break;
        }
      }
    }
    done();
  }

  /** The cut packet: its headers and kept payload, its length rewritten; the rest dropped. */
  private emitCut(): void {
    const state = this.state;
    if (state.kind !== 'keep') return;
    const kept = Buffer.concat(state.kept);
    const head = state.head;
    const topicLength = head.readUInt16BE(0);
    const topic = head.subarray(2, 2 + topicLength);
    const messageId =
      head.length > 2 + topicLength ? head.readUInt16BE(2 + topicLength) : undefined;
    this.cuts.record(topic, messageId, state.payload);
    this.push(Buffer.from([state.flags, ...lengthBytes(head.length + kept.length)]));
    this.push(head);
    this.push(kept);
    const left = state.payload - kept.length;
    this.state = left > 0 ? { kind: 'drop', left } : { kind: 'header' };
  }

  private toRaw(): void {
    this.push(Buffer.from(this.fixed));
    this.fixed = [];
    this.state = { kind: 'raw' };
  }
}

/** MQTT's Variable Byte Integer (3.1.1 §2.2.3). */
function lengthBytes(value: number): number[] {
  const bytes: number[] = [];
  let rest = value;
  do {
    let byte = rest % 128;
    rest = Math.floor(rest / 128);
    if (rest > 0) byte |= 0x80;
    bytes.push(byte);
  } while (rest > 0);
  return bytes;
}

/**
 * Has the inbound bytes of every connection `client` makes pass through a PublishCutter when
 * `cutting()` says so (over MQTT 3.1.1: MQTT 5 tells the broker its Maximum Packet Size). mqtt.js
 * builds each connection's stream with its `streamBuilder` and pipes it into its parser once;
 * that pipe is made to go through the cutter, and the stream stays the socket for everything
 * else (writes, TCP_NODELAY, close and error events).
 */
export function cutOversizedPublishes(
  client: MqttClient,
  cutting: () => boolean,
  make: () => PublishCutter,
): void {
  // mqtt.js (5.16) keeps streamBuilder private; it is called once per connection, in connect().
  const internals = client as unknown as { streamBuilder: (c: MqttClient) => Duplex };
  const build = internals.streamBuilder;
  internals.streamBuilder = (c) => {
    const stream = build(c);
    if (!cutting()) return stream;
    const pipe = stream.pipe.bind(stream);
    stream.pipe = <T extends NodeJS.WritableStream>(
      destination: T,
      options?: { end?: boolean },
    ): T => {
      const cutter = make();
      pipe(cutter);
      return cutter.pipe(destination, options);
    };
    return stream;
  };
}
