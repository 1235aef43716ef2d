import type { ResponseTopicRefusal } from './mqtt-topics.js';

/** sluice_mqtt_messages_total{outcome}: every message on a command topic ends in one of these. */
export type MessageOutcome =
  | 'new'
  | 'replayed'
  | 'in_flight'
  | 'key_reused'
  | 'invalid'
  | 'untimed'
  | 'expired'
  | 'unknown_device'
  | 'device_queue_full'
  | 'journal_unavailable'
  | 'withheld'
  | 'internal_error'
  | 'foreign_topic'
  | 'other_subscription';

/**
 * What a publication carries, for sluice_mqtt_publications_refused_total{kind}: a result, replay
 * or error on a result topic; the same on a Response Topic; the retained state, or the clearing
 * of a retained topic; the gateway's retained `online` at connect.
 */
export type PublicationKind = 'result' | 'response' | 'state' | 'status';

/**
 * sluice_mqtt_session_takeovers_suspected_total{evidence}: what showed a connection's close to
 * be another client's takeover of the gateway's session (mqtt-takeover.ts): `disconnect` (MQTT 5
 * DISCONNECT 0x8E Session taken over), `clean_session` (the session discarded and the Will
 * published: a client that started a clean session), `pattern` (short closes in a row without a
 * reason, the status left as the gateway published it).
 */
export type TakeoverEvidenceLabel = 'disconnect' | 'clean_session' | 'pattern';

/** sluice_commands_received_total{intake="mqtt",outcome}. */
export type ReceivedOutcome = 'new' | 'replayed' | 'in_flight' | 'key_reused' | 'refused';

/**
 * The counters the MQTT intake moves: the daemon's Metrics has them (src/daemon/metrics.ts);
 * named here so that the intake depends on what it uses, not on the daemon.
 */
export interface MqttMetrics {
  readonly mqttMessages: { inc(labels: { outcome: MessageOutcome }): void };
  readonly accepted: { inc(labels: { intake: 'mqtt'; outcome: ReceivedOutcome }): void };
  readonly journalFailures: { inc(): void };
  readonly mqttResponseTopicsRefused: { inc(labels: { reason: ResponseTopicRefusal }): void };
  /** Results not published: more were waiting for the broker, while disconnected, than are held. */
  readonly mqttResultsNotPublished: { inc(): void };
  /**
   * Publications the broker refused with a reason code (MQTT 5 PUBACK): `reason` is the code,
   * e.g. `0x87` (Not authorized: an ACL).
   */
  readonly mqttPublicationsRefused: {
    inc(labels: { kind: PublicationKind; reason: string }): void;
  };
  /**
   * sluice_mqtt_subscription_identifiers_delivered: the verdict in force (IdentifierProbe): 1
   * when the last MQTT 5 connection's probe that read something back found the broker delivers
   * the Subscription Identifiers it announces, 0 when it found them missing (a probe that reads
   * nothing back leaves it as it was), NaN when not known (no probe has read anything back) or
   * not used (MQTT 3.1.1, or a broker that says it has none).
   */
  readonly mqttSubscriptionIdentifiers: { set(value: number): void };
  /** Closes of the gateway's connections taken for another client's takeover of its session. */
  readonly mqttTakeoversSuspected: {
    inc(labels: { evidence: TakeoverEvidenceLabel }, value?: number): void;
  };
}
