import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { sha256 } from '../../src/intake/identities.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { httpsRequest, metricSample, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { fillFilesystem, mountTmpfs, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * sluice_device_queue_length counts a command that holds its device with no worker on it. The
 * journal's filesystem fills after a command's write: its settlement cannot be committed, it is
 * left open (`dispatched` on disk) and the device runs nothing else until it is taken up again,
 * while `GET /v1/devices` says `inFlight: null`. A scrape of /metrics then shows the device
 * holding one command, not an idle device; once space is back and the command is settled, 0.
 * Real daemon (in this process), sluice-sim over Modbus TCP, the journal on a real tmpfs;
 * ground truth: the scrapes as an HTTPS client received them, the simulator's write counter and
 * the journal file.
 */

const VALVE = 'inlet-valve';
const TOKEN = 'held-device-token';
const mountable = tmpfsAvailable();

describe.runIf(mountable)('/metrics while a command left open holds its device', () => {
  let plant: Plant;
  let daemon: Daemon;
  let stateDir: string;
  let journalPath: string;
  let cleanup: () => void;
  let ca: string;
  const lines: string[] = [];

  beforeAll(async () => {
    let dir: string;
    ({ dir, cleanup } = tempDir('sluice-held-device-'));
    plant = await startModbusPlant({ [VALVE]: { profile: 'valve', base: 0, travelMs: 200 } });
    const configPath = await writeDaemonSite(dir, plant, 'helddevice');
    const config = parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    config.identities = { ops: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } };
    writeFileSync(configPath, stringify(config));
    ca = readFileSync(join(dir, 'cert.pem'), 'utf8');
    stateDir = join(dir, 'state');
    mkdirSync(stateDir);
    mountTmpfs(stateDir, '4m');
    journalPath = join(stateDir, 'journal.db');
    daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger: pino({ level: 'info' }, { write: (line: string) => lines.push(line) }),
    });
  }, 30_000);

  afterAll(async () => {
    await daemon.stop();
    await plant.stop();
    unmount(stateDir);
    cleanup();
  });

  const post = (key: string, action: string, prefer: string): Promise<HttpsAnswer> =>
    httpsRequest(
      { port: daemon.https!.port, ca, token: TOKEN },
      'POST',
      '/v1/commands',
      { 'idempotency-key': key, prefer },
      { device: VALVE, action, issuedAt: new Date().toISOString(), ttlMs: 120_000 },
    );

  /** What GET /v1/devices/inlet-valve says the valve is on. */
  const on = async (): Promise<{ inFlight: string | null; unresolved: string | null }> => {
    const answer = await httpsRequest(
      { port: daemon.https!.port, ca, token: TOKEN },
      'GET',
      `/v1/devices/${VALVE}`,
    );
    const doc = JSON.parse(answer.body) as { inFlight: string | null; unresolved: string | null };
    return { inFlight: doc.inFlight, unresolved: doc.unresolved };
  };

  const queueLength = (): Promise<number> =>
    metricSample({ port: daemon.https!.port, ca }, 'sluice_device_queue_length', { device: VALVE });

  const stateOnFile = (key: string): string | undefined => {
    const journal = SqliteJournal.open({ path: journalPath, readonly: true });
    try {
      return journal.findByKey(key)[0]?.state;
    } finally {
      journal.close();
    }
  };

  it('the queue length counts the command left open, and drops to 0 once it is settled', async () => {
    expect((await post('warm', 'open', 'wait=10')).status).toBe(200);
    const valve = plant.device(VALVE);
    const writes = valve.counters.writesReceived;
    // Slow readbacks: the command is written and its confirmation still under way.
    valve.setFault({ kind: 'latency', ms: 250, on: 'read' });
    // An empty WAL, so that the next commit needs new space on the filesystem.
    const db = new BetterSqlite3(journalPath);
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    const accepted = await post('held', 'close', 'respond-async');
    expect(accepted.status, accepted.body).toBe(202);
    await until(
      () =>
        lines.some((l) => l.includes('"key":"held"') && l.includes('"command dispatched"'))
          ? true
          : undefined,
      15_000,
      'the dispatch durable',
    );
    const filler = join(stateDir, 'filler');
    fillFilesystem(filler);
    try {
      await until(
        () =>
          lines.some(
            (l) =>
              l.includes('"key":"held"') && l.includes('command left open (journal unavailable)'),
          )
            ? true
            : undefined,
        15_000,
        'the settlement refused',
      );
      expect(valve.counters.writesReceived).toBe(writes + 1);
      expect(stateOnFile('held')).toBe('dispatched');
      // Held with no worker on it, before the scrape and after it (the sweep takes it up again
      // now and then while the journal fails; a scrape between two such views is kept).
      const length = await until(
        async () => {
          const idle = (d: { inFlight: string | null; unresolved: string | null }): boolean =>
            d.inFlight === null && d.unresolved === 'held';
          if (!idle(await on())) return undefined;
          const scraped = await queueLength();
          return idle(await on()) ? { scraped } : undefined;
        },
        15_000,
        'a scrape while the valve is held by the command left open',
      );
      expect(length.scraped).toBe(1);
    } finally {
      rmSync(filler, { force: true });
    }
    valve.clearFaults();
    await until(
      () => (stateOnFile('held') === 'confirmed' ? true : undefined),
      30_000,
      'the command settled once space is back',
    );
    expect(valve.counters.writesReceived).toBe(writes + 1);
    await until(async () => ((await queueLength()) === 0 ? true : undefined), 15_000, 'idle');
  }, 60_000);
});
