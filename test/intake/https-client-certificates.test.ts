import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { IdentityRegistry, sha256 } from '../../src/intake/identities.js';
import { startStack, TOKENS, type Stack } from '../helpers/stack.js';
import {
  makePki,
  memoryLogger,
  startIntake,
  type Pem,
  type Pki,
  type RunningIntake,
} from './https-client.js';

/**
 * A client certificate is a credential for as long as it is valid, not for as long as a TLS
 * session or a connection made with it lives (src/intake/credentials.ts). OpenSSL verifies the
 * certificate at the full handshake only: a TLS 1.3 session resumed from its ticket, and a
 * kept-alive connection, carry that old verdict. Real certificates that expire seconds after
 * they are used, real resumption (the client's `isSessionReused()` proves it), on the real
 * intake; ground truth is the journal and the simulator's write counter.
 */

let stack: Stack;
let pki: Pki;
let mtls: RunningIntake;
const log = memoryLogger();

beforeAll(async () => {
  pki = await makePki();
  // No test here addresses `u1`: no OPC UA PLC (seconds of CPU to start and stop).
  stack = await startStack({ opcua: false });
  const identities = new IdentityRegistry({
    plant: { tokenSha256: sha256(TOKENS.plant).toString('hex'), devices: ['*'] },
    scada: { certificateCn: 'scada-1', devices: ['*'] },
  });
  mtls = await startIntake(stack, pki, { identities, mutualTls: true, logger: log });
});

afterAll(async () => {
  await mtls.stop();
  await stack.stop();
  pki.cleanup();
});

interface Connection {
  readonly socket: TLSSocket;
  /** The last session ticket the server sent on it (TLS 1.3 sends them after the handshake). */
  session(): Promise<Buffer>;
}

/** A TLS connection presenting `cert`, resuming `session` when given; once it is up. */
async function open(cert: Pem, session?: Buffer): Promise<Connection> {
  const socket = connect({
    host: '127.0.0.1',
    port: mtls.port,
    servername: 'localhost',
    ca: mtls.ca,
    cert: cert.cert,
    key: cert.key,
    ...(session === undefined ? {} : { session }),
  });
  let ticket: Buffer | undefined;
  const ticketed = new Promise<void>((resolve) => {
    socket.on('session', (s: Buffer) => {
      ticket = s;
      resolve();
    });
  });
  socket.on('error', () => undefined);
  await once(socket, 'secureConnect');
  return {
    socket,
    session: async () => {
      await ticketed;
      return ticket!;
    },
  };
}

interface Answer {
  readonly status: number;
  readonly json: Record<string, unknown>;
}

/** Sends one HTTP/1.1 request on the connection and reads its answer (Content-Length framed). */
async function request(
  socket: TLSSocket,
  method: 'GET' | 'POST',
  path: string,
  headers: Record<string, string> = {},
  body?: unknown,
): Promise<Answer> {
  const payload = body === undefined ? '' : JSON.stringify(body);
  const lines = [`${method} ${path} HTTP/1.1`, 'Host: localhost'];
  for (const [name, value] of Object.entries(headers)) lines.push(`${name}: ${value}`);
  if (body !== undefined) {
    lines.push('Content-Type: application/json');
    lines.push(`Content-Length: ${String(Buffer.byteLength(payload))}`);
  }
  const answer = new Promise<Answer>((resolve, reject) => {
    let raw = Buffer.alloc(0);
    const onData = (chunk: Buffer): void => {
      raw = Buffer.concat([raw, chunk]);
      const end = raw.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = raw.subarray(0, end).toString('latin1');
      const length = Number(/\r\ncontent-length: *(\d+)/i.exec(head)?.[1] ?? '0');
      if (raw.length < end + 4 + length) return;
      socket.off('data', onData);
      socket.off('close', onClose);
      const text = raw.subarray(end + 4, end + 4 + length).toString('utf8');
      resolve({
        status: Number(head.split(' ')[1]),
        json: text === '' ? {} : (JSON.parse(text) as Record<string, unknown>),
      });
    };
    const onClose = (): void => {
      reject(new Error(`closed before an answer to ${method} ${path}`));
    };
    socket.on('data', onData);
    socket.once('close', onClose);
  });
  socket.write(`${lines.join('\r\n')}\r\n\r\n${payload}`);
  return answer;
}

