import type { ServerResponse } from 'node:http';
import type { Clock } from '../core/clock.js';
import type { CommandRecord } from '../core/journal.js';
import type { Logger } from '../core/logger.js';
import type { CommandPipeline } from '../core/pipeline.js';
import { resetConnection } from './https-reset.js';
import { carriesStream } from './https-unread.js';
import { connectionOf, readTcpPeers } from './https-peer.js';
import type { UiSession, UiSessions } from './ui-session.js';
import type { UiDevice, UiGateway, UiViews } from './ui-views.js';

/**
 * The status page's live updates: one server-sent event stream per open page (WHATWG HTML
 * §9.2). The pipeline's listeners drive it — a settled command, a device's readback that
 * changed — and, once a second while a page listens, an in-memory look at each device's queue
 * and command in flight (a command being accepted or dispatched has no listener of its own)
 * and at the gateway (clock, broker, open commands). Events carry whole documents, sent only
 * when they changed:
 *
 * - `devices`: the devices table (ui-views.ts `UiDevice[]`);
 * - `gateway`: the gateway band (`UiGateway`);
 * - `commands`: a command was accepted, dispatched or settled, a command became stuck, or a
 *   device stopped moving (`{ key, scope, device, state }` or `{}`): the page fetches its
 *   command lists again, with its own filter;
 * - `session`: the session ended (logout, expiry); the page shows its login again.
 *
 * A comment line every 15 s keeps proxies and the browser from timing the stream out; the
 * `retry` field tells the browser to reconnect 2 s after the stream drops.
 *
 * A page that does not read its stream (a tablet asleep with its connection half-open, a
 * browser stalled, a client that never reads) must not make the daemon keep every event for it:
 * once the kernel's socket buffers are full, Node would queue each write in memory, without
 * bound — a devices event of a plant of 200 valves is about 120 KB, five a second while one
 * travels. So a stream whose write is refused (`write()` false: Node's buffer is past its
 * high-water mark) is sent nothing more until it drains; then it gets what changed meanwhile —
 * the devices and the gateway as they are then, and a `commands` cue when one was held back.
 * Every event is a whole document or a cue to fetch one, so the page misses nothing by it, and
 * the daemon holds at most one event beyond the high-water mark per stream.
 *
 * A page whose network vanished without a FIN (a tablet carried out of the radio's reach, a
 * laptop's VPN dropped) is not seen by a write: the kernel takes the heartbeat and retransmits
 * it unanswered until TCP gives up, about 15 minutes, and the stream counted against its
 * session's four all that while, so that the operator who reopened the page after the blip was
 * refused. So every peerCheckMs the kernel is asked whether each stream's client still
 * acknowledges what is sent to it (https-peer.ts); a stream whose client has been silent for
 * peerSilentMs is freed, its connection reset. The heartbeat makes sure something waits for an
 * acknowledgement at least every heartbeatMs, so a silent client is found within
 * heartbeatMs + peerSilentMs + peerCheckMs (50 s: STREAM_PEER_BOUNDS). A client that is there but does not read
 * answers the kernel's window probes: it is held, as above, not freed.
 */

const TICK_MS = 1_000;
const RETRY_MS = 2_000;

/** How a stream whose client vanished is found (see the class comment). */
export interface StreamPeerBounds {
  /** Something waits for the client's acknowledgement at least this often. */
  readonly heartbeatMs: number;
  /** How often the kernel is asked whether the streams' clients still acknowledge. */
  readonly peerCheckMs: number;
  /**
   * A stream whose client has acknowledged nothing for this long, the kernel's retransmissions
   * or probes unanswered, is freed. Long enough for a radio link's short fade, which TCP
   * recovers from; a page cut so reconnects on its own within RETRY_MS and misses nothing.
   */
  readonly peerSilentMs: number;
}

/** The gateway's bounds (not a site's setting): its tests shorten them, to wait less. */
export const STREAM_PEER_BOUNDS: StreamPeerBounds = {
  heartbeatMs: 15_000,
  peerCheckMs: 5_000,
  peerSilentMs: 30_000,
};
/** Mirror changes come at every scan while a valve travels: one devices event per 200 ms. */
const DEVICES_DEBOUNCE_MS = 200;
/**
 * Streams one session may hold. The pages of one browser share one stream (ui/app.js); a
 * browser without Web Locks opens one per page, and past a few it has no connection left to
 * the gateway for anything else. A session that asks for more (a page reopened in a loop, a
 * misbehaving client) is refused without taking the streams of other operators: with one
 * limit for all, one session holding them all kept every other page from going live.
 */
