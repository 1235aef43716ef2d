import { once } from 'node:events';
import { promises as fsPromises, readFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { createServer, type Server } from 'node:https';
import { syncBuiltinESMExports } from 'node:module';
import { connect as tcpConnect, type Socket } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { boundAnswers } from '../../src/intake/https-unread.js';
import { makePki, until, type Pki } from './https-client.js';

/**
 * A connection whose client resets it at the moment boundAnswers (https-unread.ts) decides to
 * reset it is neither reset nor counted again. The bound decides on a look at the kernel's table
 * (https-peer.ts readTcpPeers, an asynchronous read of /proc/self/net/tcp and tcp6), and acts in
 * the turn that read ends in. A client destroyed with answers unread sends a reset; the kernel
 * drops the connection at once, Node learns of it at its next poll of the socket: when the reset
 * came after the look and that poll had not come yet, the bound found the socket not destroyed,
 * reset a connection no longer there and counted it (sluice_https_connections_idle_closed_total
 * {stage="answer_unread"}), a client that left counted as one that did not read.
 *
 * The race is made certain on real sockets: a TLS server with a real client over loopback, the
 * answer (32 MB) more than the kernel's buffers take, so Node holds the rest and boundAnswers
 * times it. The client is reset in the one place that orders it between the look and Node's
 * next poll: inside the look's last read of the table (tcp6, read after the tcp table that
 * lists the connection), wrapped for the case, after the kernel's real answer. The test then
 * waits, synchronously, until the kernel no longer lists the server's end, so the bound's next
 * step, in the same turn, meets a connection the kernel no longer has and Node not yet told.
 * No simulator can place a reset there; the wrap changes no byte of what the table says.
 * Ground truth: the kernel's table (read by the test) and the bound's own count.
 */

const BOUND_MS = 500;
const ANSWER_BYTES = 32 * 1024 * 1024;

let pki: Pki;
let server: Server;
let port: number;
let resets = 0;
const accepted: Socket[] = [];

beforeAll(async () => {
  pki = await makePki();
  server = createServer({
    key: readFileSync(pki.keyFile),
    cert: readFileSync(pki.certFile),
    minVersion: 'TLSv1.3',
  });
  server.on('secureConnection', (socket: Socket) => {
    accepted.push(socket);
    socket.on('error', () => undefined);
  });
  // Before the route: the bound times an answer from its end (prefinish), which this route
  // reaches in the turn of the request (the intake's routes answer later).
  boundAnswers(server, BOUND_MS, () => {
    resets++;
  });
  server.on('request', (_request, response: ServerResponse) => {
    response.end(Buffer.alloc(ANSWER_BYTES, 0x61));
  });
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  port = (server.address() as { port: number }).port;
});

afterAll(() => {
  for (const socket of accepted) socket.destroy();
  server.close();
  pki.cleanup();
});

/** The server's end of the connection in the kernel's table (/proc/net/tcp): its state, hex. */
function serverEnd(clientPort: number): string[] {
  const hex = (p: number): string => p.toString(16).toUpperCase().padStart(4, '0');
  const ends: string[] = [];
  for (const line of readFileSync('/proc/net/tcp', 'latin1').split('\n').slice(1)) {
    const [, local, remote, state] = line.trim().split(/\s+/);
    if (local?.endsWith(`:${hex(port)}`) && remote?.endsWith(`:${hex(clientPort)}`)) {
      ends.push(state ?? '');
    }
  }
  return ends;
}

/**
 * A client that asks for the answer and reads none of it (its window closes, then the server's
 * send buffer fills and Node holds the rest); returns it once the server's end is accepted.
 */
async function nonReader(): Promise<{
  tcp: Socket;
  tls: TLSSocket;
  clientPort: number;
  serverSocket: Socket;
}> {
  const before = accepted.length;
  const tcp = tcpConnect({ host: '127.0.0.1', port });
  tcp.on('error', () => undefined);
  const tls = connect({ socket: tcp, ca: pki.serverCa.cert, servername: 'localhost' });
  tls.on('error', () => undefined);
  await once(tls, 'secureConnect');
  tls.pause();
  tls.write('GET / HTTP/1.1\r\nHost: localhost\r\n\r\n');
  await until(() => accepted.length > before, 5_000, 'the server to accept the connection');
  return { tcp, tls, clientPort: tcp.localPort!, serverSocket: accepted[accepted.length - 1]! };
}

it('a client that does not read is reset once its answer waited the bound, and counted (the set-up reaches the bound)', async () => {
  const before = resets;
  const { tls, clientPort } = await nonReader();
  try {
    await until(() => resets > before, 10_000, 'the bound to reset the connection');
    expect(resets).toBe(before + 1);
    // Reset by the server: gone from the kernel's table while its client is still there.
    await until(() => serverEnd(clientPort).length === 0, 2_000, "the server's end to go");
    expect(tls.destroyed).toBe(false);
  } finally {
    tls.destroy();
  }
}, 30_000);

it('a client reset between the bound’s look at the kernel and Node’s next poll is neither reset nor counted', async () => {
  const before = resets;
  const { tcp, clientPort, serverSocket } = await nonReader();
  const seen: { destroyedInNode?: boolean; inKernel?: string[] } = {};
  const read = fsPromises.readFile;
  const wrapped = async (...args: Parameters<typeof read>): Promise<string | Buffer> => {
    const text = await read(...args);
    if (args[0] === '/proc/self/net/tcp6' && seen.inKernel === undefined) {
      // The look has read the tcp table (the connection, its window closed) and now the last:
      // the client goes, and the kernel takes its reset before the look's verdict is acted on.
      tcp.resetAndDestroy();
      const end = Date.now() + 2_000;
      while (serverEnd(clientPort).length > 0 && Date.now() < end) {
        // Synchronous: Node polls no socket meanwhile.
      }
      seen.inKernel = serverEnd(clientPort);
      seen.destroyedInNode = serverSocket.destroyed;
    }
    return text;
  };
  fsPromises.readFile = wrapped as typeof read;
  syncBuiltinESMExports();
  try {
    const closed = once(serverSocket, 'close');
    await until(() => seen.inKernel !== undefined, 10_000, "the bound's look at the kernel");
    // The race as it is: the kernel no longer has the connection, Node has not been told.
    expect(seen).toEqual({ inKernel: [], destroyedInNode: false });
    // Node learns of the client's reset at its next poll and closes its socket: the bound had
    // acted by then, in the turn of its look.
    await closed;
    expect(resets).toBe(before);
  } finally {
    fsPromises.readFile = read;
    syncBuiltinESMExports();
  }
}, 30_000);
