import { createHash } from 'node:crypto';
import type { IPublishPacket } from 'mqtt';
import type { Logger } from '../core/logger.js';
import type { CommandMessage } from './mqtt-message.js';
import type { MqttPublisher } from './mqtt-publisher.js';
import type { ResponseRoute } from './mqtt-response-routes.js';

/** Retained commands remembered as refused, at most. */
const MAX_RETAINED_REFUSED = 1_000;

/**
 * Commands delivered from the broker's retained store (SPEC §5: never run), refused. Over MQTT
 * 3.1.1 the broker sends the retained messages of the command filter again at every SUBSCRIBE,
 * which the gateway makes at every connection (MQTT 3.1.1 §3.8.4: a subscription replaced sends
 * them again; MQTT 5's retain handling 2 does not): a retained command was refused, warned of and
 * answered INVALID_COMMAND at each reconnection, a flapping link making a flood of it on the
 * result topic (after the command's own result, when it ran as published live). It is said and
 * answered once per run, with how to clear it; its later replays (the same topic and payload)
 * are acknowledged at debug. Over MQTT 5 a retained command comes with the flag only as
 * published (retain as published), each publication answered.
 */
export class RetainedCommands {
  /** Retained commands refused over MQTT 3.1.1, by topic and payload digest, oldest first. */
  private readonly refused = new Set<string>();

  constructor(
    private readonly publisher: MqttPublisher,
    private readonly logger: Logger,
  ) {}

  /** Says and answers the refusal of a retained command (once a run over MQTT 3.1.1). */
  refuse(
    packet: IPublishPacket,
    message: Extract<CommandMessage, { kind: 'malformed' }>,
    device: string,
    route: ResponseRoute | undefined,
    receivedAt: number,
    protocolLevel: 4 | 5,
  ): void {
    const payload = Buffer.isBuffer(packet.payload) ? packet.payload : Buffer.from(packet.payload);
    const replayed = `${packet.topic}\u0000${createHash('sha256').update(payload).digest('hex')}`;
    if (protocolLevel === 4) {
      if (this.refused.has(replayed)) {
        this.logger.debug(
          { key: message.key, device },
          'retained command replayed again at this connection (refused and said before): acknowledged',
        );
        return;
      }
      this.refused.add(replayed);
      for (const oldest of this.refused) {
        if (this.refused.size <= MAX_RETAINED_REFUSED) break;
        this.refused.delete(oldest);
      }
    }
    const topic = packet.topic.slice(0, 512);
    const clear = `clear it with an empty retained message: mosquitto_pub -r -n -q 1 -t '${topic}'`;
    this.logger.warn(
      { key: message.key, device, topic, code: message.code },
      protocolLevel === 4
        ? `retained command refused (never run from the retained store): the broker replays it at every connection of the gateway (MQTT 3.1.1), said here once; ${clear}`
        : `retained command refused (never run from the retained store): the broker keeps it for every new subscriber; ${clear}`,
    );
    const errors = [...message.errors, `(message): ${clear}`];
    this.publisher.error({ key: message.key, device }, route, receivedAt, {
      code: message.code,
      detail: errors.join('; '),
      errors,
    });
  }
}
