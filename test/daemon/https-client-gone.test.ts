import { once } from 'node:events';
import { connect as tcpConnect, type Socket } from 'node:net';
import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeTokenSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * Clients a plant network produces, on the real sluiced (in this process) with sluice-sim and its
 * SQLite journal: one whose connection is reset while its command runs, one that half-closes its
 * connection once its request is sent (a FIN, with TLS's close_notify or without) and waits for
 * the answer, one whose request is followed by bytes that are no request (a `Content-Length` a
 * few bytes short of what it sent), and one that declares a coding of its body that the gateway
 * does not undo. Ground truth: the valve's write log, the journal file read through a
 * connection of its own, the bytes the client received, and the daemon's log and metrics.
 */

const TOKEN = 'client-gone-token';

let plant: Plant;
let daemon: Daemon;
let cert: string;
let dir: string;
let cleanup: () => void;
const log = recordingLogger();

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-client-gone-'));
  // A stroke long enough to hang up while the command waits for its readback.
  plant = await startModbusPlant({
    v1: { profile: 'valve', base: 0, travelMs: 800 },
    v2: { profile: 'valve', base: 20, travelMs: 800 },
    v3: { profile: 'valve', base: 40, travelMs: 100 },
    v4: { profile: 'valve', base: 60, travelMs: 100 },
    v5: { profile: 'valve', base: 80, travelMs: 800 },
    v6: { profile: 'valve', base: 100, travelMs: 100 },
  });
  let configPath: string;
  ({ configPath, cert } = await writeTokenSite(dir, plant, {
    gatewayId: 'client-gone',
    token: TOKEN,
  }));
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), { logger: log.logger });
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

interface Client {
  readonly tls: TLSSocket;
  /** The TCP connection under it: a reset is sent on it (a TLS socket cannot send one). */
  readonly tcp: Socket;
  /** Everything received so far. */
  received(): string;
}

async function open(): Promise<Client> {
  const tcp = tcpConnect({ host: '127.0.0.1', port: daemon.https!.port });
  const tls = connect({ socket: tcp, ca: cert, servername: 'localhost' });
  let text = '';
  tls.setEncoding('utf8');
  tls.on('data', (chunk: string) => (text += chunk));
  tls.on('error', () => undefined);
  tcp.on('error', () => undefined);
  await once(tls, 'secureConnect');
  return { tls, tcp, received: () => text };
}

/** Issued once: a retry sends the very same command. */
const issuedAt = new Date().toISOString();

function command(key: string, device: string): string {
  const body = JSON.stringify({ device, action: 'open', issuedAt });
  return (
    `POST /v1/commands HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${TOKEN}\r\n` +
    `Idempotency-Key: ${key}\r\nContent-Type: application/json\r\n` +
    `Content-Length: ${String(Buffer.byteLength(body))}\r\n\r\n${body}`
  );
}

/** The command as the journal file holds it, with its history. */
function journaled(key: string): { state: string; code: string | null; steps: string[] }[] {
  const journal = SqliteJournal.open({ path: join(dir, 'state', 'journal.db'), readonly: true });
  try {
    return journal.findByKey(key).map((record) => ({
      state: record.state,
      code: record.code,
      steps: journal.history(record).map((event) => `${String(event.from)}->${event.to}`),
    }));
  } finally {
    journal.close();
  }
}

function linesOf(key: string): Record<string, unknown>[] {
  return log.lines.filter((line) => line.key === key);
}

/** The status lines of the answers in `text`, in the order they came. */
function statuses(text: string): string[] {
  return [...text.matchAll(/HTTP\/1\.1 (\d{3}) /g)].map((m) => m[1]!);
}

/**
 * The Connection header of each answer in `text`, in the order they came (null: none). Answers
 * are cut at their status lines: no body here holds one.
 */
function connectionHeaders(text: string): (string | null)[] {
  return text
    .split(/(?=HTTP\/1\.1 \d{3} )/)
    .filter((answer) => answer.startsWith('HTTP/1.1 '))
    .map((answer) => {
      const head = answer.slice(0, answer.indexOf('\r\n\r\n'));
      return /^connection: *(.*)$/im.exec(head)?.[1]?.trim() ?? null;
    });
}

/** `sluice_https_clients_gone_total` as `GET /metrics` serves it now. */
async function clientsGone(): Promise<number> {
  const client = await open();
  client.tls.write('GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n');
  await once(client.tls, 'close');
  const count = /^sluice_https_clients_gone_total (\d+)$/m.exec(client.received())?.[1];
  if (count === undefined) throw new Error('GET /metrics has no sluice_https_clients_gone_total');
  return Number(count);
}

