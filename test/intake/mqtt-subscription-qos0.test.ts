import { createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import mqttPacket, { type Packet } from 'mqtt-packet';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MqttIntake } from '../../src/intake/mqtt.js';
import { intakeConfig, until } from '../helpers/mosquitto.js';
import { recordingLogger } from '../helpers/recording-logger.js';
import { startStack, type Stack } from '../helpers/stack.js';

/**
 * A broker that grants the gateway's command subscription at QoS 0 only, as a broker capping QoS
 * does (EMQX `mqtt.max_qos_allowed`, HiveMQ `maximum-qos` for 3.1.1 clients). The commands are
 * then delivered at most once: the broker keeps none for the gateway while it is away (their
 * issuers had the broker's PUBACK), redelivers none the journal could not take, and the
 * gateway's PUBACK — which says a command is journaled (I5) — is never asked for. The gateway
 * said `online` and was ready all the same. It must not: SPEC §5 has the commands at QoS 1.
 *
 * The broker here is a double, a few lines of MQTT 3.1.1 over a real socket (mqtt-packet, the
 * codec of mqtt.js): Mosquitto 2 grants what is asked or refuses the connection (`max_qos 0`
 * refuses the gateway's QoS 1 Will), and aedes, the demo's broker, lowers the QoS an authorizer
 * sets but still grants the requested one in its SUBACK. Ground truth: the packets the broker
 * received from the gateway.
 */

interface FakeBroker {
  readonly url: string;
  /** Every packet received from clients, in order. */
  readonly received: Packet[];
  /** Client connections that have ended. */
  closed(): number;
  close(): Promise<void>;
}

async function qosCappingBroker(): Promise<FakeBroker> {
  const received: Packet[] = [];
  const sockets = new Set<Socket>();
  let closed = 0;
  const server: Server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => {
      sockets.delete(socket);
      closed += 1;
    });
    socket.on('error', () => undefined);
    const parser = mqttPacket.parser({ protocolVersion: 4 });
    const send = (packet: Packet): void => {
      socket.write(mqttPacket.generate(packet, { protocolVersion: 4 }));
    };
    parser.on('packet', (packet: Packet) => {
      received.push(packet);
      const messageId = packet.messageId ?? 0;
      switch (packet.cmd) {
        case 'connect':
          send({ cmd: 'connack', returnCode: 0, sessionPresent: false });
          return;
        case 'subscribe':
          // Every filter granted at QoS 0, whatever was asked.
          send({
            cmd: 'suback',
            messageId,
            granted: packet.subscriptions.map(() => 0),
          });
          return;
        case 'unsubscribe':
          send({ cmd: 'unsuback', messageId, granted: [] });
          return;
        case 'publish':
          if (packet.qos === 1) send({ cmd: 'puback', messageId });
          return;
        case 'pingreq':
          send({ cmd: 'pingresp' });
          return;
        default:
          return;
      }
    });
    socket.on('data', (chunk: Buffer) => {
      parser.parse(chunk);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `mqtt://127.0.0.1:${port}`,
    received,
    closed: () => closed,
    close: async () => {
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => {
        server.close(() => {
          resolve();
        });
      });
    },
  };
}

describe('MQTT intake: a broker that grants the command subscription at QoS 0', () => {
  let stack: Stack;
  let broker: FakeBroker;

  beforeAll(async () => {
    stack = await startStack({ opcua: false });
    broker = await qosCappingBroker();
  }, 60_000);

  afterAll(async () => {
    await broker.close();
    await stack.stop();
  });

  it('publishes no `online`, is not ready, and says why', async () => {
    const { logger, lines } = recordingLogger();
    const intake = new MqttIntake({
      config: intakeConfig(broker.url, { protocolVersion: 4, clientId: 'sluice-qos0' }),
      gatewayId: 'qos0',
      pipeline: stack.pipeline,
      identities: stack.identities,
      metrics: stack.metrics,
      logger,
      // One connection within the test: the next is a minute away.
      reconnect: { minMs: 60_000, maxMs: 60_000 },
    });
    try {
      intake.start();
      const statuses = (): string[] =>
        broker.received.flatMap((p) =>
          p.cmd === 'publish' && p.topic === 'sluice/qos0/status' ? [p.payload.toString()] : [],
        );
      // Either the gateway says `online` on that connection, or it ends it.
      await until(
        () => statuses().includes('online') || broker.closed() > 0 || undefined,
        10_000,
        '`online` or the end of the connection',
      );
      const said = lines.find((l) => String(l.msg).includes('command subscription'));
      expect(statuses()).not.toContain('online');
      expect(said?.msg).toBe(
        'the broker granted the command subscription at QoS 0 only (commands at most once); reconnecting to try again',
      );
      expect(intake.connected()).toBe(false);
      expect(intake.health().lastError).toContain('at QoS 0, not 1');
    } finally {
      await intake.stop();
    }
  }, 30_000);
});