/** Resolves once the wall clock is past `instant`: the event a certificate's expiry is. */
async function pastInstant(instant: Date): Promise<void> {
  while (Date.now() <= instant.getTime()) {
    await new Promise((resolve) => setTimeout(resolve, instant.getTime() + 1 - Date.now()));
  }
}

/** A certificate for scada-1 whose validity ends `ms` from now, at a whole second. */
async function shortLived(ms: number): Promise<{ cert: Pem; notAfter: Date }> {
  const notAfter = new Date(Math.ceil((Date.now() + ms) / 1_000) * 1_000);
  return { cert: await pki.client('scada-1', { notAfter }), notAfter };
}

const writes = (): number => stack.plant.device('v1').counters.writesReceived;

describe('a client certificate within its validity', () => {
  it('authenticates on a resumed TLS 1.3 session as on a full handshake', async () => {
    const cert = await pki.client('scada-1');
    const first = await open(cert);
    expect((await request(first.socket, 'GET', '/v1/devices')).status).toBe(200);
    const ticket = await first.session();
    first.socket.destroy();
    const resumed = await open(cert, ticket);
    expect(resumed.socket.isSessionReused(), 'the session was resumed').toBe(true);
    expect((await request(resumed.socket, 'GET', '/v1/devices')).status).toBe(200);
    resumed.socket.destroy();
  });
});

describe('a client certificate past its notAfter', () => {
  it('is refused 401 on a TLS 1.3 session resumed from a ticket issued while it was valid; nothing is journaled or written', async () => {
    const { cert, notAfter } = await shortLived(3_000);
    const first = await open(cert);
    expect((await request(first.socket, 'GET', '/v1/devices')).status).toBe(200);
    const ticket = await first.session();
    first.socket.destroy();

    // OpenSSL compares notAfter with the time in whole seconds: within the second after it, a
    // full handshake still verifies (and the request is then refused by the per-request check,
    // in other words: seen in CI). A second past it, the handshake fails verification.
    await pastInstant(new Date(notAfter.getTime() + 1_000));
    // A full handshake with it now fails OpenSSL's verification: the certificate is expired.
    const fresh = await open(cert);
    const refusedFresh = await request(fresh.socket, 'GET', '/v1/devices');
    expect(refusedFresh.status).toBe(401);
    expect(String(refusedFresh.json.detail)).toMatch(/CERT_HAS_EXPIRED/);
    fresh.socket.destroy();

    const resumed = await open(cert, ticket);
    expect(resumed.socket.isSessionReused(), 'the session was resumed').toBe(true);
    const listed = await request(resumed.socket, 'GET', '/v1/devices');
    expect(listed.status).toBe(401);
    expect(listed.json).toMatchObject({ status: 401, code: 'UNAUTHORIZED' });
    expect(String(listed.json.detail)).toMatch(/client certificate expired/);

    const key = `resumed-${randomUUID()}`;
    const before = writes();
    const command = await request(
      resumed.socket,
      'POST',
      '/v1/commands',
      { 'Idempotency-Key': key },
      { device: 'v1', action: 'open' },
    );
    expect(command.status).toBe(401);
    expect(stack.pipeline.get({ scope: 'scada', key })).toBeUndefined();
    expect(writes()).toBe(before);
    resumed.socket.destroy();

    // The operator learns which certificate is being presented past its validity.
    const warned = log.lines
      .map((l) => JSON.parse(l) as Record<string, unknown>)
      .filter((l) => l.msg === 'client certificate refused: outside its validity');
    expect(warned.length).toBeGreaterThan(0);
    expect(warned[0]).toMatchObject({ level: 'warn', cn: 'scada-1', resumed: true });
  });

  it('is refused 401 on a connection kept alive since its handshake', async () => {
    const { cert, notAfter } = await shortLived(2_000);
    const kept = await open(cert);
    expect((await request(kept.socket, 'GET', '/v1/devices')).status).toBe(200);
    await pastInstant(notAfter);
    const later = await request(kept.socket, 'GET', '/v1/devices');
    expect(later.status).toBe(401);
    expect(String(later.json.detail)).toMatch(/client certificate expired/);
    // A token on the same connection still decides for itself.
    const byToken = await request(kept.socket, 'GET', '/v1/devices', {
      Authorization: `Bearer ${TOKENS.plant}`,
    });
    expect(byToken.status).toBe(200);
    kept.socket.destroy();
  });
});
