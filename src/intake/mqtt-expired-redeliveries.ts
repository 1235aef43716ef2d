import type { IPublishPacket } from 'mqtt';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { CommandMessage } from './mqtt-message.js';
import type { MqttPublisher } from './mqtt-publisher.js';

/** Keys of commands timed by their Message Expiry Interval remembered, at most. */
const MAX_EXPIRY_TIMED = 10_000;

/**
 * A command timed by its MQTT 5 Message Expiry Interval alone (no issuedAt), as first delivered:
 * how much of its interval was left, and when it was received (monotonic).
 */
interface ExpiryTimed {
  readonly expiryS: number;
  readonly receivedAt: number;
}

/**
 * Redeliveries whose MQTT 5 Message Expiry Interval ran out before they could be taken. A command
 * timed by its interval alone, first delivered when it could not be claimed (the journal
 * unavailable: withheld, the connection dropped), is redelivered (DUP) on the next connection
 * with what is left of its interval; Mosquitto sends one whose interval has run out within the
 * current second without the property (measured on 2.0.11: none left is "no expiry" on the
 * wire) and drops it after that. It came untimed, and was refused as a command sent with
 * neither issuedAt nor message expiry — which its issuer had not done. Such a redelivery of a
 * command seen with an interval in this run, and not in the journal, is refused as what it is:
 * stale, its interval run out, nothing written; whether the site accepts untimed commands or
 * not (the issuer bounded its wait). One the journal holds is a retry, answered as one. Every
 * command timed by its interval is remembered here, in memory: a restart forgets them.
 */
export class ExpiredRedeliveries {
  /** Commands delivered with a Message Expiry Interval and no issuedAt, by key, oldest first. */
  private readonly timed = new Map<string, ExpiryTimed>();

  constructor(
    private readonly o: {
      readonly publisher: MqttPublisher;
      readonly logger: Logger;
      readonly clock: Clock;
      /** Whether the journal holds a command of the intake's identity with this key. */
      readonly journaled: (key: string) => boolean;
    },
  ) {}

  /** Whether `message` is such a redelivery: then it was said and answered, nothing written. */
  refused(
    packet: IPublishPacket,
    message: CommandMessage,
    device: string,
    receivedAt: number,
  ): boolean {
    const untimed =
      message.kind === 'command'
        ? message.request.issuedAt === null
          ? message
          : undefined
        : message.untimed;
    if (untimed === undefined) return false;
    const expiryS = packet.properties?.messageExpiryInterval;
    if (expiryS !== undefined) {
      this.timed.delete(untimed.key);
      this.timed.set(untimed.key, { expiryS, receivedAt: this.o.clock.elapsed() });
      for (const oldest of this.timed.keys()) {
        if (this.timed.size <= MAX_EXPIRY_TIMED) break;
        this.timed.delete(oldest);
      }
      return false;
    }
    const first = this.timed.get(untimed.key);
    if (!packet.dup || first === undefined) return false;
    if (this.o.journaled(untimed.key)) return false;
    const agoS = Math.round((this.o.clock.elapsed() - first.receivedAt) / 1000);
    const detail = `Message Expiry Interval: ran out before the command could be taken. It was delivered with ${first.expiryS} s left ${agoS} s ago and not taken then (left with the broker: see the log then), and the broker redelivered it at the end of its interval, without one: it is stale; nothing was written`;
    const route = this.o.publisher.responseRoute(packet, { key: untimed.key, device });
    this.o.logger.warn(
      { key: untimed.key, device, code: 'INVALID_COMMAND', detail },
      'command redelivered after its message expiry ran out: refused and answered, nothing written',
    );
    this.o.publisher.error({ key: untimed.key, device }, route, receivedAt, {
      code: 'INVALID_COMMAND',
      detail,
      errors: [detail],
    });
    return true;
  }
}
