import { join } from 'node:path';
import { connect, type TLSSocket } from 'node:tls';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeTokenSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { recordingLogger } from '../helpers/recording-logger.js';

/**
 * A command POSTed while the daemon stops is answered 503 SHUTTING_DOWN before any route runs
 * (https-server.ts), and docs/http-api.md counts it among the commands refused
 * (`sluice_commands_received_total{intake="https",outcome="refused"}`: "the gateway stopping").
 * It was answered and never counted: a client hammering a stopping gateway left the counter flat.
 * A real daemon on a real journal; the request's headers begin before the stop (so the
 * connection is not idle and survives it) and end after it. Its log line is info, with its
 * key, as the MQTT intake logs a command it leaves with the broker while stopping: every stop
 * answers so the requests that come meanwhile, which is no fault to warn of.
 */

const TOKEN = 'stopping-metrics-token';

let plant: Plant;
let daemon: Daemon;
let cert: string;
let dir: string;
let cleanup: () => void;
const recorded = recordingLogger();

beforeAll(async () => {
  const made = tempDir('sluice-metrics-stopping-');
  ({ dir, cleanup } = made);
  plant = await startModbusPlant({ v1: { profile: 'valve', base: 0, travelMs: 200 } });
  let configPath: string;
  ({ configPath, cert } = await writeTokenSite(dir, plant, {
    gatewayId: 'stopping',
    token: TOKEN,
  }));
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: recorded.logger,
  });
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
}, 30_000);

/** `sluice_commands_received_total{intake="https",outcome}` read from the daemon's registry. */
async function received(outcome: string): Promise<number> {
  const metric = await daemon.metrics.registry
    .getSingleMetric('sluice_commands_received_total')
    ?.get();
  const sample = metric?.values.find(
    (v) => v.labels.intake === 'https' && v.labels.outcome === outcome,
  );
  return sample?.value ?? 0;
}

/** Whether a new TLS connection to the intake is refused: its listener is closed. */
function listenerClosed(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: '127.0.0.1', port, ca: cert, servername: 'localhost' }, () => {
      socket.destroy();
      resolve(false);
    });
    socket.once('error', (error: NodeJS.ErrnoException) => {
      resolve(error.code === 'ECONNREFUSED');
    });
  });
}

it('counts a command refused 503 SHUTTING_DOWN as refused, and journals nothing', async () => {
  const port = daemon.https!.port;
  const socket: TLSSocket = await new Promise((resolve, reject) => {
    const s = connect({ host: '127.0.0.1', port, ca: cert, servername: 'localhost' }, () => {
      resolve(s);
    });
    s.once('error', reject);
  });
  let answer = '';
  socket.setEncoding('utf8');
  socket.on('data', (chunk: string) => (answer += chunk));
  const closed = new Promise<void>((resolve) => {
    socket.once('close', () => {
      resolve();
    });
  });
  const body = JSON.stringify({ device: 'v1', action: 'open' });
  // The request has begun: the stop closes idle connections only.
  socket.write(`POST /v1/commands HTTP/1.1\r\nHost: 127.0.0.1\r\n`);
  // A whole request answered on another connection after it: the daemon has read those bytes.
  const health = await httpsRequest({ port, ca: cert, token: '' }, 'GET', '/healthz');
  expect(health.status).toBe(200);
  expect(await received('refused')).toBe(0);

  const stopped = daemon.stop();
  // The listener is closed when the intake's stop has begun (its requests answer 503 from then).
  await until(
    async () => ((await listenerClosed(port)) ? true : undefined),
    5_000,
    'listener closed',
  );
  socket.write(
    `Authorization: Bearer ${TOKEN}\r\nIdempotency-Key: stopping-1\r\n` +
      `Content-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
  );
  await closed;
  await stopped;
  expect(answer).toMatch(/^HTTP\/1\.1 503 /);
  expect(answer).toContain('"code":"SHUTTING_DOWN"');
  expect(await received('refused')).toBe(1);
  expect(await received('new')).toBe(0);
  const refusals = recorded.lines.filter((l) => l.status === 503);
  expect(refusals).toEqual([
    expect.objectContaining({
      level: 30,
      code: 'SHUTTING_DOWN',
      key: 'stopping-1',
      route: '/v1/commands',
      msg: 'HTTPS request refused: the gateway is stopping',
    }),
  ]);

  const journal = SqliteJournal.open({ path: join(dir, 'state', 'journal.db') });
  try {
    expect(journal.list({})).toEqual([]);
  } finally {
    journal.close();
  }
  // Nothing was written to the valve either.
  expect(plant.device('v1').writeLog).toEqual([]);
}, 30_000);
