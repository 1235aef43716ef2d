import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { request } from 'node:http';
import { connect, type Socket } from 'node:net';
import { join } from 'node:path';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { systemClock, type Clock } from '../../src/core/clock.js';
import type { Logger } from '../../src/core/logger.js';
import { AdminEndpoint } from '../../src/daemon/admin.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { seedOrphan, startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';

/**
 * The admin endpoint's Unix socket over a daemon's life, on a real daemon against sluice-sim:
 * a second sluiced started by mistake with the same configuration must not take (and, failing
 * to start, delete) the running daemon's socket; a socket file left by a killed daemon is
 * replaced, a path naming a file of another kind is refused
 * and left alone; a connection that brings no request is closed, and no more than a bounded number
 * are held at once.
 */

let plant: Plant;
let daemon: Daemon;
let dir: string;
let cleanup: () => void;
let configPath: string;
let socket: string;
let tokenFile: string;
/** Keys are printable ASCII (SPEC §2): these two are path segments a URL parser resolves away. */
const DOT_KEYS = ['.', '..'];
/** A command resolved while the endpoint stops. */
const DRAIN_KEY = 'resolved-at-stop';

/** One request to an admin socket with the daemon's token; the status and the body as text. */
function adminRequest(
  method: 'GET' | 'POST',
  urlPath: string,
  body?: string,
  path = socket,
): Promise<{ status: number; body: string }> {
  const token = readFileSync(tokenFile, 'utf8').trim();
  return new Promise((resolve, reject) => {
    const req = request(
      {
        socketPath: path,
        method,
        path: urlPath,
        headers: {
          authorization: `Bearer ${token}`,
          ...(body === undefined
            ? {}
            : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) }),
        },
        agent: false,
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, body: text });
        });
      },
    );
    req.once('error', reject);
    req.end(body);
  });
}

function health(path = socket): Promise<{ status: number; body: string }> {
  return adminRequest('GET', '/v1/health', undefined, path);
}

/** Opens a connection to the socket and sends nothing; resolves once it is connected. */
function idleConnection(path: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const c = connect(path);
    c.once('connect', () => {
      resolve(c);
    });
    c.once('error', reject);
  });
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-admin-socket-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 200 } });
  configPath = await writeDaemonSite(dir, plant, 'adminsock');
  // Commands whose keys are dot segments, on a valve no longer configured: open until resolved.
  mkdirSync(join(dir, 'state'), { recursive: true });
  for (const key of [...DOT_KEYS, DRAIN_KEY]) {
    seedOrphan(join(dir, 'state', 'journal.db'), Date.now(), {
      scope: 'plant',
      key,
      device: 'removed-valve',
      intake: 'https',
    });
  }
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
  socket = join(dir, 'state', 'admin.sock');
  tokenFile = join(dir, 'state', 'admin.token');
}, 30_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
});

