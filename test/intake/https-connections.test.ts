import { execFile } from 'node:child_process';
import { once } from 'node:events';
import { connect as tcpConnect, type Socket } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { HTTPS_TIMEOUTS, type HttpsTimeouts } from '../../src/intake/https-server.js';
import type { HandshakeFailure } from '../../src/intake/https-types.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { startStack, TOKENS, type Stack } from '../helpers/stack.js';
import {
  makePki,
  memoryLogger,
  startIntake,
  until,
  type Pki,
  type RunningIntake,
} from './https-client.js';

/**
 * The connections the HTTPS intake holds (src/intake/https-connections.ts): at most
 * `https.maxConnections` at a time and `https.maxConnectionsPerAddress` from one address, a TLS
 * handshake within HANDSHAKE_TIMEOUT_MS, a first request within FIRST_REQUEST_TIMEOUT_MS. Other
 * client addresses are other loopback addresses (127.0.0.2, ...), bound by the client. On the real intake over real sockets; ground truth is
 * each socket's own events (closed by the server, or answering) and the refusal counter.
 */

const MAX = 5;
const PER_ADDRESS = 3;
/**
 * The intake's timeouts, shortened (a few seconds, not tens) so that the tests wait for each of
 * them to pass; the same code enforces the defaults, which stay those SPEC and docs give.
 */
const TIMEOUTS: HttpsTimeouts = { handshakeMs: 2_000, firstRequestMs: 2_000, requestMs: 4_000 };
const HANDSHAKE_TIMEOUT_MS = TIMEOUTS.handshakeMs;
const FIRST_REQUEST_TIMEOUT_MS = TIMEOUTS.firstRequestMs;
const REQUEST_TIMEOUT_MS = TIMEOUTS.requestMs;
let stack: Stack;
let pki: Pki;
let api: RunningIntake;
const opened: Socket[] = [];

beforeAll(async () => {
  pki = await makePki();
  // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
  stack = await startStack({ opcua: false });
  api = await startIntake(stack, pki, {
    https: { maxConnections: MAX, maxConnectionsPerAddress: PER_ADDRESS },
    timeouts: TIMEOUTS,
  });
});

afterAll(async () => {
  for (const s of opened) s.destroy();
  await api.stop();
  await stack.stop();
  pki.cleanup();
});

