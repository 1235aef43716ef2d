import { ErrorWithReasonCode, type MqttClient } from 'mqtt';
import type { Logger } from '../core/logger.js';
import type { MqttConfig } from './mqtt-client-options.js';

/** The protocol level spoken on the wire: 5, or 4 (MQTT 3.1.1). */
export type ProtocolLevel = 4 | 5;

/** Which MQTT version the session speaks, and why (for `/readyz` and the log). */
export interface MqttProtocol {
  readonly version: ProtocolLevel;
  /** True when MQTT 5 was preferred and the broker refused it: 3.1.1 is spoken instead. */
  readonly fallback: boolean;
  /** One line for an operator, e.g. "MQTT 3.1.1: the broker refused MQTT 5; …". */
  readonly summary: string;
}

/**
 * CONNACK refusals that mean "not this protocol version": 0x01 is MQTT 3.1.1's "unacceptable
 * protocol version" (what a 3.1.1-only broker such as aedes answers an MQTT 5 CONNECT with;
 * mqtt.js reports it as an ErrorWithReasonCode with code 1), 0x84 MQTT 5's "unsupported
 * protocol version".
 */
const PROTOCOL_REFUSALS = new Set([0x01, 0x84]);
/** After a refusal of MQTT 5, the 3.1.1 attempt follows this soon. */
const FALLBACK_RECONNECT_MS = 50;

/**
 * The MQTT version the session speaks (SPEC §5): MQTT 5 preferred, 3.1.1 when the broker refuses
 * 5 in its CONNACK and `mqtt.protocolVersion` is `auto` (once per intake's life), or as
 * configured; and the summary /readyz gives of it. Split out of mqtt-session.ts, which keeps the
 * connection's lifecycle.
 */
export class ProtocolVersion {
  private current: ProtocolLevel;
  private fellBack = false;

  constructor(
    private readonly config: MqttConfig,
    private readonly logger: Logger,
    /** The broker's URL as the log shows it (no password). */
    private readonly shownUrl: string,
  ) {
    this.current = config.protocolVersion === 4 ? 4 : 5;
  }

  /** The protocol level of the next (or current) connection. */
  get level(): ProtocolLevel {
    return this.current;
  }

  /** Which version is spoken, and why; `identifiersMissing`: the probe's verdict (IdentifierProbe). */
  protocol(identifiersMissing: boolean): MqttProtocol {
    const version = this.current;
    let summary: string;
    if (version === 5 && identifiersMissing) {
      summary =
        'MQTT 5: the broker announces Subscription Identifiers but delivers none; command copies through other subscriptions of the session cannot be told apart';
    } else if (version === 5) summary = 'MQTT 5';
    else if (this.fellBack) {
      summary =
        'MQTT 3.1.1: the broker refused MQTT 5; response topics and message expiry unavailable';
    } else {
      summary =
        'MQTT 3.1.1 (mqtt.protocolVersion 4): response topics and message expiry unavailable';
    }
    return { version, fallback: this.fellBack, summary };
  }

  /** Whether `error` is a CONNACK's refusal of the version (`awaitingConnack`: one was awaited). */
  refuses(error: Error, awaitingConnack: boolean): boolean {
    return (
      awaitingConnack && error instanceof ErrorWithReasonCode && PROTOCOL_REFUSALS.has(error.code)
    );
  }

  /**
   * The broker refused MQTT 5 in its CONNACK: speak 3.1.1 from the next connection on, for the
   * rest of this intake's life (SPEC §5). The options are the client's own, read again at each
   * connection (CONNECT, parser, publications); results held for the next connection carry no
   * MQTT 5 properties on a 3.1.1 wire. Called from mqtt.js's CONNACK handler, before it
   * schedules the reconnection with `reconnectPeriod`.
   */
  fallBack(client: MqttClient, error: Error): void {
    this.current = 4;
    this.fellBack = true;
    client.options.protocolVersion = 4;
    delete client.options.properties;
    client.options.reconnectPeriod = FALLBACK_RECONNECT_MS;
    // What becomes of a command without issuedAt depends on the site: said as it is, so that
    // a site that takes untimed commands is not told they are now refused.
    const untimed = this.config.acceptUntimedCommands
      ? 'commands without issuedAt are still taken, timed from their receipt (mqtt.acceptUntimedCommands)'
      : 'commands must carry issuedAt';
    this.logger.warn(
      { url: this.shownUrl, refusal: error.message },
      `the MQTT broker refused MQTT 5; falling back to MQTT 3.1.1: response topics and message expiry are unavailable, ${untimed}`,
    );
  }
}