export const MAX_STREAMS_PER_SESSION = 4;
/**
 * Streams one identity may hold, all its sessions together: a quarter of MAX_STREAMS. A token
 * logs in as often as it is presented, each login a session of its own, so the session's limit
 * alone let one identity (a leaked or misbehaving token, a browser left with many pages open,
 * logged in again and again) take every stream and keep every other operator's page from going
 * live. One identity shared by the browsers of many control rooms (one stream each: the pages of
 * a browser share it) still has room for sixteen.
 */
export const MAX_STREAMS_PER_IDENTITY = 16;
/**
 * Streams at once, all sessions together: an old tablet left open in each control room, with
 * room to spare. It bounds what the streams cost the daemon: a view of the devices each tick
 * and, for a stream that is not read, at most one event beyond Node's high-water mark.
 */
export const MAX_STREAMS = 64;

interface Stream {
  readonly res: ServerResponse;
  readonly session: UiSession;
  readonly allowed: (device: string) => boolean;
  /** Signatures of the devices and gateway documents last queued on the stream. */
  lastDevices: string;
  lastGateway: string;
  /** Not read fast enough: nothing more is written until it drains. */
  behind: boolean;
  /** A `commands` cue was held back while behind: one is sent when it drains. */
  commandsHeld: boolean;
  /** The connection's key in the kernel's table (https-peer.ts), taken when it opened. */
  readonly connection: string | null;
  /** Since when (monotonic) the kernel has found the client silent at every look. */
  silentSince: number | null;
}

export interface UiEventsOptions {
  readonly pipeline: CommandPipeline;
  readonly views: UiViews;
  readonly sessions: UiSessions;
  readonly clock: Clock;
  readonly logger: Logger;
  /** Aborted when the intake stops: every stream ends, so that the server can close. */
  readonly stopping: AbortSignal;
  /** Headers every status page response carries (CSP and the like). */
  readonly headers: Readonly<Record<string, string>>;
  /** STREAM_PEER_BOUNDS unless given. */
  readonly peerBounds?: StreamPeerBounds;
}

export class UiEvents {
  private readonly o: UiEventsOptions;
  private readonly bounds: StreamPeerBounds;
  private readonly streams = new Set<Stream>();
  private readonly unsubscribe: (() => void)[] = [];
  private tick: NodeJS.Timeout | null = null;
  private debounce: NodeJS.Timeout | null = null;
  /** The last push from a timer or a drain failed (pushed()): said once until one succeeds. */
  private pushFailing = false;
  /** The last read of the gateway document failed (gatewayNow()): said once, and its return. */
  private gatewayFailing = false;
  private lastHeartbeatMono: number;
  private lastPeerCheckMono: number;
  private checkingPeers = false;
  /** The devices' queues and commands in flight at the last tick. */
  private lanes = '';
  /** The open commands counted at the last tick: accepted, dispatched, stuck. */
  private counts = '';

  constructor(options: UiEventsOptions) {
    this.o = options;
    this.bounds = options.peerBounds ?? STREAM_PEER_BOUNDS;
    this.lastHeartbeatMono = options.clock.elapsed();
    this.lastPeerCheckMono = this.lastHeartbeatMono;
    const { pipeline, views } = options;
    this.unsubscribe.push(
      pipeline.onMirror((device) => {
        views.mirrorChanged(device);
        this.devicesSoon();
      }),
      pipeline.onSettled((record) => {
        this.settled(record);
      }),
    );
    options.stopping.addEventListener(
      'abort',
      () => {
        this.close();
      },
      { once: true },
    );
  }

  get count(): number {
    return this.streams.size;
  }

  /** Why a new stream for this session is refused (too many open), or null when it is not. */
  refusal(session: UiSession): string | null {
    if (this.o.stopping.aborted) return 'the gateway is stopping; retry shortly';
    let mine = 0;
    let identity = 0;
    for (const stream of this.streams) {
      if (stream.session === session) mine++;
      if (stream.session.identity === session.identity) identity++;
    }
    if (mine >= MAX_STREAMS_PER_SESSION) {
      return `this session has ${mine} event streams open, the most one session may hold (the pages of one browser share one); close a page or retry shortly`;
    }
    // The new stream is refused, not the identity's oldest ended for it: the pages that hold
    // them are live, and an ended stream's page reconnects on its own in RETRY_MS, so that
    // ending the oldest would only pass the refusal round, every page of the identity dropping
    // in turn (a wall display among them), where a refusal leaves them live and says why.
    if (identity >= MAX_STREAMS_PER_IDENTITY) {
      return `identity ${session.identity} has ${identity} event streams open, the most one identity may hold (its other logins and browsers count too); close a page of it or retry shortly`;
    }
    if (this.streams.size >= MAX_STREAMS) {
      return `too many status pages are open (${MAX_STREAMS} event streams); retry shortly`;
    }
    return null;
  }

