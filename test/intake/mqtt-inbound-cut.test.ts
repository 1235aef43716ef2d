import mqttPacket, { type IPublishPacket, type Packet } from 'mqtt-packet';
import { describe, expect, it } from 'vitest';
import { InboundCuts, PublishCutter } from '../../src/intake/mqtt-inbound-cut.js';

/**
 * PublishCutter, between the socket and mqtt.js's parser over MQTT 3.1.1: a PUBLISH larger than
 * its limit reaches the parser with its headers and the start of its payload only; every other
 * packet, and every byte of it, unchanged; whatever the chunks the socket gives.
 */

const publish = (topic: string, payload: Buffer, qos: 0 | 1, messageId?: number): Buffer =>
  mqttPacket.generate({
    cmd: 'publish',
    topic,
    payload,
    qos,
    dup: false,
    retain: false,
    ...(messageId === undefined ? {} : { messageId }),
  });

async function through(
  bytes: Buffer,
  chunk: (i: number) => number,
  cuts: InboundCuts,
): Promise<Packet[]> {
  const cutter = new PublishCutter(1_000, 100, cuts);
  const parser = mqttPacket.parser({ protocolVersion: 4 });
  const packets: Packet[] = [];
  parser.on('packet', (p) => packets.push(p));
  parser.on('error', (e) => {
    throw e;
  });
  cutter.on('data', (b: Buffer) => parser.parse(b));
  for (let at = 0, i = 0; at < bytes.length; i++) {
    const n = Math.max(1, chunk(i));
    cutter.write(bytes.subarray(at, at + n));
    at += n;
  }
  await new Promise<void>((resolve) => cutter.end(resolve));
  return packets;
}

describe('PublishCutter', () => {
  const big = Buffer.alloc(5_000, 'x');
  big.write('{"key":"k-big"', 0);
  const stream = Buffer.concat([
    mqttPacket.generate({ cmd: 'pingresp' }),
    publish('sluice/gw/cmd/v1', Buffer.from('{"key":"a"}'), 1, 7),
    publish('sluice/gw/cmd/v2', big, 1, 8),
    publish('sluice/gw/cmd/v3', Buffer.alloc(999 - 18, 'y'), 0),
    publish('sluice/gw/cmd/v4', big, 0),
    mqttPacket.generate({ cmd: 'suback', messageId: 3, granted: [1] }),
    publish('sluice/gw/cmd/v5', Buffer.from('{"key":"b"}'), 1, 9),
  ]);

  for (const [name, chunk] of [
    ['whole', () => stream.length],
    ['a byte at a time', () => 1],
    ['uneven chunks', (i: number) => [3, 1, 17, 250, 2, 4_000, 7][i % 7] ?? 1],
  ] as const) {
    it(`cuts what is over its limit, passes the rest unchanged (${name})`, async () => {
      const cuts = new InboundCuts();
      const packets = await through(stream, chunk, cuts);
      expect(packets.map((p) => p.cmd)).toEqual([
        'pingresp',
        'publish',
        'publish',
        'publish',
        'publish',
        'suback',
        'publish',
      ]);
      const published = packets.filter((p): p is IPublishPacket => p.cmd === 'publish');
      expect(published.map((p) => [p.topic, p.qos, p.messageId, p.payload.length])).toEqual([
        ['sluice/gw/cmd/v1', 1, 7, 11],
        ['sluice/gw/cmd/v2', 1, 8, 100],
        ['sluice/gw/cmd/v3', 0, undefined, 981],
        ['sluice/gw/cmd/v4', 0, undefined, 100],
        ['sluice/gw/cmd/v5', 1, 9, 11],
      ]);
      expect(published[1]?.payload.toString().startsWith('{"key":"k-big"')).toBe(true);
      expect(cuts.take('sluice/gw/cmd/v2', 8)).toBe(5_000);
      expect(cuts.take('sluice/gw/cmd/v2', 8)).toBeUndefined();
      expect(cuts.take('sluice/gw/cmd/v4', undefined)).toBe(5_000);
      expect(cuts.take('sluice/gw/cmd/v3', undefined)).toBeUndefined();
    });
  }
});
