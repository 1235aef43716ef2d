import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
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
import { stallableDisk, type StallableDisk } from '../helpers/stallable-disk.js';
import { httpsRequest, type HttpsAnswer } from '../helpers/loopback-https.js';
import { until } from '../helpers/mosquitto.js';
import { tmpfsAvailable } from '../reliability/support.js';

/**
 * The journal's disk stalls: its fdatasync does not return, while writes still reach the page
 * cache and the event loop turns. A real stall, made of real filesystems: the journal on an ext4
 * image looped from a file on a second ext4 image, which the test freezes (fsfreeze): the inner
 * filesystem's block I/O waits on the frozen one, so its fdatasync waits, and nothing else does.
 * /readyz must not call the journal writable meanwhile: a command sent then is neither
 * acknowledged nor written. Once the disk is back, /readyz is 200 again and the command runs
 * once. Ground truth: the simulator's write counter and the journal file.
 */

const VALVE = 'inlet-valve';
const TOKEN = 'sync-stall-token';
const mountable = tmpfsAvailable();
const STALL_MS = 1_000;

describe.runIf(mountable)('/readyz while the journal’s disk stalls', () => {
  let plant: Plant;
  let daemon: Daemon;
  let dir: string;
  let cleanup: () => void;
  let ca: string;
  let disk: StallableDisk;

  beforeAll(async () => {
    ({ dir, cleanup } = tempDir('sluice-sync-stall-'));
    plant = await startModbusPlant({ [VALVE]: { profile: 'valve', base: 0, travelMs: 50 } });
    const configPath = await writeDaemonSite(dir, plant, 'syncstall');
    const config = parse(readFileSync(configPath, 'utf8')) as Record<string, unknown>;
    config.identities = { ops: { tokenSha256: sha256(TOKEN).toString('hex'), devices: ['*'] } };
    writeFileSync(configPath, stringify(config));
    ca = readFileSync(join(dir, 'cert.pem'), 'utf8');
    disk = stallableDisk(dir);
    daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
      logger: pino({ level: 'silent' }),
      syncStallMs: STALL_MS,
    });
  }, 30_000);

  afterAll(async () => {
    disk.resume();
    await daemon.stop();
    await plant.stop();
    disk.remove();
    cleanup();
  });

  const get = (path: string): Promise<HttpsAnswer> =>
    httpsRequest({ port: daemon.https!.port, ca, token: TOKEN }, 'GET', path);

  it('is 503 naming the sync that has not returned; 200 again, and the command run once, when the disk is back', async () => {
    expect((await get('/readyz')).status).toBe(200);
    const valve = plant.device(VALVE);
    const writes = valve.counters.writesReceived;
    // The stall ends after 10 s whatever this process does (stallableDisk).
    disk.stall(10_000);
    const sent = httpsRequest(
      { port: daemon.https!.port, ca, token: TOKEN },
      'POST',
      '/v1/commands',
      { 'idempotency-key': 'stalled', prefer: 'wait=30' },
      { device: VALVE, action: 'open', issuedAt: new Date().toISOString(), ttlMs: 120_000 },
    );
    try {
      const readyz = await until(
        async () => {
          const answer = await get('/readyz');
          return answer.status === 503 ? answer : undefined;
        },
        3 * STALL_MS,
        '/readyz 503 while the sync has not returned',
      );
      const journal = (JSON.parse(readyz.body) as { checks: Record<string, unknown> }).checks
        .journal as { ok: boolean; detail: string };
      expect(journal.ok).toBe(false);
      expect(journal.detail).toMatch(
        /^journal unavailable \(sync\): the journal's sync \(fdatasync of its write-ahead log\) has not returned for \d+\.\d s: a slow or stalled disk; every command waits for it/,
      );
      // Ground truth meanwhile: nothing written to the valve.
      expect(valve.counters.writesReceived).toBe(writes);
    } finally {
      disk.resume();
    }
    const answer = await sent;
    expect(answer.status, answer.body).toBe(200);
    expect(valve.counters.writesReceived).toBe(writes + 1);
    await until(
      async () => ((await get('/readyz')).status === 200 ? true : undefined),
      10_000,
      '/readyz 200 once the disk is back',
    );
    const onFile = SqliteJournal.open({ path: join(disk.stateDir, 'journal.db'), readonly: true });
    try {
      expect(onFile.findByKey('stalled')[0]?.state).toBe('confirmed');
    } finally {
      onFile.close();
    }
  }, 60_000);
});
