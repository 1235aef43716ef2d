import { once } from 'node:events';
import { connect as tcpConnect, type Socket } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FIRST_REQUEST_TIMEOUT_MS,
  HANDSHAKE_TIMEOUT_MS,
} from '../../src/intake/https-connections.js';
import { startStack, type Stack } from '../helpers/stack.js';
import { makePki, startIntake, type Pki, type RunningIntake } from './https-client.js';

/**
 * Connections the HTTPS intake holds before any request (src/intake/https-connections.ts): at
 * most `https.maxConnections` at a time, a TLS handshake within HANDSHAKE_TIMEOUT_MS, a first
 * request within FIRST_REQUEST_TIMEOUT_MS. On the real intake over real sockets; ground truth is
 * each socket's own events (closed by the server, or answering) and the refusal counter.
 */

const MAX = 4;
let stack: Stack;
let pki: Pki;
let api: RunningIntake;
const opened: Socket[] = [];

beforeAll(async () => {
  pki = await makePki();
  stack = await startStack();
  api = await startIntake(stack, pki, { https: { maxConnections: MAX } });
});

afterAll(async () => {
  for (const s of opened) s.destroy();
  await api.stop();
  await stack.stop();
  pki.cleanup();
});

/** A TLS connection, once its handshake is done; null when the server closed it first. */
async function tls(): Promise<TLSSocket | null> {
  const socket = connect({
    host: '127.0.0.1',
    port: api.port,
    ca: api.ca,
    servername: 'localhost',
  });
  opened.push(socket);
  const first = await new Promise<'up' | 'closed'>((resolve) => {
    socket.once('secureConnect', () => {
      resolve('up');
    });
    socket.once('error', () => {
      resolve('closed');
    });
    socket.once('close', () => {
      resolve('closed');
    });
  });
  socket.on('error', () => undefined);
  return first === 'up' ? socket : null;
}

/** A TLS connection once the server has a place for it (it learns of a close a moment late). */
async function tlsWhenFree(): Promise<TLSSocket | null> {
  let socket: TLSSocket | null = null;
  for (let i = 0; i < 50 && socket === null; i++) {
    socket = await tls();
    if (socket === null) await new Promise((resolve) => setTimeout(resolve, 20));
  }
  return socket;
}

/** Sends GET /healthz on the connection and reads the status line of its answer. */
async function health(socket: TLSSocket): Promise<string> {
  const answer = new Promise<string>((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer): void => {
      text += chunk.toString('latin1');
      if (text.includes('\r\n\r\n')) {
        socket.off('data', onData);
        resolve(text.split('\r\n')[0] ?? '');
      }
    };
    socket.on('data', onData);
    socket.once('close', () => {
      reject(new Error(`closed before an answer: ${text}`));
    });
  });
  socket.write('GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n');
  return answer;
}

async function refusedCount(): Promise<number> {
  const text = await stack.metrics.registry.metrics();
  const line = /^sluice_https_connections_refused_total (\d+)$/m.exec(text);
  return Number(line?.[1] ?? 'NaN');
}

describe('connections before any request', () => {
  it('at most https.maxConnections at a time: the next is closed when accepted, counted, and a freed place is taken again', async () => {
    const before = await refusedCount();
    const held: TLSSocket[] = [];
    for (let i = 0; i < MAX; i++) {
      const s = await tls();
      expect(s, `connection ${String(i + 1)} of ${String(MAX)}`).not.toBeNull();
      held.push(s!);
    }
    expect(await tls(), 'a connection past the limit').toBeNull();
    expect(await refusedCount()).toBe(before + 1);
    // The held connections serve; once one is closed, a new connection is taken.
    expect(await health(held[0]!)).toBe('HTTP/1.1 200 OK');
    held[1]!.destroy();
    const again = await tlsWhenFree();
    expect(again).not.toBeNull();
    expect(await health(again!)).toBe('HTTP/1.1 200 OK');
    for (const s of [...held, again!]) s.destroy();
  });

  it(
    'a connection that brings no request is closed after the first-request timeout; one that did is kept',
    async () => {
      // Once the previous test's connections are gone from the server's count.
      const used = await tlsWhenFree();
      expect(used).not.toBeNull();
      expect(await health(used!)).toBe('HTTP/1.1 200 OK');
      // Opened after `used`: were `used`'s timer still running, it would fire first.
      const idle = await tls();
      expect(idle).not.toBeNull();
      const openedAt = performance.now();
      await once(idle!, 'close');
      const lived = performance.now() - openedAt;
      expect(lived).toBeGreaterThanOrEqual(FIRST_REQUEST_TIMEOUT_MS - 100);
      expect(lived).toBeLessThan(FIRST_REQUEST_TIMEOUT_MS + 5_000);
      expect(await health(used!)).toBe('HTTP/1.1 200 OK');
      used!.destroy();
    },
    FIRST_REQUEST_TIMEOUT_MS + 20_000,
  );

  it(
    'a TCP connection that never begins its TLS handshake is closed after the handshake timeout',
    async () => {
      const socket = tcpConnect(api.port, '127.0.0.1');
      opened.push(socket);
      socket.on('error', () => undefined);
      await once(socket, 'connect');
      const openedAt = performance.now();
      await once(socket, 'close');
      const lived = performance.now() - openedAt;
      expect(lived).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT_MS - 100);
      expect(lived).toBeLessThan(HANDSHAKE_TIMEOUT_MS + 5_000);
    },
    HANDSHAKE_TIMEOUT_MS + 20_000,
  );
});
