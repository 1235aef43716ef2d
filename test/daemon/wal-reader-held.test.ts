import { readFileSync, statSync, writeFileSync } from 'node:fs';
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
import { httpsRequest } from '../helpers/loopback-https.js';

/**
 * Another program reads the journal with one snapshot held for long (a sqlite3 shell with a
 * transaction left open, a backup) while the daemon runs commands: no checkpoint can reach the
 * WAL's end meanwhile, and the WAL grows with every commit. Once the reader lets go, the WAL is
 * cut back (journal_size_limit) when SQLite starts it again from the top, rather than keeping
 * its largest size on the gateway's disk for as long as the daemon runs. Real daemon (in this
 * process), sluice-sim over Modbus TCP, the SQLite journal; ground truth: the WAL file's size,
 * the commands on file and the valves' write counters.
 */

const TOKEN = 'wal-token';
/** The WAL's size limit, as group-commit.ts sets it (WAL_SIZE_LIMIT_BYTES). */
const WAL_SIZE_LIMIT_BYTES = 8 * 1024 * 1024;
const VALVES = Array.from({ length: 8 }, (_, i) => `valve-${i}`);

describe('a reader holding a snapshot of the journal for long', () => {
  let plant: Plant;
  let daemon: Daemon;
  let dir: string;
  let cleanup: () => void;
  let ca: string;
  let journalPath: string;
  let sent = 0;
  let rounds = 0;

  beforeAll(async () => {
    ({ dir, cleanup } = tempDir('sluice-wal-reader-'));
    plant = await startModbusPlant(
      Object.fromEntries(
        VALVES.map((name, i) => [name, { profile: 'valve', base: i * 100, travelMs: 10 }]),
      ),
    );
    const configPath = await writeDaemonSite(dir, plant, 'walreader');
    const config = parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    config.identities = { ops: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } };
    // Thousands of commands in seconds from one identity.
    config.https = {
      ...(config.https as object),
      rateLimit: { perSecond: 10_000, burst: 100_000 },
    };
    writeFileSync(configPath, stringify(config));
    ca = readFileSync(join(dir, 'cert.pem'), 'utf8');
    journalPath = join(dir, 'state', 'journal.db');
    daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger: pino({ level: 'silent' }),
    });
  }, 30_000);

  afterAll(async () => {
    await daemon.stop();
    await plant.stop();
    cleanup();
  });

  const walBytes = (): number => statSync(`${journalPath}-wal`).size;

  /** One command on each valve at once, `rounds` times; each must be confirmed. */
  async function run(count: number): Promise<void> {
    for (let r = 0; r < count; r++) {
      rounds += 1;
      const answers = await Promise.all(
        VALVES.map((device) => {
          sent += 1;
          return httpsRequest(
            { port: daemon.https!.port, ca, token: TOKEN },
            'POST',
            '/v1/commands',
            { 'idempotency-key': `wal-${sent}`, prefer: 'wait=10' },
            {
              device,
              action: rounds % 2 === 1 ? 'open' : 'close',
              issuedAt: new Date().toISOString(),
              ttlMs: 60_000,
            },
          );
        }),
      );
      for (const answer of answers) expect(answer.status, answer.body).toBe(200);
    }
  }

  it('lets the WAL grow while it holds it, and the WAL is cut back once it has let go', async () => {
    const reader = new BetterSqlite3(journalPath, { readonly: true });
    try {
      reader.exec('BEGIN');
      reader.prepare('SELECT count(*) FROM commands').get();
      // Past the limit: every commit meanwhile is appended to the WAL.
      while (walBytes() <= WAL_SIZE_LIMIT_BYTES + 1024 * 1024) await run(25);
      reader.exec('COMMIT');
    } finally {
      reader.close();
    }
    const grown = walBytes();
    // Commands after it: a checkpoint copies the WAL into the journal, and SQLite starts the
    // WAL again from the top at the next commit (at the latest after 1,000 pages more).
    for (let i = 0; i < 40 && walBytes() > WAL_SIZE_LIMIT_BYTES; i++) await run(25);
    expect(walBytes(), `the WAL, ${grown} bytes when the reader let go`).toBeLessThanOrEqual(
      WAL_SIZE_LIMIT_BYTES,
    );
    // Nothing was lost on the way: every command confirmed on file, one write each.
    const journal = SqliteJournal.open({ path: journalPath, readonly: true });
    try {
      for (const key of [`wal-1`, `wal-${Math.floor(sent / 2)}`, `wal-${sent}`]) {
        expect(journal.findByKey(key)[0]?.state, key).toBe('confirmed');
      }
    } finally {
      journal.close();
    }
    const writes = VALVES.reduce(
      (sum, name) => sum + plant.device(name).counters.writesReceived,
      0,
    );
    expect(writes).toBe(sent);
  }, 120_000);
});
