import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { seedOrphan } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, loopbackCertificate, type HttpsAnswer } from '../helpers/loopback-https.js';
import {
  TestClient,
  mosquittoAvailable,
  startMosquitto,
  timed,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { countRows } from '../../src/journal/row-counts.js';
import { systemClock, type Clock } from '../../src/core/clock.js';
import { silentLogger } from '../../src/core/logger.js';
import { CommandPipeline } from '../../src/core/pipeline.js';
import { Metrics } from '../../src/daemon/metrics.js';

/**
 * GET /metrics after a scripted sequence of commands over both intakes: every count is the
 * one the script implies, and the write counts agree with the simulator's (the ground truth).
 * No label carries a key or a token.
 */

const TOKEN = 'metrics-token-3f9a';
const real = mosquittoAvailable();

interface Sample {
  readonly name: string;
  readonly labels: Record<string, string>;
  readonly value: number;
}

/** The Prometheus text format's samples (comments and blank lines skipped). */
function parseMetrics(text: string): Sample[] {
  const samples: Sample[] = [];
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (m === null) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const pair of (m[2] ?? '').matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) {
      labels[pair[1]!] = pair[2]!;
    }
    samples.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return samples;
}

/** The value of the one sample with this name and these labels (among others); 0 if absent. */
function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const hits = samples.filter(
    (s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v),
  );
  return hits.reduce((sum, s) => sum + s.value, 0);
}

it('counts the journal rows it exports off the event loop: commands and their history events', async () => {
  const { dir, cleanup } = tempDir('sluice-rows-');
  const path = join(dir, 'journal.db');
  const journal = SqliteJournal.open({ path });
  try {
    expect(await countRows(path)).toEqual({ commands: 0, events: 0 });
    const now = Date.now();
    const command = {
      scope: 'scada',
      fingerprint: 'f',
      device: 'inlet-valve',
      action: 'open' as const,
      position: null,
      issuedAt: now,
      issuedAtSource: 'issuer' as const,
      ttlMs: 60_000,
      deadline: now + 60_000,
      intake: 'https',
      acceptedAt: now,
    };
    journal.claim({ ...command, key: 'rows-1' });
    journal.claim({ ...command, key: 'rows-1' }); // a duplicate: one more event, no command
    journal.claim({ ...command, key: 'rows-2' });
    // Read by another connection, on another thread: what the daemon's has committed.
    expect(await countRows(path)).toEqual({ commands: 2, events: 3 });
  } finally {
    journal.close();
    cleanup();
  }
});

