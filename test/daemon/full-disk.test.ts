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
import { sluicectl } from '../cli/helpers.js';
import { httpsRequest, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { fillFilesystem, mountTmpfs, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * The journal's filesystem fills while a command is in flight (I5): its claim is on disk and
 * acknowledged (202), its device read is under way, and the dispatch that would precede its
 * write cannot be committed. The write must not be sent; the command stays `accepted` on disk;
 * once space is back, the daemon takes it up without a restart and it runs exactly once. And
 * the filesystem fills after the write: the settlement cannot be committed, the command stays
 * `dispatched` on disk, and once space is back it is settled by readback, never written again;
 * meanwhile `GET /v1/devices` and `sluicectl devices` name it as the command the valve waits for.
 * Real daemon (in this process), sluice-sim over Modbus TCP, the journal on a real tmpfs;
 * ground truth: the simulator's write counter and the journal file.
 */

const VALVE = 'inlet-valve';
const TOKEN = 'full-disk-token';
const mountable = tmpfsAvailable();

describe.runIf(mountable)('a full journal filesystem under a command in flight', () => {
  let plant: Plant;
  let daemon: Daemon;
  let stateDir: string;
  let journalPath: string;
  let cleanup: () => void;
  let ca: string;
  let configPath: string;
  const lines: string[] = [];

  beforeAll(async () => {
    let dir: string;
    ({ dir, cleanup } = tempDir('sluice-full-disk-'));
    plant = await startModbusPlant({ [VALVE]: { profile: 'valve', base: 0, travelMs: 200 } });
    configPath = await writeDaemonSite(dir, plant, 'fulldisk');
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

  const get = (path: string): Promise<HttpsAnswer> =>
    httpsRequest({ port: daemon.https!.port, ca, token: TOKEN }, 'GET', path);

  it('the dispatch is not committed: nothing is written, the command stays accepted, and runs once when space is back', async () => {
    expect((await post('warm', 'open', 'wait=10')).status).toBe(200);
    const valve = plant.device(VALVE);
    const writes = valve.counters.writesReceived;
    // The valve's reads take a while: the command waits between its claim and its dispatch.
    valve.setFault({ kind: 'latency', ms: 250, on: 'read' });
    // An empty WAL, so that the next commit needs new space on the filesystem.
    const db = new BetterSqlite3(journalPath);
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    const accepted = await post('in-flight', 'close', 'respond-async');
    expect(accepted.status, accepted.body).toBe(202);
    const filler = join(stateDir, 'filler');
    fillFilesystem(filler);
    try {
      // Proof that the daemon reached the dispatch and could not make it durable.
      await until(
        () =>
          lines.some(
            (l) =>
              l.includes('"key":"in-flight"') &&
              l.includes('journal sync failed: the command is not written'),
          )
            ? true
            : undefined,
        15_000,
        'the dispatch refused',
      );
      expect(valve.counters.writesReceived).toBe(writes);
      expect(onFile('in-flight')).toMatchObject({ state: 'accepted', seq: null });
      const readyz = await get('/readyz');
      expect(readyz.status).toBe(503);
      // Watched without a command: the space left, from /metrics.
      expect(await available()).toBeLessThan(64 * 1024);
      // Said in words an operator acts on: what is full, and where.
      const journal = (JSON.parse(readyz.body) as { checks: Record<string, unknown> }).checks
        .journal;
      expect(journal).toEqual({
        ok: false,
        detail: `journal unavailable (check): SQLITE_FULL: the filesystem of ${journalPath} is full; commands are refused until space is freed there, then taken again without a restart`,
      });
    } finally {
      rmSync(filler, { force: true });
    }
    valve.clearFaults();
    // Space is back: taken up without a restart, written once.
    await until(
      () => (onFile('in-flight')?.state === 'confirmed' ? true : undefined),
      30_000,
      'the command confirmed once space is back',
    );
    expect(valve.counters.writesReceived).toBe(writes + 1);
    const history = historyOnFile('in-flight');
    expect(history.filter((e) => e.to === 'dispatched' && e.from === 'accepted')).toHaveLength(1);
    expect((await get('/readyz')).status).toBe(200);
    expect(await available()).toBeGreaterThan(2 * 1024 * 1024);
  }, 60_000);

  it('the settlement is not committed: the command written once stays dispatched, and is settled by readback, never written again', async () => {
    const valve = plant.device(VALVE);
    const action = valve.snapshot().published.state === 'OPEN' ? 'close' : 'open';
    const writes = valve.counters.writesReceived;
    // Slow readbacks: the command is written and its confirmation still under way.
    valve.setFault({ kind: 'latency', ms: 250, on: 'read' });
    const db = new BetterSqlite3(journalPath);
    db.pragma('wal_checkpoint(TRUNCATE)');
    db.close();
    const accepted = await post('settle-full', action, 'respond-async');
    expect(accepted.status, accepted.body).toBe(202);
    await until(
      () =>
        lines.some((l) => l.includes('"key":"settle-full"') && l.includes('"command dispatched"'))
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
              l.includes('"key":"settle-full"') &&
              l.includes('command left open (journal unavailable)'),
          )
            ? true
            : undefined,
        15_000,
        'the settlement refused',
      );
      expect(valve.counters.writesReceived).toBe(writes + 1);
      expect(onFile('settle-full')?.state).toBe('dispatched');
      // The device is held for it, with no worker running it between take-ups: the tools an
      // operator asks what holds the valve name it (they said `inFlight: null`, an idle valve).
      await until(
        async () => {
          const doc = JSON.parse((await get(`/v1/devices/${VALVE}`)).body) as {
            inFlight: string | null;
            unresolved?: string | null;
          };
          return doc.inFlight === null && doc.unresolved === 'settle-full' ? true : undefined;
        },
        15_000,
        'GET /v1/devices naming the command the valve waits for',
      );
      const devices = await sluicectl(['--config', configPath, 'devices', '--no-color']);
      expect(devices.stderr).toBe('');
      expect(devices.stdout).toMatch(
        new RegExp(
          `^${VALVE}\\s.*\\s(settle-full \\(left open; the device waits for it\\)|settle-full)$`,
          'm',
        ),
      );
    } finally {
      rmSync(filler, { force: true });
    }
    valve.clearFaults();
    await until(
      () => (onFile('settle-full')?.state === 'confirmed' ? true : undefined),
      30_000,
      'the command settled once space is back',
    );
    expect(valve.counters.writesReceived).toBe(writes + 1);
    expect(
      historyOnFile('settle-full').filter((e) => e.to === 'dispatched' && e.from === 'accepted'),
    ).toHaveLength(1);
  }, 60_000);

  it('a start on a full filesystem fails saying so, and succeeds once space is freed', async () => {
    await daemon.stop();
    const filler = join(stateDir, 'filler');
    fillFilesystem(filler);
    try {
      await expect(
        Daemon.start(loadConfig(configPath, { env: {} }), { logger: pino({ level: 'silent' }) }),
      ).rejects.toThrow(
        `journal unavailable (open): SQLITE_FULL: the filesystem of ${journalPath} is full (${journalPath}.lock cannot be locked); free space there, then start sluiced again`,
      );
    } finally {
      rmSync(filler, { force: true });
    }
    daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger: pino({ level: 'silent' }),
    });
    expect((await get('/readyz')).status).toBe(200);
  }, 60_000);

  async function available(): Promise<number> {
    const metrics = await get('/metrics');
    const line = /^sluice_journal_filesystem_available_bytes (\d+)$/m.exec(metrics.body);
    expect(line, metrics.body).not.toBeNull();
    return Number(line![1]);
  }

  function onFile(key: string): { state: string; seq: number | null } | undefined {
    const journal = SqliteJournal.open({ path: journalPath, readonly: true });
    try {
      const r = journal.findByKey(key)[0];
      return r === undefined ? undefined : { state: r.state, seq: r.seq };
    } finally {
      journal.close();
    }
  }

  function historyOnFile(key: string): { from: string | null; to: string }[] {
    const journal = SqliteJournal.open({ path: journalPath, readonly: true });
    try {
      return journal.history(journal.findByKey(key)[0]!);
    } finally {
      journal.close();
    }
  }
});
