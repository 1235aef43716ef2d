import { writeFileSync } from 'node:fs';
import { request } from 'node:https';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import BetterSqlite3 from 'better-sqlite3';
import { pino } from 'pino';
import { generate } from 'selfsigned';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { startSluiced } from '../config/sluiced.js';
import { tempDir } from '../helpers/fixtures.js';
import {
  TestClient,
  mosquittoAvailable,
  startMosquitto,
  until,
  type Mosquitto,
  type Received,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';

/**
 * The whole daemon, built by its composition root from a configuration file: a real
 * simulated plant, a real mosquitto, HTTPS on an ephemeral port. The same key over HTTPS and
 * MQTT is one command; an unwritable journal refuses both intakes and writes nothing.
 */

const TOKEN = 'site-token';
const quiet = pino({ level: 'silent' });
const real = mosquittoAvailable();
let plant: Plant;
let broker: Mosquitto;
let dir: string;
let cleanup: () => void;
let cert: string;
let configPath: string;
/**
 * The same site without its OPC UA PLC, for the sluiced process tests whose subject is not the
 * plant: such a start does not load node-opcua (most of its 2-3 s).
 */
let modbusConfigPath: string;

/** MQTT command messages the daemon's intake counted as refused by the journal. */
async function mqttRefusals(daemon: Daemon): Promise<number> {
  const { values } = await daemon.metrics.mqttMessages.get();
  return values
    .filter((v) => v.labels.outcome === 'journal_unavailable')
    .reduce((sum, v) => sum + v.value, 0);
}

async function https(
  port: number,
  method: string,
  path: string,
  headers: Record<string, string> = {},
  body?: unknown,
): Promise<{ status: number; headers: Record<string, unknown>; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request(
      {
        host: '127.0.0.1',
        port,
        method,
        path,
        ca: cert,
        headers: { authorization: `Bearer ${TOKEN}`, ...headers },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => {
          resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text });
        });
      },
    );
    req.once('error', reject);
    if (body !== undefined) {
      req.setHeader('content-type', 'application/json');
      req.end(JSON.stringify(body));
    } else req.end();
  });
}