  /** Takes over a response for a stream; false when it is refused (refusal()). */
  open(res: ServerResponse, session: UiSession, allowed: (device: string) => boolean): boolean {
    if (this.refusal(session) !== null) return false;
    res.writeHead(200, {
      ...this.o.headers,
      'content-type': 'text/event-stream',
      'cache-control': 'no-store',
      'x-content-type-options': 'nosniff',
      // A buffering reverse proxy would hold events back.
      'x-accel-buffering': 'no',
    });
    const stream: Stream = {
      res,
      session,
      allowed,
      lastDevices: '',
      lastGateway: '',
      behind: false,
      commandsHeld: false,
      connection: res.socket === null ? null : connectionOf(res.socket),
      silentSince: null,
    };
    this.streams.add(stream);
    // The page gone (its tab or browser closed) ends its side of the connection. The TLS socket
    // is kept half-open for the answers a client is owed (https-owed.ts), and a stream is never
    // done: it went on until a write found the connection gone (the heartbeat, 15 s), counted
    // against its session and the daemon's streams meanwhile. An EventSource never half-closes
    // on purpose: its end of input is the page gone, and the stream ends with it.
    const socket = res.socket;
    // What a page that does not read costs is bounded here (behind): its connection is not
    // reset for it as an unread answer's would be (https-unread.ts).
    if (socket !== null) carriesStream(socket);
    // The stream is forgotten as it ends, not at the response's 'close': that comes only once
    // the kernel has taken the last bytes, which a client that stopped reading before it
    // half-closed never does. Kept until then, the stream had its next event written after its
    // end, and its session's end written again: an error nothing listened for, which ended the
    // daemon.
    const gone = (): void => {
      this.drop(stream);
      res.end();
    };
    res.on('close', () => {
      socket?.off('end', gone);
      this.drop(stream);
    });
    // A write that fails (the connection reset under it) ends the stream; an error no listener
    // takes would be thrown out of the event loop and end the daemon.
    res.on('error', (error) => {
      this.o.logger.debug(
        { err: error, identity: session.identity },
        'status page event stream: a write failed; the stream ends',
      );
      this.drop(stream);
    });
    // Ended before it began: nothing is written after its end.
    if (socket?.readableEnded === true) {
      gone();
      return true;
    }
    socket?.once('end', gone);
    // Ticking first: a stream whose first documents cannot be read (a journal read that fails)
    // is brought up to date by the ticks once the journal reads again. Started after them, it
    // was answered, and the page said "Live", but it was never sent anything more.
    this.startTicking();
    this.send(stream, `retry: ${RETRY_MS}\n\n`);
    this.pushed('devices', () => {
      this.sendDevices(stream, this.o.views.devices(allowed));
    });
    const gateway = this.gatewayNow();
    if (gateway !== null) this.sendGateway(stream, gateway);
    this.write(stream, 'commands', '{}');
    return true;
  }

  /** Forgets a stream that ended; the ticks stop with the last one. */
  private drop(stream: Stream): void {
    this.streams.delete(stream);
    if (this.streams.size === 0) this.stopTicking();
  }

  /** Ends, at once, the streams whose sessions have ended (a reload replaced their token). */
  closeEnded(): void {
    for (const stream of this.streams) this.live(stream);
    if (this.streams.size === 0) this.stopTicking();
  }

  private settled(record: CommandRecord): void {
    if (this.streams.size === 0) return;
    const data = JSON.stringify({
      key: record.key,
      scope: record.scope,
      device: record.device,
      state: record.state,
    });
    for (const stream of this.streams) this.write(stream, 'commands', data);
    this.devicesSoon();
  }

  private devicesSoon(): void {
    if (this.streams.size === 0 || this.debounce !== null) return;
    this.debounce = setTimeout(() => {
      this.debounce = null;
      this.pushed('devices', () => {
        this.pushDevices();
      });
    }, DEVICES_DEBOUNCE_MS);
  }

  private pushDevices(): void {
    for (const stream of this.streams) {
      if (!this.live(stream)) continue;
      this.sendDevices(stream, this.o.views.devices(stream.allowed));
    }
  }

