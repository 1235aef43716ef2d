import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { createInterface } from 'node:readline';
import { SLUICED, cleanEnv } from '../config/sluiced.js';
import { until } from './mosquitto.js';

/**
 * systemd's side of sd_notify for tests: a Unix datagram socket bound by python3 (Node's dgram
 * has none), receiving as PID 1 does, with the sender's credentials (SCM_CREDENTIALS), and the
 * real `sluiced` started from source with NOTIFY_SOCKET pointing at it.
 */

// Prints one JSON line per datagram: receive time (ms since the epoch), sender PID, text, and
// the size of the file named by the second argument, if any, at the datagram's receipt. With a
// third argument, receives nothing until that file exists (a manager too busy to read).
const LISTENER = `
import json, os, socket, struct, sys, time
watched = sys.argv[2] if len(sys.argv) > 2 and sys.argv[2] != "" else None
gate = sys.argv[3] if len(sys.argv) > 3 else None
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
s.bind(sys.argv[1])
print(json.dumps({"bound": True}), flush=True)
while gate is not None and not os.path.exists(gate):
    time.sleep(0.01)
while True:
    data, ancillary, _flags, _addr = s.recvmsg(4096, socket.CMSG_SPACE(12))
    pid = None
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
            pid = struct.unpack("iII", payload[:12])[0]
    size = os.path.getsize(watched) if watched is not None and os.path.exists(watched) else None
    print(json.dumps({"at": time.time() * 1000, "pid": pid, "text": data.decode(), "watchedBytes": size}), flush=True)
`;

export interface Datagram {
  readonly at: number;
  readonly pid: number | null;
  readonly text: string;
  /**
   * The size of the socket's watched file when the datagram was received (null without one):
   * with the daemon's stdout in that file, what it had written before it sent the datagram.
   */
  readonly watchedBytes: number | null;
}

export interface NotifySocket {
  readonly path: string;
  /** Every datagram received so far, in order. */
  readonly datagrams: Datagram[];
  close(): void;
}

/**
 * Binds the socket at `path` and resolves once it is bound (within 10 s). With `watched`, each
 * datagram carries that file's size at its receipt (Datagram.watchedBytes). With `gate`, nothing
 * is received until that file exists: the socket's queue fills, as PID 1's does while it is busy.
 */
export async function bindNotifySocket(
  path: string,
  watched?: string,
  gate?: string,
): Promise<NotifySocket> {
  const args = [
    '-u',
    '-c',
    LISTENER,
    path,
    ...(watched === undefined && gate === undefined ? [] : [watched ?? '']),
    ...(gate === undefined ? [] : [gate]),
  ];
  const listener: ChildProcess = spawn('python3', args, {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const datagrams: Datagram[] = [];
  let bound = false;
  createInterface({ input: listener.stdout! }).on('line', (line) => {
    const entry = JSON.parse(line) as Partial<Datagram> & { bound?: boolean };
    if (entry.bound === true) bound = true;
    else datagrams.push(entry as Datagram);
  });
  await until(() => (bound ? true : undefined), 10_000, 'the notify socket bound');
  return {
    path,
    datagrams,
    close: () => {
      listener.kill('SIGTERM');
    },
  };
}

export interface NotifiedSluiced {
  readonly child: ChildProcess;
  /** Its stdout and stderr so far (for failure messages). */
  output(): string;
}

/**
 * The real `sluiced` (as test/config/sluiced.ts starts it) on `configPath`, with
 * NOTIFY_SOCKET set to the socket, `env` added and `args` after the configuration; the SLUICE_*
 * overrides of a developer's shell are left out. With `stdoutPath`, its stdout is that file, as
 * journald's stream is a descriptor of its own: what it wrote before a datagram is in the file
 * when the datagram arrives (a pipe read by this process gives no such order).
 */
export function spawnNotifiedSluiced(
  configPath: string,
  socket: NotifySocket,
  env: Record<string, string> = {},
  args: readonly string[] = [],
  stdoutPath?: string,
): NotifiedSluiced {
  const fd = stdoutPath === undefined ? null : openSync(stdoutPath, 'w');
  const child = spawn(process.execPath, [...SLUICED, '--config', configPath, ...args], {
    env: { ...cleanEnv(), ...env, NOTIFY_SOCKET: socket.path },
    stdio: ['ignore', fd ?? 'pipe', 'pipe'],
  });
  if (fd !== null) closeSync(fd);
  let out = '';
  child.stdout?.on('data', (c: Buffer) => (out += c.toString('utf8')));
  child.stderr!.on('data', (c: Buffer) => (out += c.toString('utf8')));
  return {
    child,
    output: () => (stdoutPath === undefined ? out : readFileSync(stdoutPath, 'utf8') + out),
  };
}
