import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { readFileSync } from 'node:fs';
import { connect as tcpConnect } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { HttpsTimeouts } from '../../src/intake/https-server.js';
import { kernelCheckMs } from '../../src/intake/https-unread.js';
import { startStack, TOKENS, type Stack } from '../helpers/stack.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { call, makePki, startIntake, until, type Pki, type RunningIntake } from './https-client.js';

/**
 * A client that sends requests and never reads their answers, its sending side half-closed
 * (a FIN) or not: the intake closes its connection once an answer has waited the request
 * timeout to be taken (https-unread.ts boundAnswers). Node bounds a request coming in and
 * an idle connection, not an answer going out, and such a client held its connection and
 * megabytes of answers in the socket buffers for as long as it kept it. On the real intake over
 * real sockets, with sluice-sim and the SQLite journal under it; ground truth is the kernel's
 * table of TCP connections (/proc/net/tcp): the server's end of the connection gone from it. The
 * connection is reset, not closed: closed with a FIN, it stayed in the table in FIN-WAIT-1 (or
 * LAST-ACK after the client's FIN) with the unread answers queued, for minutes, since the client
 * never opens its window.
 */

/** Shortened, so that the test waits seconds; the same code enforces the default (30 s). */
const TIMEOUTS: HttpsTimeouts = { handshakeMs: 2_000, firstRequestMs: 2_000, requestMs: 1_500 };
/** Enough answers of GET /metrics to fill the socket buffers of a loopback connection. */
const PIPELINED = 400;
/**
 * How long the server may take to make and write those answers until the client's window
 * closes: under a second alone, 3 to 7 s seen beside busy loops at a load of ~13 (the test's
 * client, the intake and its metrics in one process).
 */
const STALL_WAIT_MS = 30_000;
/** How late a timer of the intake may run on a loaded machine, beyond its bound. */
const TIMER_LATENESS_MS = 2_000;

let stack: Stack;
let pki: Pki;
let api: RunningIntake;
const opened: TLSSocket[] = [];
const clients: ChildProcess[] = [];

beforeAll(async () => {
  pki = await makePki();
  stack = await startStack({ opcua: false });
  api = await startIntake(stack, pki, { timeouts: TIMEOUTS });
});

afterAll(async () => {
  for (const s of opened) s.destroy();
  for (const c of clients) c.kill('SIGKILL');
  await api.stop();
  await stack.stop();
  pki.cleanup();
});

/**
 * The server's end of the connection as /proc/net/tcp gives it: its state (hex) and the bytes
 * queued to send, e.g. `04 tx=2949120` (FIN-WAIT-1 with its answers still queued), and
 * ` window-closed` when bytes wait for room in the client's window (the zero-window probe timer).
 */
function serverEnd(serverPort: number, clientPort: number): string[] {
  const hex = (port: number): string => port.toString(16).toUpperCase().padStart(4, '0');
  const ends: string[] = [];
  for (const line of readFileSync('/proc/net/tcp', 'utf8').split('\n').slice(1)) {
    const [, local, remote, state, queues, timer] = line.trim().split(/\s+/);
    if (local?.endsWith(`:${hex(serverPort)}`) && remote?.endsWith(`:${hex(clientPort)}`)) {
      const tx = parseInt(queues!.split(':')[0]!, 16);
      const probing = tx > 0 && timer!.startsWith('04:');
      ends.push(`${state!} tx=${String(tx)}${probing ? ' window-closed' : ''}`);
    }
  }
  return ends;
}

/** ESTABLISHED and CLOSE_WAIT (the client's FIN received): the server still holds it. */
const HELD = new Set(['01', '08']);
const held = (end: string): boolean => HELD.has(end.slice(0, 2));

async function idleClosedUnread(): Promise<number> {
  const metric = await stack.metrics.httpsConnectionsIdleClosed.get();
  return metric.values.find((v) => v.labels.stage === 'answer_unread')?.value ?? 0;
}