beforeAll(async () => {
  if (!real) return;
  ({ dir, cleanup } = tempDir('sluice-daemon-'));
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          devices: { 'inlet-valve': { profile: 'valve', base: 0, travelMs: 300 } },
        },
        ua: {
          protocol: 'opcua',
          host: '127.0.0.1',
          port: 0,
          devices: { 'outlet-valve': { profile: 'valve', travelMs: 300 } },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  broker = await startMosquitto();
  const pems = await generate([{ name: 'commonName', value: 'localhost' }], {
    keyType: 'ec',
    curve: 'P-256',
    extensions: [{ name: 'subjectAltName', altNames: [{ type: 7, ip: '127.0.0.1' }] }],
  });
  cert = pems.cert;
  writeFileSync(join(dir, 'cert.pem'), pems.cert);
  writeFileSync(join(dir, 'key.pem'), pems.private);
  const inventory = inventoryFor(plant);
  const site = (plcs: readonly string[], stateDir: string): string =>
    stringify({
      gatewayId: 'site',
      stateDir,
      journal: { busyTimeoutMs: 300 },
      https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
      mqtt: { url: broker.url, identity: 'scada', clientId: 'sluice-site-test' },
      opcua: { acceptUnknownCertificates: true },
      identities: { scada: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
      plcs: Object.fromEntries(Object.entries(inventory.plcs).filter(([n]) => plcs.includes(n))),
      devices: Object.fromEntries(
        Object.entries(inventory.devices).filter(([, d]) => plcs.includes(d.plc)),
      ),
    });
  configPath = join(dir, 'sluice.yaml');
  writeFileSync(configPath, site(['mb', 'ua'], 'state'));
  modbusConfigPath = join(dir, 'sluice-modbus.yaml');
  writeFileSync(modbusConfigPath, site(['mb'], 'state-modbus'));
}, 60_000);

afterAll(async () => {
  if (!real) return;
  await broker.close();
  await plant.stop();
  cleanup();
});

describe.runIf(real)('sluiced', () => {
  it('runs both intakes on one journal: one key over HTTPS and MQTT is one command', async () => {
    const daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      monitorIntervalMs: 200,
    });
    const client = await TestClient.connect(broker.url);
    try {
      const port = daemon.https!.port;
      await client.subscribe('sluice/site/#');
      await until(() => (daemon.readiness().ready ? true : undefined), 20_000, 'readiness');
      const ready = await https(port, 'GET', '/readyz');
      expect(ready.status).toBe(200);

      // MQTT commands carry issuedAt (SPEC §5); a retry on the other intake repeats it.
      const issuedAt = new Date().toISOString();
      const first = await https(
        port,
        'POST',
        '/v1/commands',
        { 'idempotency-key': 'both-1' },
        {
          device: 'inlet-valve',
          action: 'open',
          issuedAt,
        },
      );
      expect(first.status).toBe(200);
      await client.publish('sluice/site/cmd/inlet-valve', {
        key: 'both-1',
        action: 'open',
        issuedAt,
      });
      const replay = await client.waitFor(
        (m) => m.topic === 'sluice/site/result/inlet-valve' && m.json().replayed === true,
        10_000,
        'MQTT replay',
      );
      expect(replay.json()).toMatchObject({ key: 'both-1', state: 'confirmed' });
      expect(plant.device('inlet-valve').counters.writesReceived).toBe(1);

      // The other way round: MQTT first, then HTTPS replays the outcome.
      await client.publish('sluice/site/cmd/outlet-valve', {
        key: 'both-2',
        action: 'open',
        issuedAt,
      });
      await client.waitFor(
        (m) => m.topic === 'sluice/site/result/outlet-valve' && m.json().key === 'both-2',
        15_000,
        'MQTT result',
      );
      const again = await https(
        port,
        'POST',
        '/v1/commands',
        { 'idempotency-key': 'both-2' },
        {
          device: 'outlet-valve',
          action: 'open',
          issuedAt,
        },
      );
      expect(again.status).toBe(200);
      expect(again.headers['idempotent-replayed']).toBe('true');
      expect(plant.device('outlet-valve').counters.writesReceived).toBe(1);
      const retained = await client.waitFor(
        (m) => m.topic === 'sluice/site/status',
        5_000,
        'status',
      );
      expect(retained.text).toBe('online');
    } finally {
      await client.end();
      await daemon.stop();
    }
  }, 90_000);

  it('refuses both intakes while the journal cannot be written, and writes nothing', async () => {
    const daemon = await Daemon.start(loadConfig(configPath, { env: {} }), { logger: quiet });
    const client = await TestClient.connect(broker.url);
    const device = plant.device('inlet-valve');
    const lock = new BetterSqlite3(join(dir, 'state', 'journal.db'), { timeout: 0 });
    try {
      const port = daemon.https!.port;
      await client.subscribe('sluice/site/result/#');
      await until(
        () => (daemon.readiness().checks.mqtt?.ok === true ? true : undefined),
        20_000,
        'mqtt',
      );
      const before = device.counters.writesReceived;
      lock.exec('BEGIN IMMEDIATE');
      const refused = await https(
        port,
        'POST',
        '/v1/commands',
        { 'idempotency-key': 'locked-1' },
        {
          device: 'inlet-valve',
          action: 'close',
        },
      );
      expect(refused.status).toBe(503);
      expect(JSON.parse(refused.body)).toMatchObject({ code: 'JOURNAL_UNAVAILABLE' });
      const notReady = await https(port, 'GET', '/readyz');
      expect(notReady.status).toBe(503);
      const refusedBefore = await mqttRefusals(daemon);
      await client.publish('sluice/site/cmd/inlet-valve', {
        key: 'locked-2',
        // A move from where the valve rests (the test alone, or after the others), so that
        // running it takes a write.
        action: device.published.state === 'CLOSED' ? 'open' : 'close',
        issuedAt: new Date().toISOString(),
      });
      // The MQTT intake took the message and its claim was refused by the journal (counted
      // before the refusal is answered): unclaimed, it can never be written.
      await until(
        async () => ((await mqttRefusals(daemon)) > refusedBefore ? true : undefined),
        20_000,
        'the MQTT command refused by the journal',
      );
      expect(device.counters.writesReceived).toBe(before);
      lock.exec('ROLLBACK');
      // Released: the withheld MQTT command is redelivered and runs exactly once.
      await client.waitFor(
        (m) => m.topic === 'sluice/site/result/inlet-valve' && m.json().key === 'locked-2',
        20_000,
        'redelivered command result',
      );
      expect(device.counters.writesReceived).toBe(before + 1);
    } finally {
      lock.close();
      await client.end();
      await daemon.stop();
    }
  }, 90_000);

  it('at stop, a command in flight settles within the bound and its result is still published', async () => {
    const daemon = await Daemon.start(loadConfig(configPath, { env: {} }), { logger: quiet });
    const client = await TestClient.connect(broker.url);
    const device = plant.device('outlet-valve');
    try {
      await client.subscribe('sluice/site/#');
      await until(
        () => (daemon.readiness().checks.mqtt?.ok === true ? true : undefined),
        20_000,
        'mqtt',
      );
      const before = device.counters.writesReceived;
      const action = device.published.state === 'OPEN' ? 'close' : 'open';
      await client.publish('sluice/site/cmd/outlet-valve', {
        key: 'at-stop',
        action,
        issuedAt: new Date().toISOString(),
      });
      await until(
        () => (device.counters.writesReceived > before ? true : undefined),
        10_000,
        'write',
      );
      await daemon.stop();
      const result = await client.waitFor(
        (m) => m.topic === 'sluice/site/result/outlet-valve' && m.json().key === 'at-stop',
        5_000,
        'result of the command in flight at stop',
      );
      expect(result.json()).toMatchObject({ state: 'confirmed' });
      // This stop's `offline`s, not the retained one an earlier stop left, which the broker
      // replays at the subscription (`online` comes once the daemon's subscription is granted):
      // one as soon as the daemon took no more commands, while the command was still settling,
      // and one at the end of the stop, after its result.
      const isOffline = (m: Received): boolean =>
        m.topic === 'sluice/site/status' && m.text === 'offline' && !m.packet.retain;
      const resultAt = client.messages.indexOf(result);
      await client.waitFor(
        (m) => isOffline(m) && client.messages.indexOf(m) > resultAt,
        5_000,
        'offline at the end of the stop',
      );
      const first = client.messages.findIndex(isOffline);
      expect(first).toBeLessThan(resultAt);
    } finally {
      await client.end();
      await daemon.stop();
    }
  }, 60_000);

  it('counts open and stuck commands in /metrics and names the stuck ones in /readyz', async () => {
    // A command journaled for a device since removed from the configuration, long past its
    // deadline: no worker can take it, so it needs a person.
    const journalPath = join(dir, 'state', 'journal.db');
    const seed = SqliteJournal.open({ path: journalPath });
    const now = Date.now();
    seed.claim({
      scope: 'scada',
      key: 'orphan-1',
      fingerprint: 'f',
      device: 'removed-valve',
      action: 'open',
      position: null,
      issuedAt: now - 120_000,
      issuedAtSource: 'issuer',
      ttlMs: 1_000,
      deadline: now - 119_000,
      intake: 'https',
      acceptedAt: now - 120_000,
    });
    seed.close();
    const daemon = await Daemon.start(loadConfig(configPath, { env: {} }), { logger: quiet });
    try {
      const port = daemon.https!.port;
      const metrics = await https(port, 'GET', '/metrics');
      expect(metrics.status).toBe(200);
      expect(metrics.body).toMatch(/^sluice_commands_stuck 1$/m);
      expect(metrics.body).toMatch(/^sluice_commands_open\{state="accepted"\} 1$/m);
      expect(metrics.body).toMatch(/^sluice_commands_open_by_age\{le="60"\} 0$/m);
      expect(metrics.body).toMatch(/^sluice_commands_open_by_age\{le="600"\} 1$/m);
      expect(metrics.body).toMatch(/^sluice_commands_oldest_open_age_seconds 1[23]\d/m);
      const ready = await https(port, 'GET', '/readyz');
      expect(ready.status).toBe(503);
      const commands = (JSON.parse(ready.body) as { checks: Record<string, unknown> }).checks
        .commands as { ok: boolean; detail: string };
      expect(commands.ok).toBe(false);
      expect(commands.detail).toMatch(/1 stuck.*orphan-1 on removed-valve/);
    } finally {
      await daemon.stop();
      // Settled by hand (as an operator would), so that the other tests see a clean journal.
      const j = SqliteJournal.open({ path: journalPath });
      j.settle({ scope: 'scada', key: 'orphan-1' }, 'accepted', {
        to: 'failed',
        code: 'RESOLVED_BY_OPERATOR',
        faultCode: null,
        observed: null,
        detail: 'test clean-up',
        at: Date.now(),
        intake: 'test',
      });
      j.close();
    }
  }, 60_000);

  it('sluiced exits 0 on SIGTERM', async () => {
    const sluiced = startSluiced(['--config', modbusConfigPath]);
    await sluiced.line((l) => l.includes('"msg":"sluiced started"'), 30_000);
    // 0, not null: its handler stopped it, not the signal's default action.
    expect(await sluiced.stop()).toBe(0);
    expect(sluiced.lines.some((l) => l.includes('"msg":"sluiced stopped"'))).toBe(true);
  }, 60_000);

  it('a promise rejected with no handler ends sluiced with exit 1, said in the JSON log first', async () => {
    // The fault, a bug no real part produces: a preload (NODE_OPTIONS --import) that rejects a
    // promise with no handler when sent SIGUSR2; the daemon's code is as it ships.
    const preload = join(dir, 'reject-on-sigusr2.mjs');
    writeFileSync(
      preload,
      "process.on('SIGUSR2', () => { void Promise.reject(new Error('injected: a rejection no one handles')); });\n",
    );
    const sluiced = startSluiced(['--config', modbusConfigPath], {
      NODE_OPTIONS: `--import=${pathToFileURL(preload).href}`,
    });
    await sluiced.line((l) => l.includes('"msg":"sluiced ready"'), 30_000);
    sluiced.signal('SIGUSR2');
    const line = await sluiced.line((l) => l.includes('"level":60'), 30_000);
    expect(await sluiced.exited).toBe(1);
    const fatal = JSON.parse(line) as {
      msg: string;
      origin?: string;
      err?: { message?: string; stack?: string };
    };
    expect(fatal).toMatchObject({
      origin: 'unhandledRejection',
      err: { message: 'injected: a rejection no one handles' },
    });
    expect(fatal.msg).toMatch(/^sluiced crashed: an error escaped every handler/);
    expect(fatal.err?.stack).toContain('reject-on-sigusr2.mjs');
  }, 60_000);

  it('a SIGTERM while sluiced starts ends the start before its journal is checked, or stops it once started; never by the signal', async () => {
    const sluiced = startSluiced(['--config', configPath]);
    await sluiced.line((l) => l.includes('"msg":"sluiced starting"'), 30_000);
    // The daemon is still loading its modules: nothing has started yet.
    expect(sluiced.lines.some((l) => l.includes('"msg":"sluiced started"'))).toBe(false);
    expect(await sluiced.stop()).toBe(0);
    const at = (msg: string): number =>
      sluiced.lines.findIndex((l) => l.includes(`"msg":"${msg}"`));
    const stopping = sluiced.lines.findIndex((l) =>
      l.includes('"msg":"stopping: the journal check or upgrade, if one runs, ends now'),
    );
    expect(stopping).toBeGreaterThan(-1);
    if (at('journal checked (SQLite quick_check)') === -1) {
      // Asked before the check ended (as here, while the modules load): the start ends there,
      // nothing served, the journal as it was (32d0ecd).
      expect(at('sluiced stopped during its start')).toBeGreaterThan(stopping);
      expect(at('sluiced started')).toBe(-1);
    } else {
      // Past the check (a fast machine): the start runs to its end, then the graceful stop.
      expect(at('journal checked (SQLite quick_check)')).toBeLessThan(stopping);
      expect(at('sluiced started')).toBeGreaterThan(stopping);
      expect(at('sluiced stopped')).toBeGreaterThan(at('sluiced started'));
    }
  }, 60_000);
});