  /**
   * A push made from a timer or a stream's event, outside any request: the views read the
   * journal (the keys in flight, the open commands), and a read that fails (a damaged page, an
   * I/O error) thrown there escaped every handler, and Node ended the daemon on it. Said once
   * (error) until a push succeeds again; the page shows what it had, and the next push or tick
   * brings it up to date.
   */
  private pushed(what: string, push: () => void): void {
    try {
      push();
      this.pushFailing = false;
    } catch (error) {
      if (!this.pushFailing) {
        this.o.logger.error(
          { err: error },
          `status page: ${what} not pushed (a read failed); tried again at the next change`,
        );
      }
      this.pushFailing = true;
    }
  }

  private startTicking(): void {
    if (this.tick !== null) return;
    this.tick = setInterval(() => {
      try {
        this.onTick();
      } catch (error) {
        this.o.logger.error({ err: error }, 'status page event tick failed');
      }
    }, TICK_MS);
    this.tick.unref();
  }

  private stopTicking(): void {
    if (this.tick !== null) clearInterval(this.tick);
    this.tick = null;
    if (this.debounce !== null) clearTimeout(this.debounce);
    this.debounce = null;
  }

  private onTick(): void {
    // A command accepted or dispatched shows as a device's queue or command in flight; a
    // device that stops moving changes why its command is still open.
    const lanes = JSON.stringify([
      this.o.pipeline.devices().map((d) => [d.id, d.queued, d.inFlight, d.unresolved]),
      this.o.views.stalledDevices(),
    ]);
    const lanesChanged = lanes !== this.lanes;
    this.lanes = lanes;
    // A journal read: one that fails costs the gateway band alone. It cost the whole tick —
    // the devices (their connectivity, which no mirror change pushes), the heartbeat, the
    // sessions kept alive, the peer check — logged at every tick.
    const gateway = this.gatewayNow();
    // A dispatch changes no lane (the command was in flight from its take), and a command
    // crossing its stuck bound changes nothing but the count: both change what the page's lists
    // say of it, and the page fetches them only on a cue.
    // The journal's failing and its return change every open command's why.
    const counts =
      gateway === null
        ? this.counts
        : JSON.stringify([gateway.commands, gateway.journal.unavailable]);
    const cue = lanesChanged || counts !== this.counts;
    this.counts = counts;
    const mono = this.o.clock.elapsed();
    const heartbeat = mono - this.lastHeartbeatMono >= this.bounds.heartbeatMs;
    if (heartbeat) this.lastHeartbeatMono = mono;
    for (const stream of this.streams) {
      if (!this.live(stream)) continue;
      // Devices are sent when they changed; the stall judgement and connectivity change with
      // time alone, so they are looked at every tick.
      this.pushed('devices', () => {
        this.sendDevices(stream, this.o.views.devices(stream.allowed));
      });
      if (gateway !== null) this.sendGateway(stream, gateway);
      if (cue) this.write(stream, 'commands', '{}');
      // A stream that is behind is not idle: its connection has bytes to carry already.
      if (heartbeat) this.send(stream, ': keep-alive\n\n');
    }
    if (mono - this.lastPeerCheckMono >= this.bounds.peerCheckMs && !this.checkingPeers) {
      this.lastPeerCheckMono = mono;
      this.checkingPeers = true;
      this.checkPeers()
        .catch((error: unknown) => {
          this.o.logger.error({ err: error }, 'status page event streams: peer check failed');
        })
        .finally(() => {
          this.checkingPeers = false;
        });
    }
  }

  /**
   * The gateway document, or null when a read for it failed (the open commands are counted
   * from the journal): said once (error), and its return (info).
   */
  private gatewayNow(): UiGateway | null {
    try {
      const gateway = this.o.views.gateway();
      if (this.gatewayFailing) {
        this.gatewayFailing = false;
        this.o.logger.info({}, 'status page: the gateway band is read again');
      }
      return gateway;
    } catch (error) {
      if (!this.gatewayFailing) {
        this.o.logger.error(
          { err: error },
          'status page: the gateway band cannot be read (a read failed); its pages keep the last one, and their devices and commands go on; tried again every second',
        );
      }
      this.gatewayFailing = true;
      return null;
    }
  }

