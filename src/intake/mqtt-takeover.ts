import type { Logger } from '../core/logger.js';

/** MQTT 5 DISCONNECT reason 0x8E Session taken over (§3.14.2.1): a client with this id connected. */
export const SESSION_TAKEN_OVER = 0x8e;
/**
 * A connection the broker closes this soon after accepting it, without a reason, counts towards
 * a suspected takeover (see TakeoverWatch): another client with the same client id that
 * reconnects as soon as it is thrown off. As long as the longest reconnection delay, so that
 * another Sluice with the same id, which waits up to that long, is caught too.
 */
const SHORT_CONNECTION_MS = 30_000;
/** Short connections in a row, closed without a reason, before a takeover is suspected. */
const SHORT_CONNECTIONS_SUSPECTED = 3;
/** The takeover warning is repeated at most this often while the connections stay short. */
const TAKEOVER_WARN_EVERY_MS = 10 * 60_000;

/**
 * Whether another client takes the gateway's session over: the broker closes a connection soon
 * after accepting it, with DISCONNECT 0x8E Session taken over, or without a word (Mosquitto
 * 2.0.11 sends no DISCONNECT on a takeover, over MQTT 5 either: it logs "Client <id> already
 * connected, closing old connection" and closes the socket). Another client with the same client
 * id — a second gateway, a stray tool — throws the gateway off each time it connects, and is
 * thrown off in turn when the gateway comes back: the link flaps, and the commands queued in the
 * session go to whichever client holds it (a tool that acknowledges them takes them, and they
 * are never run nor answered). Said at warn at once for a 0x8E, after
 * SHORT_CONNECTIONS_SUSPECTED such closes without one, then at most every TAKEOVER_WARN_EVERY_MS
 * with the count; the cause is also the reason /readyz gives while disconnected. A connection
 * that lasts, or an attempt that fails (the broker away: a restart), ends the streak.
 */
export class TakeoverWatch {
  /** Connections in a row the broker closed shortly after accepting them. */
  private shortConnections = 0;
  /** One of them ended with DISCONNECT 0x8E Session taken over: the cause is known. */
  private takenOver = false;
  /** When the takeover was last said at warn (clock.elapsed()); null: not in this streak. */
  private saidAt: number | null = null;

  constructor(
    private readonly clientId: string,
    private readonly logger: Logger,
  ) {}

  /**
   * A connection ended after `upMs` (now: clock.elapsed()). `byBroker`: the broker closed it
   * with no reason, or with 0x8E (`takenOver`); not dropped by the gateway, no error. Returns the
   * cause to give as the intake's reason when a takeover is suspected, else null.
   */
  closed(now: number, upMs: number, byBroker: boolean, takenOver: boolean): string | null {
    if (upMs >= SHORT_CONNECTION_MS) {
      this.shortConnections = 0;
      this.takenOver = false;
      this.saidAt = null;
      return null;
    }
    if (!byBroker) return null;
    this.shortConnections += 1;
    this.takenOver ||= takenOver;
    const clientId = this.clientId;
    const count = this.shortConnections;
    const cause = this.takenOver
      ? `the MQTT broker ended the session: another client connected with this client id (${clientId}; DISCONNECT 0x8E Session taken over)`
      : `the MQTT broker closed the connection ${count} times in a row, each within ${SHORT_CONNECTION_MS / 1000} s of accepting it and without a reason, and was reachable again at once each time: most likely another client connects with this client id (${clientId}; the broker's log shows "Client ${clientId} already connected, closing old connection"), unless the broker was restarted that often`;
    if (!this.takenOver && count < SHORT_CONNECTIONS_SUSPECTED) return null;
    if (this.saidAt !== null && now - this.saidAt < TAKEOVER_WARN_EVERY_MS) return cause;
    this.saidAt = now;
    this.logger.warn(
      { clientId, shortConnections: count },
      `${cause}. Each connection throws the other client off and the link flaps; the commands queued for the gateway go to whichever client holds the session. Give every client its own id (mqtt.clientId, default sluice-{gatewayId})`,
    );
    return cause;
  }

  /**
   * A connection attempt failed (refused, unreachable, no CONNACK): the broker was away (a
   * restart, a crash), not held by another client, which a takeover needs. The closes before
   * were its going, not another client's connects (three restarts in a row were said to be one).
   */
  attemptFailed(): void {
    this.shortConnections = 0;
  }
}