describe('a client that never reads its answers', () => {
  for (const halfClosed of [false, true]) {
    it(`${halfClosed ? 'half-closed after its requests' : 'its connection left open'}: reset once an answer has waited the request timeout (gone from the kernel's table), and counted`, async () => {
      const before = await idleClosedUnread();
      const tcp = tcpConnect({ host: '127.0.0.1', port: api.port });
      tcp.on('error', () => undefined);
      const tls = connect({ socket: tcp, ca: api.ca, servername: 'localhost' });
      opened.push(tls);
      tls.on('error', () => undefined);
      await once(tls, 'secureConnect');
      const clientPort = tcp.localPort!;
      try {
        // Reads nothing from now on: the kernel's window fills, then the server's send buffer.
        tls.pause();
        const request = `GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${TOKENS.ops}\r\n\r\n`;
        const sentAt = Date.now();
        tls.write(request.repeat(PIPELINED));
        if (halfClosed) tls.end();
        // The server makes and writes its answers (megabytes) until the client's window closes:
        // seconds on a loaded machine, before any bound of the intake can start.
        const stall: { at?: number } = {};
        await until(
          () => {
            const ends = serverEnd(api.port, clientPort);
            if (ends.some((end) => held(end) && end.endsWith(' window-closed'))) {
              stall.at = Date.now();
              return true;
            }
            return !ends.some(held);
          },
          STALL_WAIT_MS,
          "the client's window to close with answers queued",
        );
        // Reset within the request timeout of the window's closing and two looks at the kernel
        // (boundUnreadInKernel), or earlier (boundAnswers), never before an answer waited it.
        let last: string[] = [];
        if (stall.at !== undefined) {
          await until(
            () => !(last = serverEnd(api.port, clientPort)).some(held),
            TIMEOUTS.requestMs + 2 * kernelCheckMs(TIMEOUTS.requestMs) + TIMER_LATENESS_MS,
            "the server's end of the connection to close",
          ).catch((error: unknown) => {
            throw new Error(`${String(error)}; it is ${JSON.stringify(last)}`);
          });
        }
        expect(Date.now() - sentAt).toBeGreaterThanOrEqual(TIMEOUTS.requestMs - 500);
        // Reset: gone from the kernel's table with what it had queued, not left in FIN-WAIT-1 or
        // LAST-ACK behind the answers the client does not read.
        await until(
          () => (last = serverEnd(api.port, clientPort)).length === 0,
          2_000,
          "the server's end of the connection to leave the kernel's table",
        ).catch((error: unknown) => {
          throw new Error(`${String(error)}; it is ${JSON.stringify(last)}`);
        });
        expect(await idleClosedUnread()).toBe(before + 1);
      } finally {
        // Failed, its connection is not left to be reset (and counted) during the next case.
        tls.destroy();
        await until(
          () => serverEnd(api.port, clientPort).length === 0,
          5_000,
          "the server's end of the connection to leave the kernel's table",
        );
      }
    }, 60_000);
  }
});

/**
 * A client that sends a few requests now and then and never reads, in a process of its own that
 * is stopped (SIGSTOP: a hung client, whose kernel still acknowledges what fits in its receive
 * buffer and then closes its window). Its answers fit in the kernel's buffers, so Node writes
 * every one of them out and boundAnswers never sees one waiting; the kernel holds the rest of
 * them for a window that never opens. Without a bound on that, the connection stayed
 * ESTABLISHED, its answers queued, until the keep-alive timeout (72 s; for as long as the client
 * sent a request now and then), and then in FIN-WAIT-1 behind them for minutes.
 *
 * The client is python3's socket and ssl: its receive buffer is fixed (SO_RCVBUF, set before it
 * connects, which the kernel doubles and then no longer tunes), and it reads nothing after the
 * handshake, so that the answers it is sent (hungClientCount) always exceed what its kernel
 * takes and fit, by far, in the server's send buffer (megabytes on loopback): the kernel holds
 * answers for it whatever the machine's load and buffer settings. Told to half-close (a line on
 * its stdin), it shuts its sending side down: a FIN alone, which the server reads as the end of
 * the requests only once its kernel has taken it (CLOSE-WAIT), so that the server's own FIN,
 * after the last answer, leaves its end in LAST-ACK. Node's TLS client sent TLS's close_notify
 * and then the FIN: on a loaded machine the server read the close_notify, ended its side before
 * the FIN came and was in CLOSING instead (reproduced: 3 of 40 runs beside two busy loops).
 */
