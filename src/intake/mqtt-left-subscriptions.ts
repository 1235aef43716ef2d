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
 * connection (connectionMade forgets it), and filters beside the command filter that deliver
 * its commands a second time (unsubscribeOverlapping) or at QoS 2 (unsubscribeQos2).
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
    this.unsubscribeMatching(topic, {
      unsaid:
        'message on a topic no subscription of this gateway matches: unsubscribed every filter that matches it, to remove one another client with this client id left in the persistent session (MQTT 3.1.1 does not say which existed)',
      removed:
        'unsubscribed filters another client with this client id left in the persistent session: the broker sent the gateway what they match, and queued it for the gateway while it was away, past its queue limit (mosquitto max_queued_messages) at the cost of the commands published meanwhile',
      none: null,
    });
  }

  /**
   * Unsubscribes every filter but the command filter that matches `topic`, a command topic of
   * this gateway whose message the command subscription did not deliver: an MQTT 5 message
   * without the command subscription's Subscription Identifier came through another filter of
   * the session. Another client with the gateway's client id (`mosquitto_sub -c -i sluice-gw-1
   * -t 'sluice/gw-1/cmd/#'`, or `sluice/+/cmd/+`, run to watch the commands) left one that
   * overlaps the command filter, and an MQTT 5 broker may send one copy of a message per
   * matching subscription (MQTT 5 §3.3.4; Mosquitto 2.0 does, whatever its deprecated
   * `allow_duplicate_messages`): every command came twice, the copy a duplicate claimed, logged
   * and counted again, never written again (I1). unsubscribeForeign never saw such a filter: it
   * delivers only the gateway's own command topics (or other gateways', which it caught).
   * The copy itself is never run (mqtt-stray-copies.ts): the command filter's copy is the one
   * handled. Once per connection and topic, as unsubscribeForeign.
   */
  unsubscribeOverlapping(topic: string): void {
    this.unsubscribeMatching(topic, {
      // Only MQTT 5 has Subscription Identifiers, and its UNSUBACK says which filters existed.
      unsaid: null,
      removed:
        'unsubscribed filters another client with this client id left in the persistent session beside the command filter: the broker sent the gateway each command once for every filter that matched it (the copies never run)',
      // A shared subscription is named by a group no message carries, so no filter can be
      // derived for it; a message queued before the command subscription had its identifier
      // (the first connection after an upgrade) lacks it too.
      none: "a command came through another subscription than the command filter, and no filter matching its topic was left in the session: a shared subscription ($share/{group}/…) another client left with this client id, which the gateway cannot name, or a message queued before the command subscription had its identifier. Its copies are never run (the command filter's copy is); remove a shared one while the gateway is stopped: mosquitto_sub -i {clientId} -c -V mqttv5 -x {sessionExpiryS} -q 1 -t '{prefix}/cmd/+' -U '$share/{group}/{filter}' -E (docs/mqtt-api.md)",
    });
  }

  /**
   * Unsubscribes every filter but the command filter that matches `topic`, a command topic of
   * this gateway whose message came at QoS 2: the command subscription is QoS 1, and a
   * subscription delivers at most at its own QoS, so a filter another client with the gateway's
   * client id left in the session at QoS 2 (`mosquitto_sub -c -i sluice-gw-1 -q 2 -t
   * 'sluice/gw-1/cmd/inlet-valve-1'`) delivered it. Over MQTT 3.1.1 that is the one sign of such
   * a filter: Mosquitto sends one copy of a message, at the QoS of the filter it matched first,
   * and no Subscription Identifier tells the filters apart; a broker that merges a client's
   * overlapping subscriptions sends one copy at their highest QoS, over MQTT 5 too. The copy is
   * handled as the command's (no other comes), but its PUBREC went out before its claim was
   * durable (docs/mqtt-api.md "QoS 2"): once the filter is gone, later commands come at QoS 1.
   * Once per connection and topic, as unsubscribeForeign.
   */
  unsubscribeQos2(topic: string): void {
    this.unsubscribeMatching(topic, {
      unsaid:
        "command delivered at QoS 2, above the command subscription's QoS 1: unsubscribed every filter but the command filter that matches its topic, to remove one another client with this client id left in the persistent session at QoS 2 (MQTT 3.1.1 does not say which existed)",
      removed:
        "unsubscribed filters another client with this client id left in the persistent session at QoS 2 beside the command filter: a command came through one at QoS 2, above the command subscription's QoS 1",
      none: null,
    });
  }

  /**
   * Unsubscribes every filter but the command filter that matches `topic`, a state topic of this
   * gateway whose message came at QoS 1 or 2: the gateway reads its state topics through a QoS 0
   * subscription only (RetainedStateSweep), and a subscription delivers at most at its own QoS,
   * so a filter another client with the gateway's client id left in the session (`mosquitto_sub
   * -c -i sluice-gw-1 -t 'sluice/gw-1/state/#'`, run to watch the states) delivered it.
   * unsubscribeForeign never saw such a filter: it delivers only the gateway's own state topics,
   * which the intake takes for its reading of them. The broker sent the gateway back each state
   * it published, at that QoS, to be acknowledged, and counted those waiting for their turn
   * with the commands queued for the gateway (mosquitto `max_queued_messages`, past which it
   * drops the commands). One at QoS 0 cannot be told from the gateway's own reading, and is
   * left. Once per connection and topic, as unsubscribeForeign.
   */
  unsubscribeStateCopies(topic: string): void {
    this.unsubscribeMatching(topic, {
      unsaid:
        'state of this gateway delivered back to it at QoS 1 or 2, above the QoS 0 of its own reading of the state topics: unsubscribed every filter but the command filter that matches its topic, to remove one another client with this client id left in the persistent session (MQTT 3.1.1 does not say which existed)',
      removed:
        'unsubscribed filters another client with this client id left in the persistent session on the state topics: the broker sent the gateway back each state it published, queued with the commands for the gateway',
      none: null,
    });
  }

  /**
   * The UNSUBSCRIBE of unsubscribeForeign, unsubscribeOverlapping, unsubscribeQos2 and
   * unsubscribeStateCopies: the filters that match
   * `topic` (filtersMatching), never the command filter; `said.removed` logs what the MQTT 5
   * UNSUBACK says existed, `said.none` that none did, `said.unsaid` (when not null) that MQTT
   * 3.1.1 cannot say.
   */
  private unsubscribeMatching(
    topic: string,
    said: {
      readonly unsaid: string | null;
      readonly removed: string;
      /** Said at info when the UNSUBACK shows that none existed; null: at debug. */
      readonly none: string | null;
    },
  ): void {
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
        if (said.unsaid !== null) {
          this.o.logger.warn({ topic: shownTopic, filters: filters.length }, said.unsaid);
        }
        return;
      }
      // MQTT 5 UNSUBACK: 0x00 removed, 0x11 no subscription existed (§3.11.3).
      const removed = filters.filter((_, i) => codes[i] === 0);
      if (removed.length === 0) {
        if (said.none === null) {
          this.o.logger.debug(
            { topic: shownTopic },
            'no filter matching the topic was left in the session',
          );
        } else {
          this.o.logger.info({ topic: shownTopic }, said.none);
        }
        return;
      }
      this.o.logger.warn(
        { topic: shownTopic, removed: removed.map((f) => f.slice(0, LOGGED_TOPIC_CHARS)) },
        said.removed,
      );
    });
  }
}
