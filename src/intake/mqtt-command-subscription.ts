import type { MqttClient } from 'mqtt';
import type { Logger } from '../core/logger.js';
import type { GatewayTopics } from './mqtt-topics.js';

/** What the command subscription needs of the session (mqtt-session.ts). */
export interface CommandSubscriptionHost {
  readonly topics: GatewayTopics;
  readonly logger: Logger;
  /** The protocol level of the current connection: 5, or 4 (MQTT 3.1.1). */
  level(): 4 | 5;
  /** Whether `client` is still the session's current client, and the session not ended. */
  current(client: MqttClient): boolean;
  /** Why the intake is not connected (/readyz): a refused subscription. */
  failed(reason: string): void;
  /** Drops the connection so that the next one subscribes again. */
  dropConnection(client: MqttClient, reason: string): void;
  /**
   * Publishes the retained status on the current connection: through the intake's publisher
   * (MqttPublisher.status), within the broker's Receive Maximum with the results.
   */
  publishStatus(status: 'online' | 'offline'): void;
  /** How long a SUBSCRIBE waits for its SUBACK before the connection is dropped, ms. */
  readonly subackTimeoutMs?: number | undefined;
}

/**
 * How long the command subscription waits for the broker's SUBACK by default. A broker whose
 * authorizer never answers (a plugin waiting on a backend that hangs) leaves the SUBSCRIBE
 * unanswered while it answers PINGREQs: the connection stays up and the gateway deaf.
 */
export const SUBACK_TIMEOUT_MS = 10_000;

/**
 * The command subscription of each connection (MQTT 5: retain handling 2, retain as published,
 * with the command subscription's Subscription Identifier), and the gateway's retained status
 * that follows it: `online` once the broker granted the subscription at QoS 1, `offline` once
 * the gateway takes no more commands. Ready (`subscribed`) from the SUBACK to the connection's
 * end. Split out of mqtt-session.ts, which keeps the connection's lifecycle.
 */
export class CommandSubscription {
  /** The command subscription is granted on the current connection. */
  subscribed = false;
  /** The status last published on a connection (`online` / `offline`), for SessionCloses. */
  lastStatus: string | null = null;
  /**
   * False once the intake stopped taking commands (a graceful stop has begun): the status says
   * `offline` from then on, at a reconnection too.
   */
  private takingCommands = true;
  /** The SUBSCRIBE waiting for its SUBACK, and its timer; null: none waits. */
  private waiting: { readonly client: MqttClient; readonly timer: NodeJS.Timeout } | null = null;

  constructor(private readonly host: CommandSubscriptionHost) {}

  /**
   * The gateway takes no more commands (a graceful stop has begun; the connection stays up for
   * the results of the commands still settling): the retained status says `offline` now, not at
   * the end of the stop. A plant system that sends its commands to a gateway that says `online`
   * (a failover to another gateway on `offline`) sent them, for as long as the commands in flight
   * took to settle (up to the shutdown bound), to one that left them with the broker until its
   * next start — run then if still fresh, or rejected STALE_COMMAND.
   */
  stopTakingCommands(client: MqttClient | null): void {
    if (!this.takingCommands) return;
    this.takingCommands = false;
    if (client?.connected === true && this.subscribed) this.publishStatus();
  }

  /**
   * The retained `online`: once the command subscription is granted — the gateway hears its
   * commands. At the CONNACK it said so of a gateway whose broker then refused the
   * subscription, and again at every reconnection of its retry loop, the Will's `offline`
   * between. `offline` instead once the gateway takes no more commands (stopTakingCommands).
   */
  private publishStatus(): void {
    const status = this.takingCommands ? 'online' : 'offline';
    this.lastStatus = status;
    this.host.publishStatus(status);
  }

