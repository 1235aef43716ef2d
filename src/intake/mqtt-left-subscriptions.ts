import type { MqttClient } from 'mqtt';
import type { Logger } from '../core/logger.js';
import { filtersMatching, type GatewayTopics } from './mqtt-topics.js';

/** Foreign topics whose matching filters are unsubscribed, at most, per connection. */
const MAX_FOREIGN_TOPICS = 1_000;
/** The longest part of a topic or filter that is logged. */
const LOGGED_TOPIC_CHARS = 512;

/**
 * Subscriptions the gateway's persistent session holds that are not its own, removed as the
 * messages they deliver show them: MQTT offers no way to list a session's subscriptions. Those
 * of an earlier configuration of the gateway (unsubscribeFormer) and those another client left
 * under the gateway's client id (unsubscribeForeign). What was unsubscribed is remembered per
 * connection (connectionMade forgets it).
 */
export class LeftSubscriptions {
  /** Filters unsubscribed on the current connection (see unsubscribeFormer). */
  private readonly unsubscribed = new Set<string>();
  /** Topics whose matching filters were unsubscribed on the current connection (unsubscribeForeign). */
  private readonly foreignTopics = new Set<string>();
  /** An UNSUBSCRIBE of unsubscribeForeign awaits its UNSUBACK on the current connection. */
  private foreignPending = false;

  constructor(
    private readonly o: {
      readonly topics: GatewayTopics;
      readonly logger: Logger;
      /** The session's client while it runs (MqttSession.client). */
      readonly client: () => MqttClient | null;
    },
  ) {}

  /** A new connection (its CONNECT sent): nothing is unsubscribed on it yet. */
  connectionMade(): void {
    this.unsubscribed.clear();
    this.foreignTopics.clear();
    this.foreignPending = false;
  }

  /**
   * Unsubscribes a filter that the persistent session holds from an earlier configuration (the
   * command filter under a former topic root, or a former gateway id kept under a fixed
   * `mqtt.clientId`), so that the broker stops delivering, and queueing while the gateway is
   * away, commands the site no longer sends there. MQTT offers no way to
   * list a session's subscriptions: each is learned from the first message it delivers. Once per
   * connection and filter; never the current command filter.
   */
  unsubscribeFormer(filter: string): void {
    const client = this.o.client();
    if (client?.connected !== true || filter === this.o.topics.commandFilter) return;
    if (this.unsubscribed.has(filter)) return;
    this.unsubscribed.add(filter);
    client.unsubscribe(filter, (error) => {
      // mqtt.js calls back with null, not undefined, on success.
      if (error instanceof Error) {
        // The connection ended first: the next message on that filter unsubscribes again.
        return;
      }
      this.o.logger.warn(
        { filter, commandFilter: this.o.topics.commandFilter },
        'unsubscribed a command filter left in the persistent session by an earlier configuration (mqtt.topicRoot or gatewayId)',
      );
    });
  }

  /**
   * Unsubscribes every filter that could have delivered `topic`, a topic that is no command topic
   * of this gateway nor of an earlier configuration of it: the subscription that delivered it is
   * not the gateway's. Another client that connected with the gateway's client id and a
   * persistent session (a `mosquitto_sub -c -i sluice-gw-1 -t '#'` run to see what the gateway
   * gets) leaves its subscriptions in the session when it goes, and the broker keeps them for the
   * gateway: it was sent everything they match, each message a warning in its log, and while
   * the gateway was away the broker queued that traffic for it, past its limit (mosquitto
   * `max_queued_messages`, 1000 by default), dropping the commands published meanwhile, unsaid.
   * MQTT cannot list a session's subscriptions, and the filter is not known from the message: the
   * filters that match its topic are unsubscribed together (filtersMatching), never the command
   * filter; over MQTT 5 the UNSUBACK says which of them existed. Once per connection and topic,
   * for at most MAX_FOREIGN_TOPICS topics, and one at a time: the messages of a flood that arrive
   * before the UNSUBACK (on many topics, it may be) are not each worth an UNSUBSCRIBE.
   */
  unsubscribeForeign(topic: string): void {
    const client = this.o.client();
    if (client?.connected !== true || this.foreignPending) return;
    if (this.foreignTopics.has(topic) || this.foreignTopics.size >= MAX_FOREIGN_TOPICS) return;
    this.foreignTopics.add(topic);
    const filters = filtersMatching(topic).filter((f) => f !== this.o.topics.commandFilter);
    if (filters.length === 0) return;
    const shownTopic = topic.slice(0, LOGGED_TOPIC_CHARS);
    this.foreignPending = true;
    const stream = client.stream;
    client.unsubscribe(filters, (error, packet) => {
      if (client.stream === stream) this.foreignPending = false;
      // mqtt.js calls back with null, not undefined, on success. The connection ended first:
      // the next message on the topic unsubscribes again.
      if (error instanceof Error) return;
      const codes = (packet as { granted?: unknown } | undefined)?.granted;
      if (!Array.isArray(codes)) {
        this.o.logger.warn(
          { topic: shownTopic, filters: filters.length },
          'message on a topic no subscription of this gateway matches: unsubscribed every filter that matches it, to remove one another client with this client id left in the persistent session (MQTT 3.1.1 does not say which existed)',
        );
        return;
      }
      // MQTT 5 UNSUBACK: 0x00 removed, 0x11 no subscription existed (§3.11.3).
      const removed = filters.filter((_, i) => codes[i] === 0);
      if (removed.length === 0) {
        this.o.logger.debug(
          { topic: shownTopic },
          'no filter matching a foreign topic was left in the session',
        );
        return;
      }
      this.o.logger.warn(
        { topic: shownTopic, removed: removed.map((f) => f.slice(0, LOGGED_TOPIC_CHARS)) },
        'unsubscribed filters another client with this client id left in the persistent session: the broker sent the gateway what they match, and queued it for the gateway while it was away, past its queue limit (mosquitto max_queued_messages) at the cost of the commands published meanwhile',
      );
    });
  }
}
