import type { IDisconnectPacket, IPublishPacket, MqttClient } from 'mqtt';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import type { TakeoverEvidenceLabel } from './mqtt-metrics.js';
import { StatusReadback, TakeoverWatch, type StatusRead } from './mqtt-takeover.js';

/** The gateway's Will, which a broker publishes on its status topic when it loses the gateway. */
const WILL_STATUS = 'offline';

export interface SessionClosesOptions {
  /** The gateway's client id, for the warnings. */
  readonly clientId: string;
  /** The gateway's status topic, `{prefix}/status`, read back after a close (StatusReadback). */
  readonly statusTopic: string;
  readonly clock: Clock;
  readonly logger: Logger;
  /**
   * The Session Expiry Interval the gateway asks for (MQTT 5), s; undefined over MQTT 3.1.1,
   * whose sessions last until the broker expires them.
   */
  readonly sessionExpiryS: () => number | undefined;
  /** The status the gateway last published (`online` / `offline`); null: none yet. */
  readonly lastStatus: () => string | null;
  /** Whether `client` is still the session's, not ended: a judgement of another is dropped. */
  readonly current: (client: MqttClient) => boolean;
  /** A suspected takeover's cause: the reason the intake gives while disconnected (/readyz). */
  readonly cause: (cause: string) => void;
  /** Closes taken for a takeover, by what showed it (TakeoverWatch; a metric). */
  readonly suspected?: ((evidence: TakeoverEvidenceLabel, closes: number) => void) | undefined;
}

/**
 * How the connections to the broker end, as far as they tell whether another client takes the
 * gateway's session over (TakeoverWatch). A close by the broker with no reason and no error —
 * what Mosquitto 2.0.11 does both at a takeover and as it stops — is judged once the gateway is
 * back, before it publishes `online` again, from its own retained status (StatusReadback) and
 * whether the broker still had its session (the CONNACK's Session Present):
 * - the status the gateway last published still there: the broker kept running and published no
 *   Will, as at a takeover by a client that keeps the session (another Sluice, `mosquitto_sub
 *   -c`); a short connection counts towards the suspected takeover (the pattern);
 * - `offline` (the Will) and no session, lost within its expiry: a takeover by a client that
 *   started a clean session (`mosquitto_sub -i <id>` without `-c`), at which Mosquitto discards
 *   the gateway's session and publishes its Will (its handle_connect: the Will goes when either
 *   side is clean). A restarted broker that kept the status (`persistence true`) kept the
 *   session too, and one that lost the session lost the status with it. Said at once, whatever
 *   the connection lasted: the commands queued in the session are gone with it;
 * - otherwise (`offline` with the session, or no status): a restart, which ends the streak.
 * A connection attempt that fails ends the streak too (the broker was away), and so does an MQTT
 * 5 DISCONNECT with a reason of the broker's own (0x8B Server shutting down); 0x8E Session taken
 * over is said at once.
 */
export class SessionCloses {
  private readonly watch: TakeoverWatch;
  private readonly readback: StatusReadback;
  private readonly clock: Clock;
  private readonly logger: Logger;
  private readonly options: SessionClosesOptions;
  /** The last connection's close, to be judged at the next connection; null: none to judge. */
  private pending: { readonly upMs: number; readonly at: number } | null = null;

  constructor(options: SessionClosesOptions) {
    this.options = options;
    this.clock = options.clock;
    this.logger = options.logger;
    this.watch = new TakeoverWatch(options.clientId, options.logger, options.suspected);
    this.readback = new StatusReadback(options.statusTopic);
  }

  /**
   * A connection that was up `upMs` ended. `byBroker`: the broker closed it (not dropped by the
   * gateway, no error), with no DISCONNECT or with 0x8E; `disconnect`: the broker's DISCONNECT,
   * if it sent one (MQTT 5).
   */
  connectionEnded(upMs: number, byBroker: boolean, disconnect: IDisconnectPacket | null): void {
    const now = this.clock.elapsed();
    if (byBroker && disconnect === null) {
      // Another client connecting with this client id, or a broker restarted faster than the
      // reconnection delay: told apart once back (judge).
      this.pending = { upMs, at: now };
      return;
    }
    this.pending = null;
    // A DISCONNECT with another reason (0x8B Server shutting down, …): the broker said why.
    if (disconnect !== null && !byBroker) this.watch.restarted();
    const cause = this.watch.closed(now, upMs, byBroker, disconnect === null ? null : 'disconnect');
    if (cause !== null) this.options.cause(cause);
  }

  /** A connection attempt failed (refused, unreachable, no CONNACK): the broker was away. */
  attemptFailed(): void {
    this.pending = null;
    this.watch.attemptFailed();
  }

  /** A PUBLISH from the broker: true when it is the retained status a read is waiting for. */
  receive(client: MqttClient, packet: IPublishPacket): boolean {
    return this.readback.receive(client, packet);
  }

  /**
   * A connection is up (`sessionPresent`: its CONNACK's): the close before it, if one waits,
   * is judged from the status read back on it. Call before anything else subscribes the status
   * topic on the connection (StatusReadback.read).
   */
  connected(client: MqttClient, level: 4 | 5, sessionPresent: boolean): void {
    const pending = this.pending;
    this.pending = null;
    if (pending === null) return;
    const awayMs = this.clock.elapsed() - pending.at;
    void this.readback.read(client, level).then((read) => {
      this.judge(client, pending.upMs, awayMs, read, sessionPresent);
    });
  }

  /** See the class doc. Not read (refused by an ACL, the connection lost): counted as before. */
  private judge(
    client: MqttClient,
    upMs: number,
    awayMs: number,
    read: StatusRead,
    sessionPresent: boolean,
  ): void {
    if (!this.options.current(client)) return;
    const now = this.clock.elapsed();
    if (read.kind === 'read' && read.payload !== this.options.lastStatus()) {
      const expiryS = this.options.sessionExpiryS();
      const sessionLost = !sessionPresent && (expiryS === undefined || awayMs < expiryS * 1000);
      if (read.payload === WILL_STATUS && sessionLost) {
        const cause = this.watch.closed(now, upMs, true, 'clean_session');
        if (cause !== null) this.options.cause(cause);
        return;
      }
      this.watch.restarted();
      this.logger.info(
        { status: read.payload ?? '(none)', connectedForMs: Math.round(upMs), sessionPresent },
        'the MQTT broker was restarted while the gateway was away: it published the Will or lost its retained status (not another client on the client id)',
      );
      return;
    }
    const cause = this.watch.closed(now, upMs, true, null);
    if (cause !== null) this.options.cause(cause);
  }
}
