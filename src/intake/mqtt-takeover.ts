import type { IPublishPacket, MqttClient } from 'mqtt';
import type { Logger } from '../core/logger.js';

/** MQTT 5 DISCONNECT reason 0x8E Session taken over (§3.14.2.1): a client with this id connected. */
export const SESSION_TAKEN_OVER = 0x8e;
/**
 * A connection the broker closes this soon after accepting it, without a reason, counts towards
 * a suspected takeover (see TakeoverWatch): another client with the same client id that
 * reconnects as soon as it is thrown off. As long as the longest reconnection delay, so that
 * another Sluice with the same id, which waits up to that long, is caught too.
 */
export const SHORT_CONNECTION_MS = 30_000;
/** Short connections in a row, closed without a reason, before a takeover is suspected. */
const SHORT_CONNECTIONS_SUSPECTED = 3;
/** The takeover warning is repeated at most this often while the connections stay short. */
const TAKEOVER_WARN_EVERY_MS = 10 * 60_000;

/**
 * What tells a takeover, when one is known: the broker's DISCONNECT 0x8E Session taken over, or
 * the session discarded with the gateway's Will published, as at a takeover by a client that
 * starts a clean session (SessionCloses).
 */
export type TakeoverEvidence = 'disconnect' | 'clean_session';

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
 * that lasts, or an attempt that fails (the broker away: a restart), ends the streak, and so
 * does a broker found restarted when the gateway is back (restarted(): StatusReadback).
 */
export class TakeoverWatch {
  /** Connections in a row the broker closed shortly after accepting them. */
  private shortConnections = 0;
  /** One of them was known for a takeover (0x8E, or a clean session's): the cause is known. */
  private known: TakeoverEvidence | null = null;
  /** When the takeover was last said at warn (clock.elapsed()); null: not in this streak. */
  private saidAt: number | null = null;
  /** The closes of the streak handed to `suspected` already. */
  private counted = 0;

  /**
   * `suspected` is told of the closes taken for a takeover, as they are (a metric): the
   * streak's evidence (what showed the last close or an earlier one of the streak a takeover,
   * else `pattern`), and how many closes of the streak it adds (the pattern's first closes are
   * counted when it is suspected, at the third).
   */
  constructor(
    private readonly clientId: string,
    private readonly logger: Logger,
    private readonly suspected: (
      evidence: TakeoverEvidence | 'pattern',
      closes: number,
    ) => void = () => undefined,
  ) {}

  /**
   * A connection ended after `upMs` (now: clock.elapsed()). `byBroker`: the broker closed it
   * with no reason, or with 0x8E; not dropped by the gateway, no error. `known`: what showed it
   * a takeover, if anything did (said at once, whatever the connection lasted). Returns the
   * cause to give as the intake's reason when a takeover is suspected, else null.
   */
  closed(
    now: number,
    upMs: number,
    byBroker: boolean,
    known: TakeoverEvidence | null,
  ): string | null {
    if (upMs >= SHORT_CONNECTION_MS) {
      this.endStreak();
      if (known === null || !byBroker) return null;
    }
    if (!byBroker) return null;
    this.shortConnections += 1;
    this.known = known ?? this.known;
    const clientId = this.clientId;
    const count = this.shortConnections;
    let cause: string;
    switch (this.known) {
      case 'disconnect':
        cause = `the MQTT broker ended the session: another client connected with this client id (${clientId}; DISCONNECT 0x8E Session taken over)`;
        break;
      case 'clean_session':
        cause = `the MQTT broker ended the session: another client connected with this client id (${clientId}) starting a clean session, and the broker discarded the gateway's session with its queued commands (it published the gateway's Will, and had no session for it when the gateway came back; a restarted broker that kept the retained status keeps the session too)`;
        break;
      case null:
        cause = `the MQTT broker closed the connection ${count} times in a row, each within ${SHORT_CONNECTION_MS / 1000} s of accepting it and without a reason, and was reachable again at once each time: most likely another client connects with this client id (${clientId}; the broker's log shows "Client ${clientId} already connected, closing old connection"), unless the broker was restarted that often`;
        break;
    }
    if (this.known === null && count < SHORT_CONNECTIONS_SUSPECTED) return null;
    // Under the streak's evidence: a later close that shows nothing by itself is counted because
    // the streak is known for a takeover, not because it makes a pattern of its own (`pattern` is
    // three or more closes in a row that show nothing, docs/mqtt-api.md).
    this.suspected(this.known ?? 'pattern', count - this.counted);
    this.counted = count;
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
    this.endStreak();
  }