describe('a client whose connection is reset while its command runs', () => {
  for (const [how, device] of [['reset', 'v2']] as const) {
    it(`(${how}) the command runs once and is journaled; the log says the client left, at info, with key and device, and it is counted; a retry gets the stored result`, async () => {
      const key = `gone-${how}`;
      const valve = plant.device(device);
      const goneBefore = await clientsGone();
      const client = await open();
      client.tls.write(command(key, device));
      // The write is in flight: the command waits for its readback.
      await until(() => (valve.writeLog.length === 1 ? true : undefined), 5_000, 'the write');
      // A retry on a second connection meanwhile: in flight, 409 IN_PROGRESS (SPEC §4).
      const early = await open();
      early.tls.write(command(key, device).replace('\r\n\r\n', '\r\nConnection: close\r\n\r\n'));
      await once(early.tls, 'close');
      expect(statuses(early.received())).toEqual(['409']);
      expect(early.received()).toContain('"code":"IN_PROGRESS"');
      client.tcp.resetAndDestroy();
      const gone = await until(
        () =>
          linesOf(key).find((line) => String(line.msg).startsWith('HTTPS client gone')) ??
          undefined,
        5_000,
        'the log line of the client gone',
      );
      expect(gone).toMatchObject({ level: 30, key, device });
      expect(await clientsGone()).toBe(goneBefore + 1);
      await until(() => (journaled(key)[0]?.state === 'confirmed' ? true : undefined));
      expect(journaled(key)).toEqual([
        {
          state: 'confirmed',
          code: 'OK',
          // The retry in flight is noted in the history, and changed nothing.
          steps: [
            'null->accepted',
            'accepted->dispatched',
            'dispatched->dispatched',
            'dispatched->confirmed',
          ],
        },
      ]);
      // Nothing was sent to that client, and the log never says it was.
      expect(client.received()).toBe('');
      expect(linesOf(key).filter((line) => line.msg === 'HTTPS command answered')).toEqual([]);
      expect(linesOf(key).filter((line) => Number(line.level) >= 40)).toEqual([]);

      const retry = await open();
      retry.tls.write(command(key, device).replace('\r\n\r\n', '\r\nConnection: close\r\n\r\n'));
      await once(retry.tls, 'close');
      expect(statuses(retry.received())).toEqual(['200']);
      expect(retry.received()).toMatch(/idempotent-replayed: true/i);
      expect(valve.writeLog).toHaveLength(1);
    });
  }
});

describe('a client that half-closes its connection once its request is sent, and reads on', () => {
  // Node ended such a connection at its FIN with the answer still owed: the command was
  // journaled and written, its client got nothing (not even a status line).
  it('with close_notify and a FIN (TLS end): answered 200 with its result, then the connection closed; one write', async () => {
    const key = 'half-closed-tls';
    const valve = plant.device('v1');
    const goneBefore = await clientsGone();
    const client = await open();
    client.tls.write(command(key, 'v1'));
    client.tls.end();
    // The server closes once the answer is written: 'end' on the client's reading side.
    await once(client.tls, 'close');
    expect(statuses(client.received())).toEqual(['200']);
    // The answer says the connection closes after it (RFC 9112 §9.6): it is the last owed.
    expect(connectionHeaders(client.received())).toEqual(['close']);
    expect(client.received()).toContain(`"key":"${key}"`);
    expect(client.received()).toContain('"state":"confirmed"');
    expect(journaled(key)).toEqual([
      {
        state: 'confirmed',
        code: 'OK',
        steps: ['null->accepted', 'accepted->dispatched', 'dispatched->confirmed'],
      },
    ]);
    expect(valve.writeLog).toHaveLength(1);
    // Said so: a client that closed its socket with a FIN looks the same, and lost its answer.
    expect(linesOf(key).find((line) => line.msg === 'HTTPS command answered')).toMatchObject({
      level: 30,
      key,
      device: 'v1',
      halfClosed: true,
    });
    expect(linesOf(key).filter((line) => String(line.msg).startsWith('HTTPS client gone'))).toEqual(
      [],
    );
    expect(await clientsGone()).toBe(goneBefore);
  });

  it('a FIN alone (no close_notify) after two pipelined commands: both answered, in order, then the connection closed; one write each', async () => {
    const client = await open();
    // Both requests handed to the TCP connection before its sending side is shut.
    await new Promise<void>((resolve) => {
      client.tls.write(
        command('half-closed-tcp-1', 'v5') + command('half-closed-tcp-2', 'v6'),
        () => {
          resolve();
        },
      );
    });
    // shutdown(SHUT_WR) on the socket under the TLS session, no close_notify first: as a client
    // whose TLS library does not send one at a half-close.
    client.tcp.end();
    await once(client.tls, 'close');
    expect(statuses(client.received())).toEqual(['200', '200']);
    // Only the last answer says close: on the first, the client would take the connection to
    // end before the second answer, and Node would end it there.
    expect(connectionHeaders(client.received())).toEqual([null, 'close']);
    const first = client.received().indexOf('"key":"half-closed-tcp-1"');
    const second = client.received().indexOf('"key":"half-closed-tcp-2"');
    expect(first).toBeGreaterThan(-1);
    expect(second).toBeGreaterThan(first);
    for (const key of ['half-closed-tcp-1', 'half-closed-tcp-2']) {
      expect(journaled(key)[0]).toMatchObject({ state: 'confirmed', code: 'OK' });
    }
    expect(plant.device('v5').writeLog).toHaveLength(1);
    expect(plant.device('v6').writeLog).toHaveLength(1);
  });
});

