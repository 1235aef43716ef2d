import type { IPublishPacket, MqttClient } from 'mqtt';
import type { Logger } from '../core/logger.js';

/**
 * The Subscription Identifier of the probe's subscription (the command subscription's is 1):
 * what a broker that sends identifiers puts on the probe's copy of the gateway's `online`.
 */
export const PROBE_SUBSCRIPTION_ID = 2;
/** How long a copy of the status without the probe's identifier waits for one with it, ms. */
const PROBE_GRACE_MS = 1_000;
/** How long the probe waits for any copy of the status before it gives up (unverified), ms. */
const PROBE_TIMEOUT_MS = 10_000;

/**
 * Whether the broker puts Subscription Identifiers on what it delivers (MQTT 5 §3.3.4), as seen
 * on a connection: `unverified` (not known yet, or the probe saw nothing: an ACL), `delivered`,
 * `missing` (the CONNACK said they are available, and the broker, or a bridge or proxy on the
 * way, delivers them not), `not_used` (MQTT 3.1.1, or a CONNACK saying they are unavailable).
 */
export type IdentifierCheck = 'unverified' | 'delivered' | 'missing' | 'not_used';

export interface IdentifierProbeOptions {
  /** The gateway's status topic, `{prefix}/status`: the probe's topic (see the class doc). */
  readonly topic: string;
  readonly logger: Logger;
  /** Called when a connection finds identifiers missing. */
  readonly missing: () => void;
  /**
   * Called when identifiers are delivered and a copy of the status came without the probe's:
   * another filter of the session delivered it (one another client with this client id left,
   * `#`), which a message on a topic not a command topic has removed otherwise
   * (LeftSubscriptions.unsubscribeForeign).
   */
  readonly foreign: (topic: string) => void;
  /**
   * Called when the probe of a connection ends, whatever its answer (delivered, missing, none in
   * time, refused, or the connection gone): the command copies held for its verdict are handled
   * now, or let go with their connection (HeldCopies).
   */
  readonly answered: () => void;
  /** Called with each verdict as it is set (a metric: sluice_mqtt_subscription_identifiers_delivered). */
  readonly checked?: ((check: IdentifierCheck) => void) | undefined;
  readonly graceMs?: number | undefined;
  readonly timeoutMs?: number | undefined;
}

/**
 * A self-test of Subscription Identifiers on each MQTT 5 connection whose CONNACK says they are
 * available. The intake tells a command copy another subscription of the session delivered by
 * the absence of the command subscription's identifier (mqtt-stray-copies.ts), and never runs
 * such a copy: a broker that announces identifiers but never sends them (a broker that
 * misbehaves, a bridge or proxy that drops the property) would have every command refused, each
 * after the stray copy's wait. So the gateway subscribes its own status topic with the probe's
 * identifier (QoS 0, retain handling 2, not No Local) before the command subscription, and reads
 * back the `online` it publishes once that subscription is granted: with the identifier, they
 * are delivered; only without it (within PROBE_GRACE_MS of the first copy: another filter left
 * in the session may deliver a copy of its own first), they are missing, and the connection is
 * handled as with a broker that says it has none (every command copy taken as the command
 * subscription's). No copy at all within PROBE_TIMEOUT_MS (an ACL without read on the status
 * topic, or write) leaves the check unverified. The probe's subscription is removed once it has
 * its answer. The status topic is used rather than a topic of its own: it adds no publication,
 * and the gateway's user already publishes there.
 *
 * Until a connection's probe answers, a command copy without the command subscription's
 * identifier cannot be judged (a copy another filter of the session delivered, or the command
 * subscription's own on a path that drops identifiers): it is held, unacknowledged, until the
 * verdict (`pending`, HeldCopies), whatever an earlier connection found. Commands queued for the
 * gateway come first on a connection, before the probe can answer: on the first connection of a
 * broken path they were taken for such copies and refused; on a reconnection after a verdict of
 * `missing` a copy through a filter another client left was run, though the path may deliver
 * identifiers by then.
 */
export class IdentifierProbe {
  private readonly topic: string;
  private readonly logger: Logger;
  private readonly onMissing: () => void;
  private readonly onForeign: (topic: string) => void;
  private readonly onAnswered: () => void;
  private readonly onChecked: (check: IdentifierCheck) => void;
  /** The connection (its stream) whose CONNACK announced identifiers: one to be probed. */
  private announcedOn: unknown = null;
  /** The connection (its stream) whose probe has ended: its verdict is known. */
  private answeredOn: unknown = null;
  /** Copies of the status without the probe's identifier on the connection being probed. */
  private untagged = 0;
  private readonly graceMs: number;
  private readonly timeoutMs: number;
  private verdict: IdentifierCheck = 'unverified';
  /** The client of the connection being probed; null when no probe is under way. */
  private probing: MqttClient | null = null;
  private grace: NodeJS.Timeout | null = null;
  private timeout: NodeJS.Timeout | null = null;
  /** The warning is said once a run, then at debug (the verdict stays in /readyz). */
  private warned = false;

