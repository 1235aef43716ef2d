import { createRequire } from 'node:module';
import type { Logger as PinoLogger } from 'pino';

/**
 * The service manager's notification protocol (sd_notify(3)): READY=1 once the daemon serves,
 * WATCHDOG=1 from the event loop at half of WATCHDOG_USEC, EXTEND_TIMEOUT_USEC= while a long
 * start makes progress, RELOADING=1 and READY=1 around a reload (SIGHUP), STOPPING=1 when a
 * stop begins, and a STATUS= line for `systemctl status`. Without NOTIFY_SOCKET it is silent
 * and loads nothing.
 *
 * Why the native module unix-dgram: Node's dgram has no AF_UNIX datagram sockets. The other
 * way, running `systemd-notify` (systemd-notify(1)), sends from a child: without privileges
 * it cannot claim its parent's PID and sends under its own, so the unit would need
 * NotifyAccess=all (any process of the unit could then report readiness or feed the
 * watchdog); it must wait for PID 1 to take each message, since one from a process that has
 * exited may not be attributed to the unit (`--no-block` risks exactly that); and it would
 * spawn a process for every watchdog ping. unix-dgram sends from the daemon's own process,
 * so systemd attributes every message to the main PID and the unit keeps NotifyAccess=main;
 * it builds with node-gyp, as better-sqlite3 does, and is the module zigbee2mqtt's and
 * hot-shots' notifications use.
 * Its sendto passes the whole sockaddr_un, so an abstract address (`@name`) never reaches its
 * peer: such a NOTIFY_SOCKET is reported once and not used. systemd gives services a path
 * (`/run/systemd/notify`).
 */
export interface ServiceNotifier {
  /** READY=1 with a status line: the intakes listen and recovery is done. */
  ready(status: string): void;
  /** A new status line alone (`systemctl status`), after READY: what changed since. */
  status(status: string): void;
  /**
   * EXTEND_TIMEOUT_USEC= with a status line, before READY: the start goes on, and systemd is to
   * wait `ms` more from now, past TimeoutStartSec= if need be (sd_notify(3); systemd 236). Sent
   * only while a long phase of the start shows progress (start-progress.ts).
   */
  extendStart(ms: number, status: string): void;
  /**
   * RELOADING=1 with the monotonic time it began (MONOTONIC_USEC=, which systemd 253 and later
   * ask for) and a status line: a reload (SIGHUP) has begun; `ready()` says it is done. Only
   * after READY: before it, READY=1 would claim a start that is not finished.
   */
  reloading(status: string): void;
  /** STOPPING=1 with a status line: a graceful stop has begun. */
  stopping(status: string): void;
  /**
   * Holds the watchdog pings until the function it returns is called, which sends one at once
   * and lets them go on. A WATCHDOG=1 sets systemd's watchdog deadline to WatchdogSec= from it
   * (service_reset_watchdog), earlier than the end of a longer extension: a step that holds the
   * event loop under an extension of its bound (start-progress.ts) holds the pings from that
   * extension on, or one sent in the turns before the loop is held would leave it WatchdogSec=.
   */
  holdPings(): () => void;
  /** Stops the watchdog pings and closes the socket. Idempotent. */
  close(): void;
}

/** The part of unix-dgram's socket this module uses (the package ships no types). */
interface DatagramSocket {
  send(
    buffer: Buffer,
    offset: number,
    length: number,
    path: string,
    callback: (error?: Error) => void,
  ): void;
  on(event: 'error', listener: (error: Error) => void): void;
  close(): void;
}

interface UnixDgram {
  createSocket(type: 'unix_dgram'): DatagramSocket;
}

const silent: ServiceNotifier = {
  ready: () => undefined,
  status: () => undefined,
  extendStart: () => undefined,
  reloading: () => undefined,
  stopping: () => undefined,
  holdPings: () => () => undefined,
  close: () => undefined,
};

/**
 * The watchdog period systemd asks for (sd_watchdog_enabled(3)): WATCHDOG_USEC, for this
 * process only when WATCHDOG_PID names it. Null when there is no watchdog.
 */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv, pid = process.pid): number | null {
  const usec = Number(env.WATCHDOG_USEC ?? '');
  if (!Number.isFinite(usec) || usec <= 0) return null;
  if (env.WATCHDOG_PID !== undefined && env.WATCHDOG_PID !== '') {
    if (Number(env.WATCHDOG_PID) !== pid) return null;
  }
  // Pinging at half the timeout leaves a whole half for a busy event loop (sd_notify(3)).
  return Math.max(1, Math.floor(usec / 2_000));
}

/** One line: STATUS= ends at the first newline. */
function statusLine(text: string): string {
  return text.replace(/[\r\n]+/g, ' ').slice(0, 512);
}

/** The first pause before a notification is sent again into a full socket, and the longest. */
const CONGESTED_RETRY_MS = 20;
const CONGESTED_RETRY_MAX_MS = 1_000;

/**
 * A send refused because the socket's queue is full: EAGAIN (the socket does not block), ENOBUFS,
 * or unix-dgram's own word for it.
 */
function congested(error: Error): boolean {
  const errno = (error as { errno?: unknown }).errno;
  return error.message === 'congestion' || errno === -11 || errno === -105;
}

/**
 * The notifier for this process's environment: silent without NOTIFY_SOCKET, else unix-dgram
 * to that socket, with watchdog pings from a timer on the event loop (a loop that stops
 * turning stops them, and systemd restarts the service after WatchdogSec=).
 */
