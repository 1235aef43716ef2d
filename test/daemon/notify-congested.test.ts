import { createRequire } from 'node:module';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterEach, expect, it } from 'vitest';
import { serviceNotifier } from '../../src/daemon/notify.js';
import { tempDir } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';
import { bindNotifySocket, type NotifySocket } from '../helpers/notify-socket.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * READY=1 sent while the service manager is not reading its notification socket (PID 1 busy at
 * boot or in a daemon-reload) and the socket's queue is full: the send does not block (EAGAIN),
 * and sent once, READY was lost — systemd then killed the start at TimeoutStartSec= and
 * recovery ran again. The notifier holds it, and what follows it, and sends them in order once
 * the manager reads again. A watchdog ping is not held (the next one comes).
 *
 * The real notifier and unix-dgram socket; the manager's side bound by python3 as PID 1 binds
 * it, told to read nothing until a gate file exists; the queue filled by another sender's
 * datagrams, as other services' fill PID 1's.
 */

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');

const { dir, cleanup } = tempDir('sluice-notify-full-');
const cleanups: (() => void)[] = [];
afterEach(() => {
  for (const c of cleanups.splice(0)) c();
});
cleanups.push(cleanup);

interface Sender {
  send(buf: Buffer, offset: number, length: number, path: string, cb: (e?: Error) => void): void;
  close(): void;
}

it.runIf(python)(
  'READY=1 and STOPPING=1 into a full socket are sent, in order, once the manager reads again',
  async () => {
    const path = join(dir, 'notify.sock');
    const gate = join(dir, 'reading');
    const socket: NotifySocket = await bindNotifySocket(path, undefined, gate);
    cleanups.push(() => {
      socket.close();
    });
    // Another service's datagrams until the queue takes no more.
    const unixDgram = createRequire(import.meta.url)('unix-dgram') as {
      createSocket(type: 'unix_dgram'): Sender;
    };
    const other = unixDgram.createSocket('unix_dgram');
    cleanups.push(() => {
      other.close();
    });
    // unix-dgram answers a send synchronously: true when the datagram was queued.
    const queued = (): boolean => {
      const b = Buffer.from('STATUS=another service');
      let sent = false;
      other.send(b, 0, b.length, path, (e) => {
        sent = e === undefined;
      });
      return sent;
    };
    let filled = 0;
    while (filled < 100_000 && queued()) filled++;
    expect(filled).toBeGreaterThan(0);
    const { logger, lines } = recordingLogger();
    const notifier = serviceNotifier({ NOTIFY_SOCKET: path }, logger);
    cleanups.push(() => {
      notifier.close();
    });
    notifier.ready('ready: test');
    notifier.stopping('stopping: test');
    // The manager reads again: the other service's datagrams, then READY, then STOPPING.
    writeFileSync(gate, '');
    const ours = (): string[] =>
      socket.datagrams
        .map((d) => d.text.split('\n')[0] ?? '')
        .filter((t) => !t.includes('another'));
    await until(() => (ours().length >= 2 ? true : undefined), 10_000, 'READY and STOPPING');
    expect(ours()).toEqual(['READY=1', 'STOPPING=1']);
    // And the wait was said.
    expect(
      lines.some((l) => String(l.msg).includes('is not reading its notification socket')),
    ).toBe(true);
  },
  30_000,
);
