import { randomUUID } from 'node:crypto';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { describe, expect, it } from 'vitest';
import { mosquittoAvailable, TestClient, timed, until, useMqttSite } from '../helpers/mqtt-site.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A broker path that announces Subscription Identifiers in its CONNACK and delivers none: a
 * broker that misbehaves, or a bridge or proxy on the way that drops the property. The gateway
 * tells a command copy another subscription of its session delivered by the missing identifier
 * (mqtt-stray-copies.ts) and never runs it: on such a path every MQTT 5 command was refused, each
 * after the stray copy's wait. Mosquitto cannot be made to drop identifiers, so the gateway
 * reaches the real Mosquitto through StrippingProxy below, a TCP proxy that removes property
 * 0x0B (Subscription Identifier) from every PUBLISH the broker sends: the one double here, for
 * the fault. Everything else is real: Mosquitto, the intake, the journal, the simulated plant
 * (ground truth: its write count, the journal).
 */

const available = mosquittoAvailable();

describe.skipIf(!available)(
  'MQTT intake: a broker path that drops Subscription Identifiers',
  () => {
    const site = useMqttSite({}, { opcua: false });

    it('MQTT 5: found by the probe, said, and commands run once', async () => {
      const gateway = 'gwnoids';
      const prefix = `sluice/${gateway}`;
      const topic = `${prefix}/cmd/v1`;
      const proxy = await StrippingProxy.open(site.broker.port);
      site.cleanups.push(() => proxy.close());
      const { logger, lines } = recordingLogger();
      const intake = site.intake({
        gatewayId: gateway,
        config: { protocolVersion: 5, url: `mqtt://127.0.0.1:${proxy.port}` },
        logger,
        reconnect: { minMs: 100, maxMs: 200 },
        // Short, so that the code before the probe answers within the test's wait.
        strayCopyWaitMs: 300,
        identifierProbe: { graceMs: 200 },
      });
      site.cleanups.push(() => intake.stop());
      const plant = await TestClient.connect(site.broker.url);
      site.cleanups.push(() => plant.end());
      const observer = await TestClient.connect(site.broker.url);
      site.cleanups.push(() => observer.end());
      await observer.subscribe(`${prefix}/result/#`);
      const writes = (): number => site.stack.plant.device('v1').counters.writesReceived;
      const device = (): string => site.stack.plant.device('v1').published.state;
      const before = writes();

      await site.connect(intake);
      // The proxy stripped the identifier off PUBLISH packets, the probe's copy of `online` too.
      await until(() => (proxy.stripped > 0 ? true : undefined), 5_000, 'an identifier stripped');
      await until(
        () => (intake.health().subscriptionIdentifiers === 'missing' ? true : undefined),
        5_000,
        'identifiers found missing',
      );
      expect(intake.protocol().summary).toContain('delivers none');
      expect(
        lines.filter((l) =>
          String(l.msg).startsWith('the MQTT broker announced Subscription Identifiers but'),
        ),
      ).toHaveLength(1);

      const key = randomUUID();
      const action = device() === 'CLOSED' ? 'open' : 'close';
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }));
      const result = await observer.waitFor((m) => m.json().key === key, 10_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      expect(site.stack.pipeline.get({ scope: 'plant', key })?.state).toBe('confirmed');
      expect(writes()).toBe(before + 1);

      // A command queued while the gateway is away arrives on the next connection before that
      // connection's probe answers: the verdict found before holds until then, and it runs once.
      proxy.down();
      await until(() => (intake.connected() ? undefined : true), 5_000, 'disconnected');
      const queued = randomUUID();
      const next = action === 'open' ? 'close' : 'open';
      await plant.publish(topic, timed({ action: next, key: queued, ttlMs: 60_000 }));
      proxy.up();
      const second = await observer.waitFor((m) => m.json().key === queued, 10_000, 'result');
      expect(second.json()).toMatchObject({ state: 'confirmed' });
      expect(writes()).toBe(before + 2);
      const keys: string[] = [key, queued];
      const answers = observer.messages.filter((m) => keys.includes(String(m.json().key)));
      for (const a of answers) expect(a.json()).toMatchObject({ state: 'confirmed' });
      await intake.stop();
    }, 30_000);

    /**
     * The first connection of a run on such a path: the commands queued for the gateway come
     * before the probe can answer. They were taken for copies another filter delivered,
     * acknowledged, and answered INVALID_COMMAND once the probe found identifiers missing (not
     * run: acknowledged already, I5). Now each waits, unacknowledged, for the verdict, and then
     * runs as on a broker without identifiers.
     */
    it('MQTT 5: commands queued for the first connection of a run wait for the probe and run once', async () => {
      const gateway = 'gwnoidsq';
      const prefix = `sluice/${gateway}`;
      const topic = `${prefix}/cmd/v1`;
      const proxy = await StrippingProxy.open(site.broker.port);
      site.cleanups.push(() => proxy.close());
      const { logger, lines } = recordingLogger();
      const newIntake = (): ReturnType<typeof site.intake> =>
        site.intake({
          gatewayId: gateway,
          config: { protocolVersion: 5, url: `mqtt://127.0.0.1:${proxy.port}` },
          logger,
          reconnect: { minMs: 100, maxMs: 200 },
          strayCopyWaitMs: 300,
          identifierProbe: { graceMs: 200 },
        });
      // A run that made the session (its command subscription), then stopped.
      let intake = newIntake();
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      await intake.stop();
      const plant = await TestClient.connect(site.broker.url);
      site.cleanups.push(() => plant.end());
      const observer = await TestClient.connect(site.broker.url);
      site.cleanups.push(() => observer.end());
      await observer.subscribe(`${prefix}/result/#`);
      const writes = (): number => site.stack.plant.device('v1').counters.writesReceived;
      const before = writes();
      const key = randomUUID();
      const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }));

      // The next run: its probe knows nothing yet, and the queued command comes first.
      intake = newIntake();
      intake.start();
      const result = await observer.waitFor((m) => m.json().key === key, 10_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      expect(intake.health().subscriptionIdentifiers).toBe('missing');
      expect(site.stack.pipeline.get({ scope: 'plant', key })?.state).toBe('confirmed');
      expect(writes()).toBe(before + 1);
      // It came before the verdict (held, not taken for another filter's copy).
      expect(lines.some((l) => String(l.msg).startsWith('command copy without the command'))).toBe(
        true,
      );
      const answers = observer.messages.filter((m) => m.json().key === key);
      for (const a of answers) expect(a.json()).toMatchObject({ state: 'confirmed' });
      await intake.stop();
    }, 30_000);

    /**
     * An earlier connection found identifiers missing; the path delivers them again (the proxy no
     * longer strips them) when a command is published retained while the gateway's session holds
     * a filter another client left beside the command filter, without retain-as-published: its
     * copy comes unflagged (MQTT 5 §3.3.1.3) and without the command subscription's identifier,
     * before the new connection's probe answers. The last verdict (missing) had it taken as the
     * command subscription's and run as a fresh command. Now it waits for this connection's
     * verdict (delivered), and is then known for another filter's copy: never run. The proxy holds
     * back the probe's read-back of the status (a slow path) so that the command comes first.
     */
    it('MQTT 5: after a verdict of missing, a copy through a left filter waits for the new verdict', async () => {
      const gateway = 'gwnoidsret';
      const prefix = `sluice/${gateway}`;
      const clientId = `sluice-${gateway}`;
      const topic = `${prefix}/cmd/v1`;
      const proxy = await StrippingProxy.open(site.broker.port);
      site.cleanups.push(() => proxy.close());
      const { logger } = recordingLogger();
      const intake = site.intake({
        gatewayId: gateway,
        config: { protocolVersion: 5, url: `mqtt://127.0.0.1:${proxy.port}` },
        logger,
        reconnect: { minMs: 100, maxMs: 200 },
        identifierProbe: { graceMs: 200 },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      await until(
        () => (intake.health().subscriptionIdentifiers === 'missing' ? true : undefined),
        5_000,
        'identifiers found missing',
      );
      // The gateway away (its attempts refused by the proxy), another client leaves a filter.
      proxy.down();
      await until(() => (intake.connected() ? undefined : true), 5_000, 'disconnected');
      await site.leaveSubscriptions(clientId, [`${prefix}/cmd/#`], { expirySeconds: 600 });
      expect(site.broker.log()).toContain(`${clientId} 1 ${prefix}/cmd/#`);
      proxy.strip = false;
      proxy.holdTopic = { topic: `${prefix}/status`, ms: 2_000 };
      proxy.up();
      await until(() => intake.connected() || undefined, 10_000, 'connected again');

      const plant = await TestClient.connect(site.broker.url);
      site.cleanups.push(() => plant.end());
      const observer = await TestClient.connect(site.broker.url);
      site.cleanups.push(() => observer.end());
      await observer.subscribe(`${prefix}/result/#`);
      const writes = (): number => site.stack.plant.device('v1').counters.writesReceived;
      const before = writes();
      const action = site.stack.plant.device('v1').published.state === 'CLOSED' ? 'open' : 'close';
      const key = randomUUID();
      await plant.publish(topic, timed({ action, key, ttlMs: 60_000 }), { retain: true });
      site.cleanups.push(() => plant.publish(topic, '', { retain: true }));
      await until(
        () => (site.broker.deliveriesTo(clientId, topic).length >= 2 ? true : undefined),
        5_000,
        'two copies sent',
      );
      expect(intake.health().subscriptionIdentifiers).toBe('missing');
      await until(
        () => (intake.health().subscriptionIdentifiers === 'delivered' ? true : undefined),
        10_000,
        'identifiers found delivered',
      );
      // The command filter's copy (retained) refused; the other never journaled nor written.
      const answer = await observer.waitFor((m) => m.json().key === key, 5_000, 'answer');
      expect(answer.json()).toMatchObject({ code: 'INVALID_COMMAND' });
      expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
      // A later command runs once: the only write.
      const later = randomUUID();
      await plant.publish(topic, timed({ action, key: later, ttlMs: 60_000 }));
      const result = await observer.waitFor((m) => m.json().key === later, 10_000, 'result');
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      expect(site.stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
      expect(writes()).toBe(before + 1);
      await intake.stop();
    }, 30_000);

    it('MQTT 5: on a path that keeps them, the probe says they are delivered', async () => {
      const gateway = 'gwids';
      const { logger } = recordingLogger();
      const intake = site.intake({
        gatewayId: gateway,
        config: { protocolVersion: 5 },
        logger,
        identifierProbe: { graceMs: 200 },
      });
      site.cleanups.push(() => intake.stop());
      await site.connect(intake);
      await until(
        () => (intake.health().subscriptionIdentifiers === 'delivered' ? true : undefined),
        5_000,
        'identifiers found delivered',
      );
      expect(intake.protocol().summary).toBe('MQTT 5');
      // The probe's subscription is gone: the broker's log shows its unsubscription.
      await until(
        () =>
          site.broker.log().includes(`Received UNSUBSCRIBE from sluice-${gateway}`)
            ? true
            : undefined,
        5_000,
        'probe unsubscribed',
      );
      await intake.stop();
    }, 30_000);
  },
);

/**
 * TCP between the gateway and Mosquitto that removes the Subscription Identifier property (0x0B)
 * from every MQTT 5 PUBLISH the broker sends (see the file's doc); the rest passes unchanged.
 * `down()` resets its connections and refuses new ones until `up()`. `strip` false passes the
 * property; `holdTopic` delays the broker's PUBLISHes on one topic (a slow path for them).
 */
class StrippingProxy {
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