  /**
   * The broker was restarted between the last connection and this one, though no attempt failed
   * (it was back within the reconnection delay), or it ended the connection with a reason of its
   * own (MQTT 5 DISCONNECT, e.g. 0x8B Server shutting down): not another client.
   */
  restarted(): void {
    this.endStreak();
  }

  /**
   * The streak ends, and with it what was known of it: its evidence (0x8E, a clean session) and
   * its warning. A later close that shows nothing by itself starts a streak of its own, counted
   * as a pattern from its third close, and is warned afresh (until 2026-12-06 the evidence
   * outlived a failed attempt or a restart, and one such close after either was counted under
   * it and given as a takeover's cause).
   */
  private endStreak(): void {
    this.shortConnections = 0;
    this.counted = 0;
    this.known = null;
    this.saidAt = null;
  }
}

/** What a StatusReadback read: the retained status (null: none), or why it could not. */
export type StatusRead =
  | { readonly kind: 'read'; readonly payload: string | null }
  | { readonly kind: 'refused' }
  | { readonly kind: 'lost' };

/**
 * Whether the broker kept running while the gateway was thrown off, read from the gateway's own
 * retained status once it is back, before it publishes `online` again. A broker that closes a
 * connection as it stops publishes the connection's Will: the status then says `offline` (kept
 * across the restart with `persistence true`), or nothing (without persistence, the retained
 * messages went with it). On a takeover by a client that keeps the session, the broker publishes
 * no Will (Mosquitto 2.0.11, measured, over MQTT 5 as over 3.1.1) and the status still says what
 * the gateway published, `online`. Only then does a short close without a reason count towards a
 * suspected takeover (TakeoverWatch): a broker restarted faster than the reconnection delay shows
 * no failed attempt between (until 2026-12-06 three such restarts were said to be a takeover).
 * A takeover by a client that starts a clean session publishes the Will too, and is told from a
 * restart by the session the broker no longer has (SessionCloses). What it cannot tell
 * (docs/mqtt-api.md): a broker that crashed (no Will) and kept the status on disk looks like a
 * takeover; a takeover of the kept session on a broker that publishes the Will at a takeover (as
 * MQTT 5 §3.1.2.5 reads; such brokers send DISCONNECT 0x8E over MQTT 5, said at once) looks like
 * a restart over MQTT 3.1.1.
 */
export class StatusReadback {
  /** The read under way: its client, and the retained status it received. */
  private pending: { client: MqttClient; payload: string | null } | null = null;

  constructor(private readonly topic: string) {}

  /**
   * Subscribes the status topic at QoS 0 and unsubscribes at once, on `client`'s connection: the
   * retained message comes with the subscription, before the UNSUBACK. Not No Local: the
   * retained message is the gateway's own. Call before anything else subscribes the same filter
   * on the connection (the probe of Subscription Identifiers: its subscription would be
   * replaced by this one, then removed).
   */
  read(client: MqttClient, level: 4 | 5): Promise<StatusRead> {
    const options = level === 5 ? { qos: 0 as const, rh: 0, nl: false } : { qos: 0 as const };
    const pending = { client, payload: null as string | null };
    this.pending = pending;
    return new Promise((resolve) => {
      let refused = false;
      client.subscribe(this.topic, options, (error, granted) => {
        const qos = granted?.[0]?.qos;
        refused = error !== null || qos === undefined || qos >= 0x80;
      });
      client.unsubscribe(this.topic, (error) => {
        if (this.pending === pending) this.pending = null;
        if (error instanceof Error) resolve({ kind: 'lost' });
        else if (refused) resolve({ kind: 'refused' });
        else resolve({ kind: 'read', payload: pending.payload });
      });
    });
  }

  /** A PUBLISH from the broker: true when it is the retained status a read is waiting for. */
  receive(client: MqttClient, packet: IPublishPacket): boolean {
    const pending = this.pending;
    if (pending?.client !== client || packet.topic !== this.topic || !packet.retain) return false;
    const payload = Buffer.isBuffer(packet.payload)
      ? packet.payload.toString('utf8')
      : packet.payload;
    pending.payload = payload.length === 0 ? null : payload;
    return true;
  }
}
