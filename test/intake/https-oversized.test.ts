import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { connect as tcpConnect, type AddressInfo, type Socket } from 'node:net';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DRAIN_MAX_BYTES, DRAIN_MAX_MS, settleUnreadBody } from '../../src/intake/https-drain.js';
import { startStack, TOKENS, type Stack } from '../helpers/stack.js';
import { makePki, startIntake, until, type Pki, type RunningIntake } from './https-client.js';

/**
 * A body refused as too large (413) is refused before it was read, while the client may still be
 * sending it. The intake reads the rest and discards it (bounded), so that the client's writes
 * land and it reads the 413 after them; closed at once, a client that reads only after writing
 * (most do) would get EPIPE or ECONNRESET instead of the answer (src/intake/https-drain.ts).
 *
 * The client here is such a client, on a raw socket so that the order is the test's: it sends
 * the request head (and the body's start), waits until the answer is in its receive buffer
 * unread — the server has answered before the body went out — then sends the rest, and only then
 * reads. Ground truth is the wire: each write's callback and the bytes read back; and the same
 * connection then answers another request, so the body was drained to its exact end.
 */

let stack: Stack;
let pki: Pki;
let api: RunningIntake;

beforeAll(async () => {
  pki = await makePki();
  // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
  stack = await startStack({ opcua: false });
  api = await startIntake(stack, pki);
});

afterAll(async () => {
  await api.stop();
  await stack.stop();
  pki.cleanup();
});

type Wire = Socket | TLSSocket;

function write(socket: Wire, data: Buffer | string): Promise<string | null> {
  return new Promise((resolve) => {
    socket.write(data, (error?: Error | null) => {
      if (error == null) resolve(null);
      else resolve((error as Error & { code?: string }).code ?? error.message);
    });
  });
}

/** A client that writes before it reads: its socket is paused, and errors are kept. */
class WriteFirstClient {
  error: string | null = null;
  private readonly received: Buffer[] = [];
  private ended = false;

  constructor(readonly socket: Wire) {
    socket.on('error', (error: Error & { code?: string }) => {
      this.error ??= error.code ?? error.message;
    });
  }

  static async tls(): Promise<WriteFirstClient> {
    const socket = connect({
      host: '127.0.0.1',
      port: api.port,
      ca: api.ca,
      servername: 'localhost',
    });
    const client = new WriteFirstClient(socket);
    await once(socket, 'secureConnect');
    socket.pause();
    return client;
  }