describe('admin socket', () => {
  it('a second sluiced with the same configuration leaves the running daemon’s socket alone', async () => {
    expect((await health()).status).toBe(200);
    // The second daemon finds the HTTPS port taken (the first holds it) and gives up; before
    // that it reaches the admin endpoint, which must not take the live socket from the first.
    // It is given a journal of its own: on the first's journal it would refuse at once (one
    // daemon per journal, test/daemon/single-daemon.test.ts), before the admin endpoint.
    const port = daemon.https?.port;
    expect(port).toBeGreaterThan(0);
    const otherJournal = join(dir, 'second-journal.yaml');
    writeFileSync(
      otherJournal,
      stringify({
        ...(parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>),
        journal: { path: 'state/second.db' },
      }),
    );
    const second = loadConfig(otherJournal, { env: { SLUICE_HTTPS_PORT: String(port) } });
    await expect(Daemon.start(second, { logger: pino({ level: 'silent' }) })).rejects.toThrow(
      /EADDRINUSE/,
    );
    // The running daemon is still reachable by sluicectl.
    expect(existsSync(socket)).toBe(true);
    const answer = await health();
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toHaveProperty('checks');
  });

  it('a socket file left by a killed daemon is replaced', async () => {
    const stale = join(dir, 'stale.sock');
    // A process that listens on the path and is killed: its socket file stays, nobody answers.
    const child = spawn(
      process.execPath,
      [
        '-e',
        `require('net').createServer().listen(process.argv[1], () => process.stdout.write('up\\n'))`,
        stale,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    await new Promise<void>((resolve) =>
      child.stdout.once('data', () => {
        resolve();
      }),
    );
    const exited = new Promise<void>((resolve) =>
      child.once('exit', () => {
        resolve();
      }),
    );
    child.kill('SIGKILL');
    await exited;
    expect(existsSync(stale)).toBe(true);
    await expect(idleConnection(stale)).rejects.toMatchObject({ code: 'ECONNREFUSED' });

    const endpoint = adminOn(stale);
    await endpoint.start();
    try {
      expect((await health(stale)).status).toBe(200);
    } finally {
      await endpoint.stop();
    }
    expect(existsSync(stale)).toBe(false);
  });

  it('a path that names a file of another kind is refused and left as it was, not removed', async () => {
    const notASocket = join(dir, 'site-notes.txt');
    writeFileSync(notASocket, 'the operator’s own file\n');
    const endpoint = adminOn(notASocket);
    await expect(endpoint.start()).rejects.toThrow(/names an existing file that is not a socket/);
    expect(readFileSync(notASocket, 'utf8')).toBe('the operator’s own file\n');
  });

  it('closes a connection that brings no request', async () => {
    const path = join(dir, 'idle.sock');
    const endpoint = adminOn(path, { firstRequestTimeoutMs: 300 });
    await endpoint.start();
    const silent = await idleConnection(path);
    try {
      // Connected, never a byte sent: the daemon closes it (bounded wait, no fixed sleep).
      await until(
        () => (silent.destroyed || silent.readableEnded ? true : undefined),
        5_000,
        'closed',
      );
      expect((await health(path)).status).toBe(200);
    } finally {
      silent.destroy();
      await endpoint.stop();
    }
  });

  it('answers 408 and closes a connection whose request body does not come', async () => {
    const path = join(dir, 'slow-body.sock');
    const endpoint = adminOn(path, { firstRequestTimeoutMs: 300 });
    await endpoint.start();
    const slow = await idleConnection(path);
    let answer = '';
    slow.setEncoding('utf8');
    slow.on('data', (chunk: string) => (answer += chunk));
    try {
      // The request's head, with the token, and a body announced that never comes: it would
      // hold one of the endpoint's connections for Node's 5 min request timeout.
      const token = readFileSync(tokenFile, 'utf8').trim();
      slow.write(
        `POST /v1/commands/k/resolve HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer ${token}\r\n` +
          'Content-Type: application/json\r\nContent-Length: 64\r\n\r\n{"as":',
      );
      await until(
        () => (slow.destroyed || slow.readableEnded ? true : undefined),
        10_000,
        'closed',
      );
      expect(answer).toMatch(/^HTTP\/1\.1 408 /);
      expect(answer).toContain('"code":"REQUEST_TIMEOUT"');
      expect((await health(path)).status).toBe(200);
    } finally {
      slow.destroy();
      await endpoint.stop();
    }
  });

  it('holds a bounded number of connections at once; those past it are closed at once', async () => {
    const path = join(dir, 'many.sock');
    const endpoint = adminOn(path, { maxConnections: 4 });
    await endpoint.start();
    const held: Socket[] = [];
    try {
      for (let i = 0; i < 6; i++) held.push(await idleConnection(path));
      // The two past the limit are closed long before any first-request timeout (10 s).
      await until(
        () => (held.slice(4).every((s) => s.destroyed || s.readableEnded) ? true : undefined),
        5_000,
        'the two past the limit closed',
      );
      expect(held.slice(0, 4).map((s) => s.destroyed || s.readableEnded)).toEqual([
        false,
        false,
        false,
        false,
      ]);
      // Once those clients let go, sluicectl is answered again.
      for (const s of held) s.destroy();
      await until(
        () =>
          health(path).then(
            (a) => (a.status === 200 ? true : undefined),
            () => undefined,
          ),
        5_000,
        'answered again',
      );
    } finally {
      for (const s of held) s.destroy();
      await endpoint.stop();
    }
  });

  it('warns about refused connections at most once a minute on the monotonic clock, whatever the wall clock does', async () => {
    const path = join(dir, 'refused.sock');
    // The test's clock: its wall and monotonic readings step apart (SPEC §6).
    const shift = { wall: 0, mono: 0 };
    const clock: Clock = {
      ...systemClock,
      now: () => systemClock.now() + shift.wall,
      elapsed: () => systemClock.elapsed() + shift.mono,
    };
    const warnings: { refused: number }[] = [];
    const logger = pino(
      { level: 'warn' },
      {
        write(line: string) {
          const entry = JSON.parse(line) as { msg: string; refused: number };
          if (entry.msg.startsWith('admin connections refused')) warnings.push(entry);
        },
      },
    );
    const endpoint = adminOn(path, { maxConnections: 1, clock, logger });
    await endpoint.start();
    const held: Socket[] = [];
    /** One connection past the limit: closed by the daemon at once. */
    const refuseOne = async (): Promise<void> => {
      const s = await idleConnection(path);
      held.push(s);
      await until(() => (s.destroyed || s.readableEnded ? true : undefined), 5_000, 'closed');
    };
    try {
      held.push(await idleConnection(path));
      await refuseOne();
      expect(warnings.map((w) => w.refused)).toEqual([1]);
      // The gateway's clock stepped an hour forward: no minute has passed, no second warning.
      shift.wall += 3_600_000;
      await refuseOne();
      expect(warnings).toHaveLength(1);
      // Stepped two hours back, and a minute passes: the next refusal warns, with the count
      // since the last warning (on the wall clock it was silenced for the hour of the step).
      shift.wall -= 7_200_000;
      shift.mono += 61_000;
      await refuseOne();
      expect(warnings.map((w) => w.refused)).toEqual([1, 2]);
    } finally {
      for (const s of held) s.destroy();
      await endpoint.stop();
    }
  });

  it('a stop lets a request in flight finish: the operator gets the answer to a resolve it made', async () => {
    const path = join(dir, 'drain.sock');
    const endpoint = adminOn(path, { drainMs: 20_000 });
    await endpoint.start();
    const body = JSON.stringify({ as: 'failed', by: 'alice@gw', reason: 'valve removed' });
    const token = readFileSync(tokenFile, 'utf8').trim();
    const stop: { done?: Promise<void> } = {};
    const answer = await new Promise<{ status: number; body: string }>((resolve, reject) => {
      const req = request(
        {
          socketPath: path,
          method: 'POST',
          path: `/v1/commands/${DRAIN_KEY}/resolve`,
          headers: {
            authorization: `Bearer ${token}`,
            'content-type': 'application/json',
            'content-length': Buffer.byteLength(body),
            // The server's 100 Continue says it has taken the request: it is in flight.
            expect: '100-continue',
          },
          agent: false,
        },
        (res) => {
          let text = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => (text += c));
          res.on('end', () => {
            resolve({ status: res.statusCode ?? 0, body: text });
          });
        },
      );
      req.once('error', reject);
      req.once('continue', () => {
        // The daemon stops (SIGTERM) while the request is in flight; its body comes after.
        stop.done = endpoint.stop();
        setImmediate(() => req.end(body));
      });
    });
    await stop.done;
    expect(answer.status).toBe(200);
    expect(JSON.parse(answer.body)).toMatchObject({
      result: { key: DRAIN_KEY, state: 'failed', code: 'RESOLVED_BY_OPERATOR' },
    });
    // Ground truth: the journal.
    const journal = SqliteJournal.open({ path: join(dir, 'state', 'journal.db'), readonly: true });
    try {
      expect(journal.get({ scope: 'plant', key: DRAIN_KEY })).toMatchObject({
        state: 'failed',
        code: 'RESOLVED_BY_OPERATOR',
      });
    } finally {
      journal.close();
    }
    // Stopped: the socket is gone and nobody answers there.
    expect(existsSync(path)).toBe(false);
  });

  it('answers an oversized body 413 and a malformed key 400, as problems', async () => {
    const raw = (path: string, body: string): Promise<{ status: number; body: string }> =>
      adminRequest('POST', path, body);
    const big = await raw(
      '/v1/commands/k/resolve',
      JSON.stringify({ as: 'failed', by: 'x', reason: 'r'.repeat(64 * 1024) }),
    );
    expect(big.status).toBe(413);
    expect(JSON.parse(big.body)).toMatchObject({ code: 'PAYLOAD_TOO_LARGE' });
    const bad = await raw('/v1/commands/%E0%A4%A/reverify', JSON.stringify({ by: 'x' }));
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.body)).toMatchObject({ code: 'INVALID_REQUEST' });
  });

  it('takes "." and ".." as the keys they are, not as path steps', async () => {
    for (const key of DOT_KEYS) {
      // The path sluicectl sends (encodeURIComponent leaves dots as they are).
      const answer = await adminRequest(
        'POST',
        `/v1/commands/${encodeURIComponent(key)}/resolve`,
        JSON.stringify({ as: 'failed', by: 'alice@gw', reason: 'valve removed' }),
      );
      expect({ key, status: answer.status, body: answer.body }).toMatchObject({
        key,
        status: 200,
      });
    }
    // Ground truth: the journal.
    const journal = SqliteJournal.open({ path: join(dir, 'state', 'journal.db'), readonly: true });
    try {
      for (const key of DOT_KEYS) {
        expect(journal.get({ scope: 'plant', key })).toMatchObject({
          state: 'failed',
          code: 'RESOLVED_BY_OPERATOR',
        });
      }
    } finally {
      journal.close();
    }
  });
});

function adminOn(
  path: string,
  limits: {
    drainMs?: number;
    firstRequestTimeoutMs?: number;
    maxConnections?: number;
    clock?: Clock;
    logger?: Logger;
  } = {},
): AdminEndpoint {
  return AdminEndpoint.create({
    socket: path,
    tokenFile,
    pipeline: daemon.pipeline,
    gatewayClock: {
      status: () => ({ source: 'none', state: 'UNKNOWN' }),
    } as never,
    policy: { onUnsynced: 'reject', maxControllerSkewMs: 2000 },
    readiness: () => daemon.readiness(),
    clock: systemClock,
    logger: pino({ level: 'silent' }),
    ...limits,
  });
}