  subscribe(client: MqttClient, id: number | undefined): void {
    // MQTT 5: retained messages are not sent at subscription (retain handling 2), and the
    // retain flag is kept as published (rap), so that a command published retained — which
    // the broker would replay to every new subscriber — is refused rather than executed.
    // With a Subscription Identifier, so that a message another filter in the session delivers
    // (a copy of a command, from a filter that overlaps this one) is told apart:
    // CommandMessages.handle, LeftSubscriptions.unsubscribeOverlapping.
    const options =
      this.host.level() === 5
        ? {
            qos: 1 as const,
            rh: 2,
            rap: true,
            ...(id === undefined ? {} : { properties: { subscriptionIdentifier: id } }),
          }
        : { qos: 1 as const };
    const timeoutMs = this.host.subackTimeoutMs ?? SUBACK_TIMEOUT_MS;
    this.clearWait();
    const waiting = {
      client,
      timer: setTimeout(() => {
        if (this.waiting !== waiting) return;
        this.waiting = null;
        this.unanswered(client, timeoutMs);
      }, timeoutMs).unref(),
    };
    this.waiting = waiting;
    client.subscribe(this.host.topics.commandFilter, options, (error, granted) => {
      if (this.waiting === waiting) this.clearWait();
      // A connection lost before the SUBACK: the next one subscribes again.
      if (!this.host.current(client) || !client.connected) return;
      const qos = granted?.[0]?.qos;
      if (error === null && qos !== undefined && qos >= 1 && qos < 0x80) {
        this.subscribed = true;
        this.host.logger.info(
          { topic: this.host.topics.commandFilter, qos },
          'subscribed to the command topics',
        );
        this.publishStatus();
        return;
      }
      if (error === null && qos === 0) {
        // A broker that caps QoS (EMQX max_qos_allowed, an authorizer) granted less than asked:
        // the commands would come at most once — none kept for the gateway while it is away,
        // none redelivered when the journal cannot take it, and no PUBACK of the gateway's saying
        // that one is journaled (I5) — while `online` told the plant they were heard. Refused as
        // a refusal is, until the broker grants QoS 1.
        this.host.failed(
          `the broker granted the command subscription ${this.host.topics.commandFilter} at QoS 0, not 1: commands would be lost while the gateway is away or its journal is unavailable; allow QoS 1 for this client on the broker`,
        );
        this.host.logger.error(
          { topic: this.host.topics.commandFilter, qos },
          'the broker granted the command subscription at QoS 0 only (commands at most once); reconnecting to try again',
        );
        this.host.dropConnection(client, 'subscription granted at QoS 0');
        return;
      }
      this.host.failed(error?.message ?? 'subscription refused by the broker');
      this.host.logger.error(
        { topic: this.host.topics.commandFilter, err: error ?? undefined, qos },
        'the broker refused the command subscription; reconnecting to try again',
      );
      this.host.dropConnection(client, 'subscription refused');
    });
  }

  /** The connection ended (or the session stopped): its SUBSCRIBE no longer waits. */
  connectionEnded(): void {
    this.clearWait();
  }

  private clearWait(): void {
    if (this.waiting === null) return;
    clearTimeout(this.waiting.timer);
    this.waiting = null;
  }

  /**
   * No SUBACK within `timeoutMs`: the gateway would stay connected, deaf and unready with no
   * reason given (/readyz said only "not connected") until the connection happened to end. Said
   * as a refusal is, and the connection dropped so that the next one subscribes again, with the
   * reconnection backoff.
   */
  private unanswered(client: MqttClient, timeoutMs: number): void {
    // A stop under way keeps the connection for the results still settling.
    if (!this.host.current(client) || !client.connected || this.subscribed) return;
    if (!this.takingCommands) return;
    const topic = this.host.topics.commandFilter;
    this.host.failed(
      `the broker did not answer the command subscription ${topic} within ${timeoutMs} ms (no SUBACK): no command is heard on this connection; reconnecting to try again`,
    );
    this.host.logger.error(
      { topic, timeoutMs },
      'the broker did not answer the command subscription (no SUBACK); reconnecting to try again',
    );
    this.host.dropConnection(client, 'no SUBACK for the command subscription');
  }
}