const HUNG_CLIENT = `
import os, socket, ssl, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, int(os.environ['RCVBUF']))
s.connect(('127.0.0.1', int(os.environ['PORT'])))
tls = ssl.create_default_context(cadata=os.environ['CA']).wrap_socket(s, server_hostname='localhost')
request = 'GET /metrics HTTP/1.1\\r\\nHost: localhost\\r\\nAuthorization: Bearer ' + os.environ['TOKEN'] + '\\r\\n\\r\\n'
tls.sendall(request.encode() * int(os.environ['COUNT']))
print(tls.getsockname()[1], tls.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), flush=True)
sys.stdin.readline()
tls.shutdown(socket.SHUT_WR)
print('half-closed', flush=True)
while True:
    time.sleep(60)
`;

/** The hung client's receive buffer as it asks for it; the kernel doubles it. */
const HUNG_CLIENT_RCVBUF = 16_384;

const python = realComponent('python3', hasCommand('python3'), 'apt-get install python3');

/**
 * How many /metrics the hung client sends: enough that their answers come to twice the receive
 * buffer its kernel gives it (2 × HUNG_CLIENT_RCVBUF, which bounds what that kernel holds,
 * overhead included), from the size of one answer asked for now. Some 80 kB in all, where the
 * server's send buffer on loopback holds megabytes (grown at the connection's start).
 */
async function hungClientCount(): Promise<number> {
  const answer = await call(api, 'GET', '/metrics', { token: TOKENS.ops });
  expect(answer.status).toBe(200);
  return Math.ceil((2 * 2 * HUNG_CLIENT_RCVBUF) / answer.body.length);
}

interface HungClient {
  readonly process: ChildProcess;
  /** Its end's port. */
  readonly port: number;
  /** Shuts its sending side down (a FIN) and waits until it has. */
  halfClose(): Promise<void>;
}

async function startHungClient(): Promise<HungClient> {
  const count = await hungClientCount();
  const client = spawn('python3', ['-c', HUNG_CLIENT], {
    env: {
      ...process.env,
      PORT: String(api.port),
      CA: api.ca,
      TOKEN: TOKENS.ops,
      COUNT: String(count),
      RCVBUF: String(HUNG_CLIENT_RCVBUF),
    },
    stdio: ['pipe', 'pipe', 'inherit'],
  });
  clients.push(client);
  let out = '';
  client.stdout.on('data', (chunk: Buffer) => {
    out += chunk.toString('utf8');
  });
  await until(() => out.includes('\n'), 10_000, 'the client to connect');
  const [port, rcvbuf] = out.split('\n')[0]!.split(' ').map(Number);
  // The kernel keeps to the buffer asked for (doubled): the answers exceed it.
  expect(rcvbuf).toBe(2 * HUNG_CLIENT_RCVBUF);
  return {
    process: client,
    port: port!,
    halfClose: async () => {
      client.stdin.write('half-close\n');
      await until(() => out.includes('half-closed'), 10_000, 'the client to half-close');
    },
  };
}

it.runIf(python)(
  "a hung client whose answers fit in the kernel's buffers: reset once its window has stayed closed the request timeout (gone from the kernel's table), and counted",
  async () => {
    const before = await idleClosedUnread();
    const client = await startHungClient();
    // The kernel holds answers for it: sent, not acknowledged (its window closed).
    await until(
      () => serverEnd(api.port, client.port).some((end) => held(end) && !end.endsWith(' tx=0')),
      10_000,
      'the kernel to hold answers for the client',
    );
    client.process.kill('SIGSTOP');
    const stoppedAt = Date.now();
    let last: string[] = [];
    await until(
      () => (last = serverEnd(api.port, client.port)).length === 0,
      TIMEOUTS.requestMs + 10_000,
      "the server's end of the connection to leave the kernel's table",
    ).catch((error: unknown) => {
      throw new Error(`${String(error)}; it is ${JSON.stringify(last)}`);
    });
    expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(TIMEOUTS.requestMs - 500);
    expect(await idleClosedUnread()).toBe(before + 1);
  },
  30_000,
);