export function serviceNotifier(env: NodeJS.ProcessEnv, logger: PinoLogger): ServiceNotifier {
  const path = env.NOTIFY_SOCKET;
  if (path === undefined || path === '') return silent;
  const log = logger.child({ notifySocket: path });
  if (path.startsWith('@')) {
    log.warn(
      {},
      'NOTIFY_SOCKET is an abstract socket, which this build cannot address: no readiness or watchdog notification',
    );
    return silent;
  }
  let socket: DatagramSocket;
  try {
    const unixDgram = createRequire(import.meta.url)('unix-dgram') as UnixDgram;
    socket = unixDgram.createSocket('unix_dgram');
  } catch (error) {
    log.error({ err: error }, 'cannot open the notification socket: no readiness or watchdog');
    return silent;
  }
  socket.on('error', (error) => {
    log.warn({ err: error }, 'service notification failed');
  });
  let closed = false;
  const warned = new Set<string>();
  const warn = (message: string, error: Error): void => {
    // Once per kind of failure and message: a dead socket must not flood the log at every
    // watchdog ping.
    const what = `${message.split('=')[0] ?? ''}:${error.message}`;
    if (warned.has(what)) return;
    warned.add(what);
    log.warn({ err: error, notification: message.split('\n')[0] }, 'service notification failed');
  };
  // unix-dgram answers synchronously: the error of this send, or null once it is sent.
  const sendNow = (message: string): Error | null => {
    const buffer = Buffer.from(message, 'utf8');
    let failed: Error | null = null;
    socket.send(buffer, 0, buffer.length, path, (error) => {
      if (error !== undefined) failed = error;
    });
    return failed;
  };
  // The notifications that change what systemd knows (READY, STOPPING, RELOADING, the start's
  // extensions, the status line) held, in order, while the socket is full: its sends do not
  // block (EAGAIN), and PID 1 busy at boot or during a daemon-reload lets its queue fill. Sent
  // once, lost, READY=1 never came and systemd killed the start at TimeoutStartSec= (libsystemd's
  // sd_notify blocks instead). Tried again after a pause, doubled each time up to a second.
  const held: string[] = [];
  let retry: NodeJS.Timeout | null = null;
  let retryMs = CONGESTED_RETRY_MS;
  const sendHeld = (): void => {
    retry = null;
    while (!closed && held.length > 0) {
      const message = held[0] as string;
      const error = sendNow(message);
      if (error !== null && congested(error)) {
        retry = setTimeout(sendHeld, retryMs);
        retry.unref();
        retryMs = Math.min(2 * retryMs, CONGESTED_RETRY_MAX_MS);
        return;
      }
      held.shift();
      retryMs = CONGESTED_RETRY_MS;
      if (error !== null) warn(message, error);
    }
  };
  /** `hold`: kept until sent while the socket is full (a watchdog ping is not: the next comes). */
  const send = (message: string, hold = true): void => {
    if (closed) return;
    // The lines logged so far are written first: the daemon's logger writes a turn's lines at
    // the turn's end (log.ts), and READY, RELOADING or STOPPING sent in the middle of a turn
    // would otherwise reach systemd before the lines that led to it (journald showed a start's
    // last lines after "Started").
    log.flush();
    if (hold && held.length > 0) {
      held.push(message);
      return;
    }
    const error = sendNow(message);
    if (error === null) return;
    if (hold && congested(error)) {
      held.push(message);
      if (retry === null) {
        retry = setTimeout(sendHeld, retryMs);
        retry.unref();
      }
      log.warn(
        { notification: message.split('\n')[0] },
        'the service manager is not reading its notification socket: the notification is sent once it does',
      );
      return;
    }
    warn(message, error);
  };
  const intervalMs = watchdogIntervalMs(env);
  let timer: NodeJS.Timeout | null = null;
  /** Holds of the pings not yet released (holdPings). */
  let pingHolds = 0;
  if (intervalMs !== null) {
    send('WATCHDOG=1', false);
    timer = setInterval(() => {
      if (pingHolds === 0) send('WATCHDOG=1', false);
    }, intervalMs);
    // The pings keep nothing alive: the daemon's own work decides when the process ends.
    timer.unref();
    log.info({ watchdogIntervalMs: intervalMs }, 'watchdog pings started');
  }
  return {
    ready: (status) => {
      send(`READY=1\nSTATUS=${statusLine(status)}`);
    },
    status: (status) => {
      send(`STATUS=${statusLine(status)}`);
    },
    extendStart: (ms, status) => {
      send(`EXTEND_TIMEOUT_USEC=${Math.ceil(ms * 1000)}\nSTATUS=${statusLine(status)}`);
    },
    reloading: (status) => {
      // CLOCK_MONOTONIC, as systemd reads it: libuv's hrtime is that clock on Linux.
      const usec = process.hrtime.bigint() / 1_000n;
      send(`RELOADING=1\nMONOTONIC_USEC=${usec}\nSTATUS=${statusLine(status)}`);
    },
    stopping: (status) => {
      send(`STOPPING=1\nSTATUS=${statusLine(status)}`);
    },
    holdPings: () => {
      pingHolds += 1;
      let released = false;
      return () => {
        if (released) return;
        released = true;
        pingHolds -= 1;
        if (pingHolds === 0 && timer !== null) send('WATCHDOG=1', false);
      };
    },
    close: () => {
      if (closed) return;
      closed = true;
      if (timer !== null) clearInterval(timer);
      if (retry !== null) clearTimeout(retry);
      if (held.length > 0) {
        log.warn(
          { notifications: held.map((m) => m.split('\n')[0]) },
          'the service manager never read these notifications: not sent',
        );
      }
      try {
        socket.close();
      } catch (error) {
        log.warn({ err: error }, 'closing the notification socket failed');
      }
    },
  };
}