  constructor(options: IdentifierProbeOptions) {
    this.topic = options.topic;
    this.logger = options.logger;
    this.onMissing = options.missing;
    this.onForeign = options.foreign;
    this.onAnswered = options.answered;
    this.onChecked = options.checked ?? (() => undefined);
    this.graceMs = options.graceMs ?? PROBE_GRACE_MS;
    this.timeoutMs = options.timeoutMs ?? PROBE_TIMEOUT_MS;
  }

  /** What the last probe found (see IdentifierCheck). */
  get check(): IdentifierCheck {
    return this.verdict;
  }

  /** Whether command copies can be told apart by the command subscription's identifier. */
  get usable(): boolean {
    return this.verdict === 'delivered' || this.verdict === 'unverified';
  }

  /**
   * A CONNACK accepted `client`'s connection, announcing identifiers or not: its messages may
   * come before the 'connect' event (mqtt.js sends what it stored first), so the wait for the
   * verdict starts here, not at begin().
   */
  connack(client: MqttClient, announced: boolean): void {
    this.announcedOn = announced ? client.stream : null;
  }

  /**
   * Whether `client`'s connection announced identifiers and its probe has not answered yet: a
   * command copy without the command subscription's identifier waits (see the class doc).
   */
  pending(client: MqttClient): boolean {
    const stream = client.stream as unknown;
    return this.announcedOn === stream && this.answeredOn !== stream;
  }

  /** A connection without identifiers (MQTT 3.1.1, or the CONNACK says so): nothing to probe. */
  notUsed(): void {
    this.end();
    this.setVerdict('not_used');
  }

  /**
   * A connection with identifiers announced: subscribes the probe on it, before the command
   * subscription (so that it is in place when `online` is published, at that one's SUBACK).
   */
  begin(client: MqttClient): void {
    this.end();
    if (this.verdict === 'not_used') this.setVerdict('unverified');
    this.probing = client;
    this.untagged = 0;
    client.subscribe(
      this.topic,
      { qos: 0, rh: 2, nl: false, properties: { subscriptionIdentifier: PROBE_SUBSCRIPTION_ID } },
      (error, granted) => {
        if (this.probing !== client) return;
        const qos = granted?.[0]?.qos;
        if (error !== null || qos === undefined || qos >= 0x80) {
          this.logger.info(
            { topic: this.topic, err: error ?? undefined, qos },
            'the broker refused the probe of Subscription Identifiers (a subscription to the status topic): copies of commands are told apart by the identifier, unverified',
          );
          this.end();
        }
      },
    );
    this.timeout = setTimeout(() => {
      if (this.probing !== client) return;
      this.logger.info(
        { topic: this.topic },
        'the probe of Subscription Identifiers read nothing back from the status topic (an ACL without read on it?): copies of commands are told apart by the identifier, unverified',
      );
      this.end();
    }, this.timeoutMs);
    this.timeout.unref();
  }

  /**
   * A PUBLISH from the broker: true when it is the probe's (a copy of the status topic while a
   * probe is under way, or one carrying the probe's identifier), which is then not a command.
   */
  receive(client: MqttClient, packet: IPublishPacket): boolean {
    const ids = packet.properties?.subscriptionIdentifier;
    const list = ids === undefined ? [] : Array.isArray(ids) ? ids : [ids];
    const tagged = list.includes(PROBE_SUBSCRIPTION_ID);
    if (packet.topic !== this.topic) return false;
    if (this.probing !== client) return tagged;
    if (tagged) {
      if (this.verdict !== 'delivered') {
        this.logger.info({}, 'the MQTT broker delivers Subscription Identifiers');
      }
      this.setVerdict('delivered');
      const foreign = this.untagged > 0;
      this.end();
      if (foreign) this.onForeign(this.topic);
      return true;
    }
    this.untagged += 1;
    this.grace ??= setTimeout(() => {
      if (this.probing !== client) return;
      this.found();
    }, this.graceMs);
    this.grace.unref();
    return true;
  }

  /** The connection ended or the intake stops: no probe under way. */
  end(): void {
    const client = this.probing;
    this.probing = null;
    if (this.grace !== null) clearTimeout(this.grace);
    if (this.timeout !== null) clearTimeout(this.timeout);
    this.grace = null;
    this.timeout = null;
    if (client === null) return;
    this.answeredOn = client.stream;
    if (client.connected) {
      client.unsubscribe(this.topic, () => {
        // Lost with the connection, it stays in the session: the next probe subscribes it
        // again, the same, and removes it.
      });
    }
    this.onAnswered();
  }

  private setVerdict(check: IdentifierCheck): void {
    this.verdict = check;
    this.onChecked(check);
  }

  private found(): void {
    this.setVerdict('missing');
    const level = this.warned ? 'debug' : 'warn';
    this.warned = true;
    this.logger[level](
      { topic: this.topic },
      "the MQTT broker announced Subscription Identifiers but delivers none (a broker that misbehaves, or a bridge or proxy that drops them): a command copy another subscription of the session delivers cannot be told apart, and every command is taken as the command subscription's (as with a broker that has none); a retained command through a filter another client left in the session may then run (docs/mqtt-api.md)",
    );
    this.end();
    this.onMissing();
  }
}