/**
 * The same hung client, which half-closed its connection (a FIN, after its requests) once its
 * answers were in the kernel's buffers. Node then ends the connection and closes its socket at
 * once: every answer was written out for it. Closed, the connection was no longer the daemon's
 * to bound: the kernel kept it in LAST-ACK with the unread answers queued, orphaned, for as long
 * as its orphan probes allow (about a minute and more), outside https.maxConnections and its
 * per-address bound, while a client that had not sent its FIN was reset after the request
 * timeout. Now the socket is kept until the kernel has the answers taken, under the same bound.
 */
it.runIf(python)(
  "a hung client that half-closed after its answers reached the kernel's buffers: reset once its window has stayed closed the request timeout (gone from the kernel's table), and counted",
  async () => {
    const before = await idleClosedUnread();
    const client = await startHungClient();
    await until(
      () => serverEnd(api.port, client.port).some((end) => held(end) && !end.endsWith(' tx=0')),
      10_000,
      'the kernel to hold answers for the client',
    );
    await client.halfClose();
    // The client's FIN taken, its answers queued in the kernel: LAST-ACK (09) with bytes to send.
    let seen: string[] = [];
    await until(
      () =>
        (seen = serverEnd(api.port, client.port)).some(
          (end) => end.startsWith('09') && !end.endsWith(' tx=0'),
        ),
      10_000,
      'the kernel to hold answers for the half-closed client',
    ).catch((error: unknown) => {
      throw new Error(`${String(error)}; the server's end was ${JSON.stringify(seen)}`);
    });
    client.process.kill('SIGSTOP');
    const stoppedAt = Date.now();
    let last: string[] = [];
    await until(
      () => (last = serverEnd(api.port, client.port)).length === 0,
      TIMEOUTS.requestMs + 10_000,
      "the server's end of the connection to leave the kernel's table",
    ).catch((error: unknown) => {
      throw new Error(`${String(error)}; it is ${JSON.stringify(last)}`);
    });
    expect(Date.now() - stoppedAt).toBeGreaterThanOrEqual(TIMEOUTS.requestMs / 2);
    expect(await idleClosedUnread()).toBe(before + 1);
  },
  30_000,
);

it('a client that half-closes after its requests and reads: has every answer and the end of the connection, not a reset', async () => {
  const before = await idleClosedUnread();
  const tcp = tcpConnect({ host: '127.0.0.1', port: api.port });
  const tls = connect({ socket: tcp, ca: api.ca, servername: 'localhost' });
  opened.push(tls);
  const errors: Error[] = [];
  tls.on('error', (error: Error) => errors.push(error));
  await once(tls, 'secureConnect');
  const clientPort = tcp.localPort!;
  const request = `GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${TOKENS.ops}\r\n\r\n`;
  tls.write(request.repeat(12));
  // Half-closed once its answers are in the kernel's buffers, read only then.
  await until(
    () => serverEnd(api.port, clientPort).some((end) => held(end) && !end.endsWith(' tx=0')),
    10_000,
    'the kernel to hold answers for the client',
  );
  tls.end();
  let text = '';
  tls.on('data', (chunk: Buffer) => (text += chunk.toString('latin1')));
  await once(tls, 'end');
  expect(errors).toEqual([]);
  expect(text.match(/^HTTP\/1\.1 200 /gm)).toHaveLength(12);
  await until(
    () => serverEnd(api.port, clientPort).every((end) => !held(end)),
    5_000,
    "the server's end of the connection to be closed",
  );
  expect(await idleClosedUnread()).toBe(before);
}, 20_000);
