import type { IPublishPacket } from 'mqtt';
import type { Logger } from '../core/logger.js';
import { parseCommandMessage } from './mqtt-message.js';
import type { MqttPublisher } from './mqtt-publisher.js';
import type { StrayAnswerReason } from './mqtt-stray-copies.js';

export interface StrayAnswersOptions {
  readonly publisher: Pick<MqttPublisher, 'responseRoute' | 'error'>;
  readonly logger: Logger;
  /** Whether the journal holds a command under `key` (of the intake's identity). */
  readonly journaled: (key: string) => boolean;
  /** `mqtt.acceptUntimedCommands` (SPEC §5), for reading the copy's key as any command's. */
  readonly acceptUntimed: boolean;
  /** How long the journal keeps a settled key, s (CommandMessageInput.keysKeptS). */
  readonly keysKeptS?: number | undefined;
}

/**
 * The answer to a command copy another subscription of the session delivered, once StrayCopies
 * (mqtt-stray-copies.ts) finds that the command subscription's copy of it did not come (or the
 * broker was found to deliver no Subscription Identifiers): INVALID_COMMAND, not run, on the
 * result topic and its Response Topic, so that its issuer publishes it again; nothing when its
 * key names a command the journal holds (that command's outcome is published as usual).
 */
export class StrayAnswers {
  constructor(private readonly options: StrayAnswersOptions) {}

  /** Answers the stray copy `packet` (its `payload`, for `device`, received at `receivedAt`). */
  answer(
    packet: IPublishPacket,
    payload: Buffer,
    device: string,
    receivedAt: number,
    why: StrayAnswerReason,
  ): void {
    const message = parseCommandMessage({
      device,
      payload,
      userProperties: packet.properties?.userProperties,
      retained: packet.retain,
      messageExpiryS: packet.properties?.messageExpiryInterval,
      acceptUntimed: this.options.acceptUntimed,
      keysKeptS: this.options.keysKeptS,
    });
    const key = message.key;
    let journaled: boolean;
    try {
      journaled = key !== null && this.options.journaled(key);
    } catch (error) {
      // Answered from a timer (the copy's wait, the probe's verdict), outside any handler: a
      // journal read that fails here ended the daemon. Whether the key names a command cannot
      // be told, and "not run" could be false: nothing is answered.
      this.options.logger.warn(
        { err: error, key, device },
        'command copy from another subscription than the command filter: whether its key is journaled cannot be read; not answered',
      );
      return;
    }
    if (journaled) {
      // Its key names a command the journal holds (its sibling came on another connection, or
      // a retry): that command's outcome is published as usual.
      this.options.logger.info(
        { key, device },
        'command copy from another subscription than the command filter: its key is journaled, nothing more to answer',
      );
      return;
    }
    const route = this.options.publisher.responseRoute(packet, { key, device });
    const detail =
      why === 'no_sibling'
        ? `(subscription): delivered through a subscription of the gateway's session other than its command subscription (one another client with this client id left there), whose options may have cleared a retained command's flag: not run, nothing was written; the command subscription did not deliver it. Publish it again (not retained)`
        : `(subscription): delivered without the command subscription's Subscription Identifier before the gateway found that the broker delivers none: not run, nothing was written. Publish it again (not retained)`;
    this.options.logger.warn(
      { key, device, code: 'INVALID_COMMAND', topic: packet.topic.slice(0, 512) },
      why === 'no_sibling'
        ? 'command delivered only through another subscription than the command filter (whether it was retained cannot be told): not run, answered'
        : "command delivered without the command subscription's identifier before the broker was found to deliver none: not run, answered",
    );
    this.options.publisher.error({ key, device }, route, receivedAt, {
      code: 'INVALID_COMMAND',
      detail,
      errors: [detail],
    });
  }
}