it('answers a scrape whose first count does not come, leaving the rows out', async () => {
  const { dir, cleanup } = tempDir('sluice-rows-');
  const journal = SqliteJournal.open({ path: join(dir, 'journal.db') });
  const pipeline = new CommandPipeline({
    journal,
    devices: [],
    clock: systemClock,
    logger: silentLogger,
    freshness: { maxIssuerSkewMs: 2000 },
  });
  try {
    let asked = 0;
    const metrics = new Metrics(pipeline, systemClock, undefined, {
      path: join(dir, 'journal.db'),
      rowsWaitMs: 200,
      rows: () => {
        asked++;
        return new Promise<never>(() => undefined);
      },
    });
    const text = await metrics.registry.metrics();
    expect(text).toContain('sluice_commands_open');
    expect(text).not.toMatch(/^sluice_journal_rows\{/m);
    // The count still under way is not started again by the next scrape.
    await metrics.registry.metrics();
    expect(asked).toBe(1);
  } finally {
    await pipeline.stop(0);
    journal.close();
    cleanup();
  }
});

it('leaves the open-command gauges out of a scrape while the journal cannot be read, not at their last values', async () => {
  const { dir, cleanup } = tempDir('sluice-open-gauges-');
  const path = join(dir, 'journal.db');
  seedOrphan(path, Date.now(), {
    scope: 'plant',
    key: 'orphan-1',
    device: 'gone-valve',
    intake: 'https',
  });
  const journal = SqliteJournal.open({ path });
  let mono = 0;
  const clock: Clock = { ...systemClock, elapsed: () => mono };
  const pipeline = new CommandPipeline({
    journal,
    devices: [],
    clock,
    logger: silentLogger,
    freshness: { maxIssuerSkewMs: 2000 },
  });
  let closed = false;
  try {
    const metrics = new Metrics(pipeline, clock);
    const before = parseMetrics(await metrics.registry.metrics());
    expect(value(before, 'sluice_commands_open', { state: 'accepted' })).toBe(1);
    expect(value(before, 'sluice_commands_stuck')).toBe(1);
    // A real read failure: the journal's connection is closed under the pipeline (no real
    // part fails a read on demand otherwise). The next scrape queries the journal again.
    journal.close();
    closed = true;
    mono += 1_000;
    const text = await metrics.registry.metrics();
    expect(text).not.toMatch(/^sluice_commands_open\{/m);
    expect(text).not.toMatch(/^sluice_commands_open_by_age\{/m);
    // Unlabelled, they cannot be left out: NaN, Prometheus' "unknown" (prom-client writes
    // "Nan"; Prometheus parses it in any case), not the last value.
    expect(text).toMatch(/^sluice_commands_oldest_open_age_seconds nan$/im);
    expect(text).toMatch(/^sluice_commands_stuck nan$/im);
  } finally {
    await pipeline.stop(0);
    if (!closed) journal.close();
    cleanup();
  }
});

it("exports the space left as unknown (NaN), not 0, while the journal's directory cannot be read", async () => {
  const { dir, cleanup } = tempDir('sluice-statfs-');
  const journal = SqliteJournal.open({ path: join(dir, 'journal.db') });
  const pipeline = new CommandPipeline({
    journal,
    devices: [],
    clock: systemClock,
    logger: silentLogger,
    freshness: { maxIssuerSkewMs: 2000 },
  });
  try {
    // statfs of a directory that does not exist fails (ENOENT), as one removed or unmounted.
    const metrics = new Metrics(pipeline, systemClock, undefined, {
      path: join(dir, 'gone', 'journal.db'),
    });
    const text = await metrics.registry.metrics();
    // 0 would be a full filesystem to every alert on it ("at 0 commands are refused").
    expect(text).toMatch(/^sluice_journal_filesystem_available_bytes nan$/im);
    const present = new Metrics(pipeline, systemClock, undefined, {
      path: join(dir, 'journal.db'),
    });
    const free = value(
      parseMetrics(await present.registry.metrics()),
      'sluice_journal_filesystem_available_bytes',
    );
    expect(free).toBeGreaterThan(0);
  } finally {
    await pipeline.stop(0);
    journal.close();
    cleanup();
  }
});

describe.runIf(real)('/metrics after a scripted sequence of commands', () => {
  let plant: Plant;
  let broker: Mosquitto;
  let daemon: Daemon;
  let cert: string;
  let cleanup: () => void;

  const https = (
    path: string,
    key: string | null,
    body?: unknown,
    headers: Record<string, string> = {},
  ): Promise<HttpsAnswer> =>
    httpsRequest(
      { port: daemon.https!.port, ca: cert, token: TOKEN },
      body === undefined ? 'GET' : 'POST',
      path,
      key === null ? headers : { 'idempotency-key': key, ...headers },
      body,
    );

  beforeAll(async () => {
    const made = tempDir('sluice-metrics-');
    cleanup = made.cleanup;
    plant = await startPlant(
      {
        control: { host: '127.0.0.1', port: 0 },
        plcs: {
          mb: {
            protocol: 'modbus',
            host: '127.0.0.1',
            port: 0,
            devices: {
              'inlet-valve': { profile: 'valve', base: 0, travelMs: 1_500 },
              'drain-valve': { profile: 'valve', base: 100, travelMs: 300 },
            },
          },
        },
      },
      { ephemeralPorts: true, control: false },
    );
    broker = await startMosquitto();
    cert = await loopbackCertificate(made.dir);
    const inventory = inventoryFor(plant);
    const configPath = join(made.dir, 'sluice.yaml');
    writeFileSync(
      configPath,
      stringify({
        gatewayId: 'metered',
        stateDir: 'state',
        https: { host: '127.0.0.1', port: 0, certFile: 'cert.pem', keyFile: 'key.pem' },
        mqtt: { url: broker.url, identity: 'scada', clientId: 'sluice-metrics-test' },
        identities: { scada: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } },
        plcs: inventory.plcs,
        devices: inventory.devices,
      }),
    );
    daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger: pino({ level: 'silent' }),
      monitorIntervalMs: 200,
    });
    await until(
      () => (daemon.readiness().ready ? true : undefined),
      20_000,
      'the daemon ready (MQTT connected, both valves read)',
    );
  }, 60_000);

  afterAll(async () => {
    await daemon.stop();
    await broker.close();
    await plant.stop();
    cleanup();
  });

  it('counts commands by intake and outcome, replays, reuses, latencies, journal and devices', async () => {
    const inlet = plant.device('inlet-valve');
    const drain = plant.device('drain-valve');
    const open = { device: 'inlet-valve', action: 'open' };

    // HTTPS: a new command, its replay, its key reused for another payload.
    expect((await https('/v1/commands', 'metrics-key-1', open)).status).toBe(200);
    const replay = await https('/v1/commands', 'metrics-key-1', open);
    expect(replay.status).toBe(200);
    expect(replay.headers['idempotent-replayed']).toBe('true');
    const reuse = await https('/v1/commands', 'metrics-key-1', { ...open, action: 'close' });
    expect(reuse.status).toBe(422);

    // A retry while the close travels (1.5 s): 409 IN_PROGRESS.
    const close = { device: 'inlet-valve', action: 'close' };
    const async = await https('/v1/commands', 'metrics-key-2', close, {
      prefer: 'respond-async',
    });
    expect(async.status).toBe(202);
    expect((await https('/v1/commands', 'metrics-key-2', close)).status).toBe(409);
    const closed = await daemon.pipeline.waitForSettled(
      { scope: 'scada', key: 'metrics-key-2' },
      15_000,
    );
    expect(closed).toMatchObject({ state: 'confirmed' });

    // A stale command: rejected, never written.
    const stale = await https('/v1/commands', 'metrics-key-3', {
      device: 'drain-valve',
      action: 'open',
      issuedAt: new Date(Date.now() - 600_000).toISOString(),
      ttlMs: 1_000,
    });
    expect(stale.status).toBe(409);
    expect(stale.json()).toMatchObject({ code: 'STALE_COMMAND' });

    // MQTT: a new command and its replay.
    const client = await TestClient.connect(broker.url);
    try {
      await client.subscribe('sluice/metered/result/#');
      const command = timed({ key: 'metrics-key-4', action: 'open' });
      await client.publish('sluice/metered/cmd/drain-valve', command);
      await client.waitFor(
        (m) => m.json().key === 'metrics-key-4' && m.json().replayed === false,
        15_000,
        'the MQTT result',
      );
      await client.publish('sluice/metered/cmd/drain-valve', command);
      await client.waitFor(
        (m) => m.json().key === 'metrics-key-4' && m.json().replayed === true,
        15_000,
        'the MQTT replay',
      );
    } finally {
      await client.end();
    }

    const scrape = await https('/metrics', null);
    expect(scrape.status).toBe(200);
    const samples = parseMetrics(scrape.body);
    const received = (intake: string, outcome: string): number =>
      value(samples, 'sluice_commands_received_total', { intake, outcome });
    expect(received('https', 'new')).toBe(3);
    expect(received('https', 'replayed')).toBe(1);
    expect(received('https', 'in_flight')).toBe(1);
    expect(received('https', 'key_reused')).toBe(1);
    expect(received('mqtt', 'new')).toBe(1);
    expect(received('mqtt', 'replayed')).toBe(1);
    expect(received('mqtt', 'key_reused')).toBe(0);

    const settled = (labels: Record<string, string>): number =>
      value(samples, 'sluice_commands_settled_total', labels);
    expect(
      settled({ device: 'inlet-valve', intake: 'https', state: 'confirmed', code: 'OK' }),
    ).toBe(2);
    expect(
      settled({ device: 'drain-valve', intake: 'https', state: 'rejected', code: 'STALE_COMMAND' }),
    ).toBe(1);
    expect(settled({ device: 'drain-valve', intake: 'mqtt', state: 'confirmed', code: 'OK' })).toBe(
      1,
    );
    expect(settled({})).toBe(4);
    expect(value(samples, 'sluice_command_settle_seconds_count')).toBe(4);

    // Confirm latency: one observation per confirmed write, as many as the valves received.
    expect(inlet.counters.writesReceived).toBe(2);
    expect(drain.counters.writesReceived).toBe(1);
    expect(value(samples, 'sluice_command_confirm_seconds_count', { device: 'inlet-valve' })).toBe(
      inlet.counters.writesReceived,
    );
    expect(value(samples, 'sluice_command_confirm_seconds_count', { device: 'drain-valve' })).toBe(
      drain.counters.writesReceived,
    );
    // The close travelled 1.5 s between its write and its confirming readback.
    expect(
      value(samples, 'sluice_command_confirm_seconds_bucket', { device: 'inlet-valve', le: '1' }),
    ).toBe(0);

    // Nothing open, in flight or stuck.
    expect(value(samples, 'sluice_commands_in_flight')).toBe(0);
    expect(value(samples, 'sluice_commands_stuck')).toBe(0);
    expect(value(samples, 'sluice_commands_open')).toBe(0);

    // The journal: on disk; swept once (a new journal: the first sweep runs at the start, the
    // next one an interval later), its counters exported from the start.
    expect(value(samples, 'sluice_journal_size_bytes')).toBeGreaterThan(0);
    // Four commands (the reused key and the replays add none), each with its history.
    expect(value(samples, 'sluice_journal_rows', { table: 'commands' })).toBe(4);
    expect(value(samples, 'sluice_journal_rows', { table: 'events' })).toBeGreaterThan(4 * 2);
    expect(samples.find((s) => s.name === 'sluice_journal_retention_sweeps_total')?.value).toBe(1);
    expect(value(samples, 'sluice_journal_retention_purged_total')).toBe(0);

    // Devices, controller clocks and the gateway clock.
    for (const device of ['inlet-valve', 'drain-valve']) {
      expect(value(samples, 'sluice_device_connected', { device })).toBe(1);
      expect(value(samples, 'sluice_device_readback_age_seconds', { device })).toBeLessThan(5);
      expect(samples.some((s) => s.name === 'sluice_controller_skew_seconds')).toBe(true);
    }
    expect(value(samples, 'sluice_gateway_clock_state')).toBe(1);
    // No time source configured: the offset is not known, and says so (NaN), never 0.
    expect(value(samples, 'sluice_gateway_clock_state', { state: 'UNKNOWN', source: 'none' })).toBe(
      1,
    );
    expect(scrape.body).toMatch(/^sluice_gateway_clock_offset_seconds nan$/im);

    // No key and no token in any label.
    for (const s of samples) {
      for (const label of Object.values(s.labels)) {
        expect(label).not.toMatch(/metrics-key|metrics-token/);
      }
    }
    expect(scrape.body).not.toContain(TOKEN);
  }, 90_000);
});