/** A TLS connection from `from`, once its handshake is done; null when the server closed it. */
async function tls(from = '127.0.0.1', port = api.port): Promise<TLSSocket | null> {
  const tcp = tcpConnect({ host: '127.0.0.1', port, localAddress: from });
  tcp.on('error', () => undefined);
  // Destroyed through its TLS socket only: destroying the TCP socket under a live TLS socket
  // made the test process exit here.
  const socket = connect({ socket: tcp, ca: api.ca, servername: 'localhost' });
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
async function tlsWhenFree(from = '127.0.0.1'): Promise<TLSSocket | null> {
  let socket: TLSSocket | null = null;
  for (let i = 0; i < 50 && socket === null; i++) {
    socket = await tls(from);
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

/**
 * Writes `head`, then `drip` every second until the server closes the connection: how long the
 * connection lived after the head, and all it was sent.
 */
async function slowRequest(
  socket: TLSSocket,
  head: string,
  drip: string,
): Promise<{ lived: number; text: string }> {
  let text = '';
  socket.on('data', (chunk: Buffer) => {
    text += chunk.toString('latin1');
  });
  const closed = once(socket, 'close');
  socket.write(head);
  const sentAt = performance.now();
  const dripping = setInterval(() => {
    if (drip !== '' && socket.writable) socket.write(drip);
  }, 1_000);
  try {
    await closed;
  } finally {
    clearInterval(dripping);
  }
  return { lived: performance.now() - sentAt, text };
}

/** `sluice_https_tls_handshakes_failed_total{reason}` as the registry renders it (0 before). */
async function handshakesFailed(reason: HandshakeFailure): Promise<number> {
  const metric = await stack.metrics.registry
    .getSingleMetric('sluice_https_tls_handshakes_failed_total')
    ?.get();
  return metric?.values.find((v) => v.labels.reason === reason)?.value ?? 0;
}

/** Resolves when `socket` closes, whatever error it closes with (events.once rejects on one). */
async function closedAnyway(socket: Socket): Promise<void> {
  socket.on('error', () => undefined);
  await new Promise((resolve) => socket.once('close', resolve));
}

/** Sends `bytes` on a plain TCP connection and waits for the server to close it. */
async function sendRaw(bytes: string | Buffer): Promise<void> {
  const socket = tcpConnect(api.port, '127.0.0.1');
  opened.push(socket);
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  const closed = once(socket, 'close');
  socket.write(bytes);
  await closed;
}

async function refused(reason: 'max_connections' | 'per_address'): Promise<number> {
  const { values } = await stack.metrics.httpsConnectionsRefused.get();
  return values.filter((v) => v.labels.reason === reason).reduce((sum, v) => sum + v.value, 0);
}

/**
 * `sluice_https_connections_idle_closed_total{stage}` as the registry renders it (0 before its
 * first count, and on a registry without it).
 */
async function idleClosed(stage: 'handshake' | 'first_request'): Promise<number> {
  const metric = await stack.metrics.registry
    .getSingleMetric('sluice_https_connections_idle_closed_total')
    ?.get();
  return metric?.values.find((v) => v.labels.stage === stage)?.value ?? 0;
}

/** `sluice_http_responses_total{route="unparsed",status="408"}`: the requests not read in time. */
async function timedOutRequests(): Promise<number> {
  const { values } = await stack.metrics.httpResponses.get();
  return values.find((v) => v.labels.route === 'unparsed' && v.labels.status === '408')?.value ?? 0;
}

/** `n` connections from `from`, each up. */
async function hold(n: number, from: string): Promise<TLSSocket[]> {
  const held: TLSSocket[] = [];
  for (let i = 0; i < n; i++) {
    const s = await tls(from);
    expect(s !== null, `connection ${String(i + 1)} of ${String(n)} from ${from}`).toBe(true);
    held.push(s!);
  }
  return held;
}

describe('connections', () => {
  it('at most maxConnectionsPerAddress from one address and maxConnections in all: the next is closed when accepted, counted by reason; a freed place is taken again', async () => {
    const before = {
      perAddress: await refused('per_address'),
      max: await refused('max_connections'),
    };
    const first = await hold(PER_ADDRESS, '127.0.0.1');
    expect((await tls('127.0.0.1')) === null, 'one more from the same address refused').toBe(true);
    expect(await refused('per_address')).toBe(before.perAddress + 1);
    // Another address still gets in, up to the limit in all.
    const second = await hold(MAX - PER_ADDRESS, '127.0.0.2');
    expect((await tls('127.0.0.3')) === null, 'one past the limit in all refused').toBe(true);
    expect(await refused('max_connections')).toBe(before.max + 1);
    // The held connections serve; once one is closed, its place is taken again.
    expect(await health(first[0]!)).toBe('HTTP/1.1 200 OK');
    expect(await health(second[0]!)).toBe('HTTP/1.1 200 OK');
    first[1]!.destroy();
    const again = await tlsWhenFree('127.0.0.1');
    expect(again !== null, 'a freed place taken again').toBe(true);
    expect(await health(again!)).toBe('HTTP/1.1 200 OK');
    for (const s of [...first, ...second, again!]) s.destroy();
  });

  it('warns about refused connections at most once a minute on the monotonic clock, whatever the wall clock does', async () => {
    // The test's clock: its wall and monotonic readings step apart (SPEC §6).
    const shift = { wall: 0, mono: 0 };
    const clock: Clock = {
      ...systemClock,
      now: () => systemClock.now() + shift.wall,
      elapsed: () => systemClock.elapsed() + shift.mono,
    };
    const log = memoryLogger();
    const limited = await startIntake(stack, pki, {
      https: { maxConnectionsPerAddress: 1 },
      clock,
      logger: log,
    });
    const warnings = (): { refused: number }[] =>
      log.lines
        .map((l) => JSON.parse(l) as { level: string; msg: string; refused: number })
        .filter((l) => l.level === 'warn' && l.msg.startsWith('HTTPS connections refused'));
    /** One more connection from the held one's address, refused: once it is counted. */
    const refuseOne = async (): Promise<void> => {
      const before = await refused('per_address');
      expect((await tls('127.0.0.4', limited.port)) === null, 'refused').toBe(true);
      await until(async () => (await refused('per_address')) === before + 1, 5_000, 'counted');
    };
    try {
      const held = await tls('127.0.0.4', limited.port);
      expect(held !== null, 'the one connection allowed').toBe(true);
      await refuseOne();
      expect(warnings().map((w) => w.refused)).toEqual([1]);
      // The gateway's clock stepped an hour forward: no minute has passed, no second warning.
      shift.wall += 3_600_000;
      await refuseOne();
      expect(warnings()).toHaveLength(1);
      // Stepped two hours back, and a minute passes: the next refusal warns, with the count
      // since the last warning (on the wall clock it was silenced for the hour of the step).
      shift.wall -= 7_200_000;
      shift.mono += 61_000;
      await refuseOne();
      expect(warnings().map((w) => w.refused)).toEqual([1, 2]);
      held!.destroy();
    } finally {
      await limited.stop();
    }
  });

  it(
    'a connection that brings no request is closed after the first-request timeout; one that did is kept',
    async () => {
      // Once the previous test's connections are gone from the server's count.
      const used = await tlsWhenFree();
      expect(used !== null, 'a connection').toBe(true);
      expect(await health(used!)).toBe('HTTP/1.1 200 OK');
      const before = await idleClosed('first_request');
      // Opened after `used`: were `used`'s timer still running, it would fire first. Also once
      // the server has a place for it: the previous test's connections may still be counted.
      const idle = await tlsWhenFree();
      expect(idle !== null, 'an idle connection').toBe(true);
      let said = '';
      idle!.on('data', (chunk: Buffer) => {
        said += chunk.toString('latin1');
      });
      const openedAt = performance.now();
      await once(idle!, 'close');
      const lived = performance.now() - openedAt;
      // No request, so nothing to answer.
      expect(said).toBe('');
      expect(lived).toBeGreaterThanOrEqual(FIRST_REQUEST_TIMEOUT_MS - 100);
      expect(lived).toBeLessThan(FIRST_REQUEST_TIMEOUT_MS + 5_000);
      expect(await health(used!)).toBe('HTTP/1.1 200 OK');
      // Closed without an answer, so in no response's count: in the idle connections' (once;
      // `used`, which brought a request, is not).
      expect(await idleClosed('first_request')).toBe(before + 1);
      used!.destroy();
    },
    FIRST_REQUEST_TIMEOUT_MS + 20_000,
  );

  it(
    'a first request whose headers are still coming at the first-request timeout is answered 408, not cut silently; nothing is journaled',
    async () => {
      const key = `slow-first-head-${String(Date.now())}`;
      const before = {
        answered: await timedOutRequests(),
        idle: await idleClosed('first_request'),
      };
      const trickling = await tlsWhenFree('127.0.0.8');
      expect(trickling !== null, 'a connection').toBe(true);
      // The connection's first request: its head a line a second, never finished.
      const answer = await slowRequest(
        trickling!,
        'POST /v1/commands HTTP/1.1\r\nHost: localhost\r\n' +
          `Authorization: Bearer ${TOKENS.plant}\r\nIdempotency-Key: ${key}\r\n`,
        'X-Slow: 1\r\n',
      );
      expect(answer.text).toContain('HTTP/1.1 408 Request Timeout');
      expect(answer.text).toContain('application/problem+json');
      expect(answer.text).toContain('"code":"REQUEST_TIMEOUT"');
      expect(answer.lived).toBeGreaterThanOrEqual(FIRST_REQUEST_TIMEOUT_MS - 1_000);
      expect(answer.lived).toBeLessThan(FIRST_REQUEST_TIMEOUT_MS + 5_000);
      expect(stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
      // Counted as the answer it got, not as a connection that sent nothing.
      expect(await timedOutRequests()).toBe(before.answered + 1);
      expect(await idleClosed('first_request')).toBe(before.idle);
    },
    FIRST_REQUEST_TIMEOUT_MS + 20_000,
  );

  it(
    'a request trickled or stalled, headers or body, is answered 408 and closed within the request timeout; nothing is journaled',
    async () => {
      const keys = ['slow-body', 'stalled-body'].map((k) => `${k}-${String(Date.now())}`);
      const commandHead = (key: string): string =>
        'POST /v1/commands HTTP/1.1\r\nHost: localhost\r\n' +
        `Authorization: Bearer ${TOKENS.plant}\r\nIdempotency-Key: ${key}\r\n` +
        'Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{"device":"v1",';
      const sockets = await Promise.all(
        ['127.0.0.5', '127.0.0.6', '127.0.0.7'].map((from) => tlsWhenFree(from)),
      );
      expect(sockets.every((s) => s !== null)).toBe(true);
      const [trickling, stalled, slowHead] = sockets as [TLSSocket, TLSSocket, TLSSocket];
      expect(await health(slowHead)).toBe('HTTP/1.1 200 OK');
      const answered = await timedOutRequests();
      const answers = await Promise.all([
        slowRequest(trickling, commandHead(keys[0]!), ' '),
        slowRequest(stalled, commandHead(keys[1]!), ''),
        // The next request on a kept connection, its headers a line a second.
        slowRequest(slowHead, 'GET /healthz HTTP/1.1\r\nHost: localhost\r\n', 'X-Slow: 1\r\n'),
      ]);
      for (const [i, answer] of answers.entries()) {
        expect(answer.text, `connection ${String(i)}`).toContain('408 Request Timeout');
        expect(answer.lived, `connection ${String(i)}`).toBeGreaterThanOrEqual(
          REQUEST_TIMEOUT_MS - 1_000,
        );
        expect(answer.lived, `connection ${String(i)}`).toBeLessThan(REQUEST_TIMEOUT_MS + 3_000);
      }
      for (const key of keys) expect(stack.pipeline.get({ scope: 'plant', key })).toBeUndefined();
      expect(await timedOutRequests()).toBe(answered + 3);
    },
    REQUEST_TIMEOUT_MS + 90_000,
  );

  it('failed TLS handshakes are counted by reason: plain HTTP, not TLS, TLS 1.2, a client not trusting the certificate', async () => {
    const counts = async (): Promise<Record<HandshakeFailure, number>> => ({
      plain_http: await handshakesFailed('plain_http'),
      not_tls: await handshakesFailed('not_tls'),
      version: await handshakesFailed('version'),
      untrusted: await handshakesFailed('untrusted'),
      aborted: await handshakesFailed('aborted'),
      other: await handshakesFailed('other'),
    });
    const before = await counts();
    const expected = { ...before };
    // http:// for https:// (the commonest client mistake), then bytes that are not TLS.
    await sendRaw('GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n');
    expected.plain_http += 1;
    await until(async () => (await handshakesFailed('plain_http')) === expected.plain_http);
    await sendRaw(Buffer.alloc(64, 0x41));
    expected.not_tls += 1;
    await until(async () => (await handshakesFailed('not_tls')) === expected.not_tls);
    // A client that offers TLS 1.2 at most (the intake takes 1.3 only).
    const old = connect({
      host: '127.0.0.1',
      port: api.port,
      ca: api.ca,
      servername: 'localhost',
      maxVersion: 'TLSv1.2',
    });
    opened.push(old);
    await closedAnyway(old);
    expected.version += 1;
    await until(async () => (await handshakesFailed('version')) === expected.version);
    // A Node.js client without the gateway's CA: it refuses the certificate and closes.
    const doubting = connect({ host: '127.0.0.1', port: api.port, servername: 'localhost' });
    opened.push(doubting);
    await closedAnyway(doubting);
    expected.aborted += 1;
    await until(async () => (await handshakesFailed('aborted')) === expected.aborted);
    // curl without the gateway's CA: it says why, with an alert (unknown CA).
    if (realComponent('curl', hasCommand('curl'), 'apt-get install curl')) {
      await new Promise<void>((resolve) => {
        execFile('curl', ['-s', '-o', '/dev/null', `https://localhost:${api.port}/healthz`], () => {
          resolve();
        });
      });
      expected.untrusted += 1;
      await until(async () => (await handshakesFailed('untrusted')) === expected.untrusted);
    }
    // Each counted once, under its own reason, and nothing else.
    expect(await counts()).toEqual(expected);
  });

  it(
    'a TCP connection that never begins its TLS handshake is closed after the handshake timeout',
    async () => {
      const before = await idleClosed('handshake');
      const socket = tcpConnect(api.port, '127.0.0.1');
      opened.push(socket);
      socket.on('error', () => undefined);
      await once(socket, 'connect');
      const openedAt = performance.now();
      await once(socket, 'close');
      const lived = performance.now() - openedAt;
      expect(lived).toBeGreaterThanOrEqual(HANDSHAKE_TIMEOUT_MS - 100);
      expect(lived).toBeLessThan(HANDSHAKE_TIMEOUT_MS + 5_000);
      expect(await idleClosed('handshake')).toBe(before + 1);
    },
    HANDSHAKE_TIMEOUT_MS + 20_000,
  );
});

it('the defaults are those the documentation gives: 10 s handshake, 10 s first request, 30 s request', () => {
  expect(HTTPS_TIMEOUTS).toEqual({
    handshakeMs: 10_000,
    firstRequestMs: 10_000,
    requestMs: 30_000,
  });
});