  /** Frees the streams whose clients have acknowledged nothing for peerSilentMs. */
  private async checkPeers(): Promise<void> {
    const peers = await readTcpPeers();
    // Not Linux: nothing to go by; such a stream lasts until TCP gives up, as before.
    if (peers === null) return;
    const mono = this.o.clock.elapsed();
    for (const stream of this.streams) {
      const peer = stream.connection === null ? undefined : peers.get(stream.connection);
      if (peer?.silent !== true) {
        stream.silentSince = null;
        continue;
      }
      stream.silentSince ??= mono;
      if (mono - stream.silentSince < this.bounds.peerSilentMs) continue;
      const socket = stream.res.socket;
      this.o.logger.info(
        {
          identity: stream.session.identity,
          ip: socket?.remoteAddress,
          unacknowledgedBytes: peer.unacknowledgedBytes,
          silentMs: Math.round(mono - stream.silentSince),
        },
        'status page event stream freed: its client acknowledges nothing (network gone)',
      );
      this.streams.delete(stream);
      // Reset, not closed: a FIN would wait behind the unacknowledged bytes, retransmitted to
      // nobody until TCP gives up, the socket's buffers held meanwhile.
      if (socket === null) stream.res.destroy();
      else resetConnection(socket);
    }
    if (this.streams.size === 0) this.stopTicking();
  }

  /** The stream's session is still live (kept so while the page listens); else it ends. */
  private live(stream: Stream): boolean {
    if (this.o.sessions.alive(stream.session)) {
      this.o.sessions.touch(stream.session);
      return true;
    }
    // Written even when the stream is behind: the page must learn why the stream ends, and
    // nothing follows it.
    if (!stream.res.writableEnded) {
      stream.res.write(`event: session\ndata: ${JSON.stringify({ ended: true })}\n\n`);
      stream.res.end();
    }
    this.streams.delete(stream);
    return false;
  }

  private sendDevices(stream: Stream, devices: readonly UiDevice[]): void {
    // Readback ages change at every read; the page ages them itself between events.
    const signature = JSON.stringify(devices.map(withoutAges));
    if (signature === stream.lastDevices) return;
    // Held back while behind: the signature stays the last one sent, so the devices are sent
    // when the stream drains if they differ from it then.
    if (this.write(stream, 'devices', JSON.stringify({ devices }))) stream.lastDevices = signature;
  }

  private sendGateway(stream: Stream, gateway: UiGateway): void {
    const signature = JSON.stringify({
      ...gateway,
      now: null,
      clock: { ...gateway.clock, checkedAt: null },
    });
    if (signature === stream.lastGateway) return;
    if (this.write(stream, 'gateway', JSON.stringify(gateway))) stream.lastGateway = signature;
  }

  /** Queues an event on the stream; false when it was held back (the stream is behind). */
  private write(stream: Stream, event: string, data: string): boolean {
    // JSON has no raw newlines, so each event is one `data:` line.
    const sent = this.send(stream, `event: ${event}\ndata: ${data}\n\n`);
    if (!sent && event === 'commands') stream.commandsHeld = true;
    return sent;
  }

  /** Writes unless the stream is behind; a refused write puts it behind until it drains. */
  private send(stream: Stream, text: string): boolean {
    if (stream.behind || stream.res.writableEnded) return false;
    if (!stream.res.write(text)) {
      stream.behind = true;
      stream.res.once('drain', () => {
        this.pushed('a drained stream', () => {
          this.caughtUp(stream);
        });
      });
    }
    return true;
  }

  /** A stream that was behind has drained: it gets what changed while it was. */
  private caughtUp(stream: Stream): void {
    stream.behind = false;
    if (!this.streams.has(stream) || !this.live(stream)) return;
    this.sendDevices(stream, this.o.views.devices(stream.allowed));
    const gateway = this.gatewayNow();
    if (gateway !== null) this.sendGateway(stream, gateway);
    if (stream.commandsHeld && this.write(stream, 'commands', '{}')) stream.commandsHeld = false;
  }

  /** Ends every stream and lets go of the pipeline (the intake is stopping). */
  close(): void {
    this.stopTicking();
    for (const off of this.unsubscribe.splice(0)) off();
    for (const stream of this.streams) stream.res.end();
    this.streams.clear();
  }
}

function withoutAges(d: UiDevice): unknown {
  return {
    ...d,
    readbackAgeMs: null,
    imageUnchangedMs: null,
    mirror: d.mirror === null ? null : { ...d.mirror, readAt: null, sourceTime: null },
    connectivity: { ...d.connectivity, lastGoodReadAt: null },
    // Whether its age can be told is kept (a clock set back, or caught up, is sent at once):
    // how far ahead it lies is an age the page counts down itself.
    command:
      d.command === null
        ? null
        : {
            ...d.command,
            ageMs: null,
            acceptedAheadMs: d.command.acceptedAheadMs === null ? null : 0,
            pastDeadlineMs: null,
          },
    stalled: d.stalled === null ? null : { ...d.stalled, forMs: null },
    frozen: d.frozen === null ? null : { ...d.frozen, forMs: null },
  };
}
