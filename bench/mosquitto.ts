import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import { createConnection } from 'node:net';
import { join } from 'node:path';
import { freePort } from './site.js';

/**
 * A real Mosquitto for the bench: loopback only, anonymous, in memory, logging errors only (a
 * broker that logs every message would be measured instead of the bridge), and with
 * TCP_NODELAY on its client sockets (set_tcp_nodelay): with Nagle's algorithm a small message
 * written while an earlier one is unacknowledged waits for the peer's delayed ACK, up to
 * 40 ms, which would be the broker's latency, not the bridge's.
 */

export interface Broker {
  readonly url: string;
  readonly pid: number;
  stop(): Promise<void>;
}

export function mosquittoPath(): string | null {
  try {
    return execFileSync('sh', ['-c', 'command -v mosquitto'], { encoding: 'utf8' }).trim() || null;
  } catch {
    return null;
  }
}

function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host: '127.0.0.1', port });
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => {
      socket.destroy();
      resolve(false);
    });
  });
}

export async function startBroker(binary: string, dir: string, logFile: string): Promise<Broker> {
  const port = await freePort();
  const conf = join(dir, 'mosquitto.conf');
  const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  writeFileSync(
    conf,
    [
      `listener ${port} 127.0.0.1`,
      'allow_anonymous true',
      'persistence false',
      'set_tcp_nodelay true',
      `log_dest file ${logFile}`,
      'log_type error',
      'log_type warning',
      // As root mosquitto would switch to the `mosquitto` user, who cannot read the run folder.
      ...(isRoot ? ['user root'] : []),
      '',
    ].join('\n'),
  );
  const proc: ChildProcess = spawn(binary, ['-c', conf], { stdio: 'ignore' });
  const status = { exited: false };
  const exit = new Promise<void>((resolve) => {
    proc.once('exit', () => {
      status.exited = true;
      resolve();
    });
  });
  const end = Date.now() + 10_000;
  while (!(await accepts(port))) {
    if (status.exited) throw new Error(`mosquitto exited at start; see ${logFile}`);
    if (Date.now() > end) {
      proc.kill('SIGKILL');
      throw new Error(`mosquitto did not listen on ${port} within 10 s; see ${logFile}`);
    }
    await new Promise((r) => setTimeout(r, 25));
  }
  return {
    url: `mqtt://127.0.0.1:${port}`,
    pid: proc.pid ?? -1,
    stop: async () => {
      if (status.exited) return;
      proc.kill('SIGTERM');
      const timer = setTimeout(() => proc.kill('SIGKILL'), 5_000);
      await exit;
      clearTimeout(timer);
    },
  };
}