describe('bytes after a command that are no request', () => {
  it('the command is answered first, then the bytes refused and the connection closed; one write', async () => {
    const key = 'stray-bytes';
    const valve = plant.device('v3');
    const client = await open();
    // A Content-Length that leaves out the space and line end the client sent after its body.
    client.tls.write(`${command(key, 'v3')} \r\n`);
    await once(client.tls, 'close');
    // In that order: the client reads the first answer as its command's.
    expect(statuses(client.received())).toEqual(['200', '501']);
    expect(client.received()).toContain(`"key":"${key}"`);
    expect(journaled(key)[0]).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(valve.writeLog).toHaveLength(1);
  });
});

describe('a body in a coding the gateway does not undo', () => {
  it('Content-Encoding is 415, a transfer coding besides chunked 501: nothing journaled, nothing written, the connection serves on', async () => {
    const valve = plant.device('v4');
    // Plain JSON under the header: was read as the command all the same, and written.
    const cases = [
      { key: 'coded-gzip', header: 'Content-Encoding: gzip', status: '415' },
      { key: 'coded-br', header: 'Content-Encoding: identity, br', status: '415' },
      { key: 'coded-transfer', header: 'Transfer-Encoding: gzip, chunked', status: '501' },
    ];
    const client = await open();
    for (const { key, header } of cases) {
      const plain = command(key, 'v4');
      const chunked = header.startsWith('Transfer-Encoding');
      const [head, body] = plain.split('\r\n\r\n') as [string, string];
      const framed = chunked
        ? `${head.replace(/Content-Length: \d+/, header)}\r\n\r\n` +
          `${Buffer.byteLength(body).toString(16)}\r\n${body}\r\n0\r\n\r\n`
        : `${head}\r\n${header}\r\n\r\n${body}`;
      client.tls.write(framed);
    }
    // And then a command the gateway can read, on the same connection.
    client.tls.write(
      command('coded-none', 'v4').replace('\r\n\r\n', '\r\nConnection: close\r\n\r\n'),
    );
    await once(client.tls, 'close');
    expect(statuses(client.received())).toEqual([...cases.map((c) => c.status), '200']);
    expect(client.received()).toContain('which the gateway does not decode');
    for (const { key } of cases) expect(journaled(key)).toEqual([]);
    expect(valve.writeLog).toHaveLength(1);
  });
});

describe('Expect', () => {
  it('100-continue: 100, then the answer; anything else 417 as a problem document, nothing journaled', async () => {
    const valve = plant.device('v4');
    const writes = valve.writeLog.length;
    const continued = await open();
    const [head, body] = command('expect-continue', 'v4').split('\r\n\r\n') as [string, string];
    continued.tls.write(`${head}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n`);
    await until(() => (continued.received().startsWith('HTTP/1.1 100 ') ? true : undefined));
    continued.tls.write(body);
    await once(continued.tls, 'close');
    expect(statuses(continued.received())).toEqual(['100', '200']);
    expect(journaled('expect-continue')).toHaveLength(1);

    const other = await open();
    other.tls.write(
      command('expect-other', 'v4').replace('\r\n\r\n', '\r\nExpect: 200-ok\r\n\r\n'),
    );
    await once(other.tls, 'close');
    // Node's own 417 had no body, no Cache-Control: no-store, and was counted nowhere.
    expect(statuses(other.received())).toEqual(['417']);
    expect(other.received()).toMatch(/content-type: application\/problem\+json/i);
    expect(other.received()).toMatch(/cache-control: no-store/i);
    expect(other.received()).toContain('"code":"EXPECTATION_FAILED"');
    expect(journaled('expect-other')).toEqual([]);
    expect(valve.writeLog).toHaveLength(writes);
  });
});