  /** Waits (bounded) until the server's answer is in the receive buffer, unread. */
  async answerWaiting(): Promise<void> {
    for (let i = 0; i < 2000 && this.socket.readableLength === 0 && this.error === null; i++) {
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    expect(this.socket.readableLength, 'the answer came before the rest was sent').toBeGreaterThan(
      0,
    );
  }

  /** Writes `data` in 16 KiB writes; the first failure, or null. Counts what was written. */
  async send(data: Buffer): Promise<{ error: string | null; written: number }> {
    const chunk = 16 * 1024;
    let written = 0;
    for (let at = 0; at < data.length; at += chunk) {
      const error = (await write(this.socket, data.subarray(at, at + chunk))) ?? this.error;
      if (error !== null) return { error, written };
      written += Math.min(chunk, data.length - at);
    }
    return { error: null, written };
  }

  /** Reads one whole response (head and Content-Length body). */
  async response(): Promise<{ status: number; head: string; body: string }> {
    if (this.received.length === 0 && !this.ended) {
      this.socket.on('data', (c: Buffer) => this.received.push(c));
      this.socket.on('end', () => (this.ended = true));
      this.socket.resume();
    }
    for (let i = 0; i < 10_000; i++) {
      const all = Buffer.concat(this.received);
      const split = all.indexOf('\r\n\r\n');
      if (split >= 0) {
        const head = all.subarray(0, split).toString('latin1');
        const length = Number(/\r\ncontent-length: (\d+)/i.exec(head)?.[1] ?? 'NaN');
        if (all.length >= split + 4 + length) {
          const rest = all.subarray(split + 4 + length);
          this.received.splice(0, this.received.length, rest);
          return {
            status: Number(head.split(' ')[1]),
            head,
            body: all.subarray(split + 4, split + 4 + length).toString('utf8'),
          };
        }
      }
      if (this.ended || this.error !== null) break;
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
    throw new Error(`no whole response (error ${String(this.error)}, ended ${String(this.ended)})`);
  }

  /** Resolves once the server has closed its side (or the socket is gone). */
  async closedByServer(): Promise<void> {
    if (this.ended || this.socket.destroyed) return;
    this.socket.resume();
    await Promise.race([once(this.socket, 'end'), once(this.socket, 'close')]);
  }
}

const HEALTH = 'GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n';

function post(fields: string, key: string): string {
  return (
    'POST /v1/commands HTTP/1.1\r\n' +
    'Host: localhost\r\n' +
    `Authorization: Bearer ${TOKENS.plant}\r\n` +
    `Idempotency-Key: ${key}\r\n` +
    'Content-Type: application/json\r\n' +
    fields +
    '\r\n'
  );
}

/** `body` framed as one chunk of a chunked body (no last chunk). */
const chunked = (body: Buffer): Buffer =>
  Buffer.concat([Buffer.from(`${body.length.toString(16)}\r\n`), body, Buffer.from('\r\n')]);

const LAST_CHUNK = Buffer.from('0\r\n\r\n');

/** Sends 64 KiB chunks until a write fails (64 MiB at most: far past the bound plus what the
 * sockets' buffers hold); what was written, and the failure. */
async function sendUntilCut(
  client: WriteFirstClient,
): Promise<{ written: number; error: string | null }> {
  const piece = chunked(Buffer.alloc(64 * 1024, 0x20));
  let written = 0;
  let error: string | null = null;
  for (let i = 0; i < 1024 && error === null; i++) {
    const r = await client.send(piece);
    written += r.written;
    error = r.error;
  }
  return { written, error };
}

/** A request head without credentials (answered 401 before its body is read). */
const anonymous = (fields: string, key: string): string =>
  'POST /v1/commands HTTP/1.1\r\nHost: localhost\r\n' +
  `Idempotency-Key: ${key}\r\nContent-Type: application/json\r\n${fields}\r\n`;

describe('a body refused as too large: the 413 reaches a client still sending it', () => {
  it('on its Content-Length: every write lands, the 413 is read after them, the connection serves on', async () => {
    const body = Buffer.alloc(1 << 20, 0x20);
    const client = await WriteFirstClient.tls();
    expect(
      await write(client.socket, post(`Content-Length: ${String(body.length)}\r\n`, 'cl-1')),
    ).toBeNull();
    await client.answerWaiting();
    expect((await client.send(body)).error).toBeNull();
    const refused = await client.response();
    expect(refused.status).toBe(413);
    expect(JSON.parse(refused.body)).toMatchObject({ status: 413, code: 'PAYLOAD_TOO_LARGE' });
    expect(refused.head).not.toMatch(/\r\nconnection: close/i);
    // The body was read to its exact end: the next request on the connection is answered.
    expect(await write(client.socket, HEALTH)).toBeNull();
    expect((await client.response()).status).toBe(200);
    client.socket.destroy();
  });

  it('chunked, past the limit: the rest drained to the last chunk, the connection serves on', async () => {
    const client = await WriteFirstClient.tls();
    expect(await write(client.socket, post('Transfer-Encoding: chunked\r\n', 'ch-1'))).toBeNull();
    // Past the 16 KiB limit: the server answers while the body goes on.
    expect((await client.send(chunked(Buffer.alloc(64 * 1024, 0x20)))).error).toBeNull();
    await client.answerWaiting();
    for (let i = 0; i < 16; i++) {
      expect((await client.send(chunked(Buffer.alloc(32 * 1024, 0x20)))).error).toBeNull();
    }
    expect((await client.send(LAST_CHUNK)).error).toBeNull();
    const refused = await client.response();
    expect(refused.status).toBe(413);
    expect(JSON.parse(refused.body)).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    expect(await write(client.socket, HEALTH)).toBeNull();
    expect((await client.response()).status).toBe(200);
    client.socket.destroy();
  });

  it('a declared length past what is drained: answered, and the connection closed', async () => {
    const client = await WriteFirstClient.tls();
    const fields = `Content-Length: ${String(DRAIN_MAX_BYTES + 1)}\r\n`;
    expect(await write(client.socket, post(fields, 'cl-2'))).toBeNull();
    const refused = await client.response();
    expect(refused.status).toBe(413);
    expect(refused.head).toMatch(/\r\nconnection: close/i);
    await client.closedByServer();
    client.socket.destroy();
  });

  it('a chunked body that never ends: the connection is cut once the drain bound is read', async () => {
    const client = await WriteFirstClient.tls();
    expect(await write(client.socket, post('Transfer-Encoding: chunked\r\n', 'ch-2'))).toBeNull();
    const { written, error } = await sendUntilCut(client);
    expect(error, `written ${String(written)} bytes`).not.toBeNull();
    expect(written).toBeGreaterThan(DRAIN_MAX_BYTES);
    expect(written).toBeLessThan(DRAIN_MAX_BYTES + 32 * 1024 * 1024);
  });
});

describe('any answer given before the body was read: the rest drained within the same bounds', () => {
  it('401 (no credentials): the body is drained to its end and the connection serves on', async () => {
    const body = Buffer.alloc(1 << 20, 0x20);
    const client = await WriteFirstClient.tls();
    const head = anonymous(`Content-Length: ${String(body.length)}\r\n`, 'anon-1');
    expect(await write(client.socket, head)).toBeNull();
    await client.answerWaiting();
    expect((await client.send(body)).error).toBeNull();
    const refused = await client.response();
    expect(refused.status).toBe(401);
    expect(await write(client.socket, HEALTH)).toBeNull();
    expect((await client.response()).status).toBe(200);
    client.socket.destroy();
  });

  it('401 on a chunked body that never ends: the connection is cut once the bound is read', async () => {
    const client = await WriteFirstClient.tls();
    expect(
      await write(client.socket, anonymous('Transfer-Encoding: chunked\r\n', 'anon-2')),
    ).toBeNull();
    const { written, error } = await sendUntilCut(client);
    expect(error, `written ${String(written)} bytes`).not.toBeNull();
    expect(written).toBeGreaterThan(DRAIN_MAX_BYTES);
    expect(written).toBeLessThan(DRAIN_MAX_BYTES + 32 * 1024 * 1024);
  });

  it('401 on a declared length past the bound: answered with Connection: close, and closed', async () => {
    const client = await WriteFirstClient.tls();
    const head = anonymous(`Content-Length: ${String(64 * DRAIN_MAX_BYTES)}\r\n`, 'anon-3');
    expect(await write(client.socket, head)).toBeNull();
    const refused = await client.response();
    expect(refused.status).toBe(401);
    expect(refused.head).toMatch(/\r\nconnection: close/i);
    await client.closedByServer();
    client.socket.destroy();
  });
});

describe('a client that asks for its connection to close: the early answer reaches it all the same', () => {
  // Node closed such a connection as soon as the answer was written, the rest of the body still
  // coming: the kernel reset it, and the client got EPIPE at its next write, never the answer.
  // Python's urllib sends `Connection: close` on every request; an HTTP/1.0 request without
  // keep-alive is the same.
  it.each([
    {
      what: '413 on its Content-Length, Connection: close',
      status: 413,
      head: (length: number) =>
        post(`Connection: close\r\nContent-Length: ${String(length)}\r\n`, 'close-cl'),
    },
    {
      what: '401 (no credentials), HTTP/1.0',
      status: 401,
      head: (length: number) =>
        anonymous(`Content-Length: ${String(length)}\r\n`, 'close-anon').replace(
          'HTTP/1.1',
          'HTTP/1.0',
        ),
    },
  ])(
    '$what: every write lands, the answer says the connection closes, then it is closed',
    async ({ status, head }) => {
      const body = Buffer.alloc(1 << 20, 0x20);
      const client = await WriteFirstClient.tls();
      expect(await write(client.socket, head(body.length))).toBeNull();
      await client.answerWaiting();
      expect((await client.send(body)).error).toBeNull();
      const refused = await client.response();
      expect(refused.status).toBe(status);
      expect(JSON.parse(refused.body)).toMatchObject({ status });
      expect(refused.head).toMatch(/\r\nconnection: close/i);
      // Closed once the body was read, not left to the drain's bound.
      const readAt = Date.now();
      await client.closedByServer();
      expect(Date.now() - readAt).toBeLessThan(DRAIN_MAX_MS);
      expect(client.error).toBeNull();
      client.socket.destroy();
    },
  );
});

/**
 * A TLS client that reads everything the server sends, and half-closes when told: the answers
 * it got, by their status lines, once the server has closed the connection.
 */
async function halfClosingClient(target: RunningIntake = api): Promise<{
  socket: TLSSocket;
  text: () => string;
  statuses: () => string[];
  closed: Promise<unknown>;
}> {
  const socket = connect({
    host: '127.0.0.1',
    port: target.port,
    ca: target.ca,
    servername: 'localhost',
  });
  socket.on('error', () => undefined);
  let text = '';
  socket.setEncoding('latin1');
  socket.on('data', (chunk: string) => (text += chunk));
  const closed = once(socket, 'close');
  await once(socket, 'secureConnect');
  return {
    socket,
    text: () => text,
    statuses: () => [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]!),
    closed,
  };
}

async function untilReceived(client: { text: () => string }, status: string): Promise<void> {
  for (let i = 0; i < 5_000 && !client.text().includes(`HTTP/1.1 ${status} `); i++) {
    await new Promise((resolve) => setTimeout(resolve, 1));
  }
  expect(client.text()).toContain(`HTTP/1.1 ${status} `);
}

describe('a client that half-closes instead of sending a body refused before it was read', () => {
  // Node's parser fails at the FIN in the middle of the body; that failure was answered 400
  // BAD_REQUEST, a second answer to a request already answered, and the connection destroyed
  // with any answer still queued.
  it.each([
    {
      what: 'on its Content-Length',
      sent: [post('Content-Length: 1048576\r\n', 'half-cl')],
    },
    {
      what: 'chunked, past the limit',
      sent: [
        post('Transfer-Encoding: chunked\r\n', 'half-chunked'),
        chunked(Buffer.alloc(20_000, 0x20)),
      ],
    },
  ])('$what: the 413 alone, then the connection closed', async ({ sent }) => {
    const client = await halfClosingClient();
    for (const bytes of sent) client.socket.write(bytes);
    await untilReceived(client, '413');
    const finAt = Date.now();
    client.socket.end();
    await client.closed;
    expect(client.statuses()).toEqual(['413']);
    // Closed as nothing more is owed, not cut by the drain's bound.
    expect(Date.now() - finAt).toBeLessThan(DRAIN_MAX_MS);
  });

  it('after a command on the same connection: the command answered and written once, then the 413, then closed', async () => {
    const valve = stack.plant.device('v1');
    const writes = valve.writeLog.length;
    const body = JSON.stringify({ device: 'v1', action: 'open' });
    const client = await halfClosingClient();
    client.socket.write(
      post(`Content-Length: ${String(body.length)}\r\n`, 'half-command') +
        body +
        post('Content-Length: 1048576\r\n', 'half-cl-after'),
    );
    // The 413 was made while the command ran, and follows its answer.
    await untilReceived(client, '200');
    client.socket.end();
    await client.closed;
    expect(client.statuses()).toEqual(['200', '413']);
    expect(stack.pipeline.get({ scope: 'plant', key: 'half-command' })).toMatchObject({
      state: 'confirmed',
    });
    expect(valve.writeLog).toHaveLength(writes + 1);
  });
});

describe('a client that half-closes instead of sending a refused body, behind a command still waiting for its outcome', () => {
  // The 413 is made at once and waits behind the command's answer; the client half-closes
  // without the body. The drain's bound (10 s from the 413) cut the connection with the
  // command's answer still owed (nothing answered), and past the request timeout Node reported
  // the cut request, answered 408 after its 413. Here, shortened in the same order (the
  // defaults: 30 s, 10 s, a wait up to 60 s), the request timeout is 2 s, the drain's bound 3 s
  // (a test-only option, HttpsIntake's bodyDrain) and the command's wait 5 s: its read of the
  // valve is held by sluice-sim, so it is still open when its answer (202) is made.
  it('the command answered after the drain bound and the request timeout, then the 413 alone, then closed', async () => {
    const drainMs = 3_000;
    const shortened = await startIntake(stack, pki, {
      timeouts: { handshakeMs: 10_000, firstRequestMs: 10_000, requestMs: 2_000 },
      bodyDrain: { maxBytes: DRAIN_MAX_BYTES, maxMs: drainMs },
    });
    const valve = stack.plant.device('v2');
    try {
      valve.setFault({ kind: 'stall', on: 'read', count: 1_000 });
      const body = JSON.stringify({ device: 'v2', action: 'open' });
      const client = await halfClosingClient(shortened);
      client.socket.write(
        post(`Prefer: wait=5\r\nContent-Length: ${String(body.length)}\r\n`, 'held-command') +
          body +
          post('Content-Length: 1048576\r\n', 'held-cl-after'),
      );
      // The command's read of the valve is held: both requests were read, the 413 made (the
      // same chunk, microtasks away) long before.
      await until(
        () => (valve.faults()[0]?.remaining ?? 1_000) < 1_000,
        5_000,
        "the command's read of the valve held",
      );
      const finAt = Date.now();
      client.socket.end();
      await client.closed;
      expect(client.statuses()).toEqual(['202', '413']);
      expect(client.text()).toContain('"key":"held-command"');
      // Closed once the command's answer and the 413 were written, past the drain's bound.
      expect(Date.now() - finAt).toBeGreaterThan(drainMs);
      expect(stack.pipeline.get({ scope: 'plant', key: 'held-command' })).toMatchObject({
        state: 'accepted',
      });
    } finally {
      valve.clearFault('stall');
      await shortened.stop();
    }
    const settled = await stack.pipeline.waitForSettled(
      { scope: 'plant', key: 'held-command' },
      20_000,
    );
    expect(settled?.state).not.toBe('accepted');
  }, 40_000);
});

describe('a body read whole and refused: the connection serves on', () => {
  it('400 for a body that is not JSON, not UTF-8 or has a name twice, then the next request', async () => {
    const client = await WriteFirstClient.tls();
    const bodies = [
      Buffer.from('{"device":'),
      Buffer.from([0x7b, 0xff, 0x7d]),
      Buffer.from('{"device":"v1","action":"close","action":"open"}'),
      Buffer.alloc(0),
    ];
    for (const [i, body] of bodies.entries()) {
      const head = post(`Content-Length: ${String(body.length)}\r\n`, `kept-${String(i)}`);
      expect((await client.send(Buffer.concat([Buffer.from(head), body]))).error).toBeNull();
      const refused = await client.response();
      expect(refused.status).toBe(400);
      expect(JSON.parse(refused.body)).toMatchObject({ code: 'INVALID_COMMAND' });
      expect(refused.head.toLowerCase()).not.toContain('connection: close');
    }
    expect((await client.send(Buffer.from(HEALTH))).error).toBeNull();
    expect((await client.response()).status).toBe(200);
    expect(client.error).toBeNull();
    client.socket.destroy();
  });
});

describe('settleUnreadBody: a client too slow to finish its body', () => {
  let server: Server;
  let port: number;

  beforeAll(async () => {
    // Plain HTTP: the timing bound is the same code, with a bound short enough for a test.
    server = createServer((request, response) => {
      const unread = settleUnreadBody(request, { maxBytes: 1 << 20, maxMs: 300 });
      response.writeHead(413, { 'content-length': '0', 'x-unread': unread });
      response.end();
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  });

  afterAll(async () => {
    server.close();
    await once(server, 'close');
  });

  /** A plain connection that has sent a POST head declaring `length` bytes of body. */
  async function posted(length: number): Promise<WriteFirstClient> {
    const socket = tcpConnect(port, '127.0.0.1');
    const client = new WriteFirstClient(socket);
    await once(socket, 'connect');
    const head = `POST / HTTP/1.1\r\nHost: x\r\nContent-Length: ${String(length)}\r\n\r\n`;
    expect(await write(socket, head)).toBeNull();
    return client;
  }

  it('is cut once the bound passes, with the body unfinished', async () => {
    const client = await posted(1000);
    const answer = await client.response();
    expect(answer.head).toMatch(/\r\nx-unread: drained/i);
    const started = Date.now();
    await client.closedByServer();
    expect(Date.now() - started).toBeGreaterThanOrEqual(250);
  });

  it('keeps a connection whose body then arrives', async () => {
    const client = await posted(10);
    const socket = client.socket;
    const first = await client.response();
    expect(first.head).toMatch(/\r\nx-unread: drained/i);
    // Slower than nothing, well within the bound: the body, then a request on the same
    // connection, which is answered (the body was read to its end, the connection kept).
    expect(await write(socket, '0123456789GET / HTTP/1.1\r\nHost: x\r\n\r\n')).toBeNull();
    const second = await client.response();
    // A request without a body has nothing left to read.
    expect(second.head).toMatch(/\r\nx-unread: complete/i);
    socket.destroy();
  });
});
