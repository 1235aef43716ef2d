import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Plant } from '../../simulators/plant.js';
import { SLUICED, cleanEnv, startSluiced } from '../config/sluiced.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { writeV1Journal } from '../helpers/v1-journal.js';
import { fillFilesystem, mountTmpfs, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * The upgrade of an older journal sorts in SQLite's temporary folder (SQLITE_TMPDIR, else
 * TMPDIR, else /var/tmp: this build's temp_store is files), not beside the journal: the copy
 * from version 1 sorts every command there (measured up to 0.75 × the journal), the index build
 * of version 3 the failed and rejected ones (up to 0.22 ×), and the statement journal goes
 * there past 64 KB. The start's room check counted the journal's filesystem alone: with that
 * folder full (a small /tmp, /var/tmp on a full root filesystem) the upgrade ran, failed
 * SQLITE_FULL midway and said "the filesystem of <journal> is full", which had gigabytes free,
 * at every start. The start must refuse before it writes anything, naming the folder and the
 * room it needs there, and a start with the room (SQLITE_TMPDIR pointed at a folder with it)
 * must upgrade with every command kept. Real sluiced, SQLITE_TMPDIR a real full tmpfs; ground
 * truth: the journal file's bytes and, once upgraded, its version and rows.
 */

const mountable = tmpfsAvailable();
const COMMANDS = 3_000;
const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;

describe.runIf(mountable)(
  'an upgrade whose sorts have no room in SQLite’s temporary folder',
  () => {
    let plant: Plant;
    let dir: string;
    let cleanup: () => void;
    let configPath: string;
    let sorts: string;

    beforeAll(async () => {
      ({ dir, cleanup } = tempDir('sluice-upgrade-sorts-'));
      plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
      configPath = await writeDaemonSite(dir, plant, 'upgrade-sorts');
      sorts = join(dir, 'sorts');
      mkdirSync(sorts);
      mountTmpfs(sorts, '1m');
      fillFilesystem(join(sorts, 'filler'));
    }, 30_000);

    afterAll(async () => {
      if (!mountable) return;
      unmount(sorts);
      await plant.stop();
      cleanup();
    });

    it('sluiced refuses it before writing anything, names the folder and the room, and upgrades once it has the room', async () => {
      const state = join(dir, 'state');
      mkdirSync(state);
      const path = join(state, 'journal.db');
      writeV1Journal(path, COMMANDS);
      const before = readFileSync(path);
      const size = statSync(path).size;
      const refusal = `not enough free space to upgrade the journal ${path} from schema version 1 to 3 in SQLite's temporary folder ${sorts} (SQLITE_TMPDIR, else TMPDIR, else /var/tmp): the upgrade sorts its commands there and needs about ${mb(size + 1e6)} free on that folder's filesystem (as much as the journal's ${mb(size)}, and 1.0 MB), and 0.0 MB are free; nothing was written, the journal is left as it was (version 1)`;

      const refused = startSluiced(['--config', configPath], { SQLITE_TMPDIR: sorts });
      let code: number | null;
      try {
        code = await refused.exited;
      } finally {
        await refused.kill();
      }
      // 1: the unit starts it again, and the first start with the room upgrades the journal.
      expect(code).toBe(1);
      const fatal = refused.lines.find((l) => l.includes('"msg":"sluiced could not start"'));
      expect(fatal).toContain(refusal);
      expect(fatal).not.toContain('SQLITE_FULL');
      expect(readFileSync(path).equals(before)).toBe(true);
      expect(existsSync(`${path}-wal`)).toBe(false);

      // `sluiced --check` says the same, and fails as the start does.
      const check = spawnSync(process.execPath, [...SLUICED, '--config', configPath, '--check'], {
        encoding: 'utf8',
        env: { ...cleanEnv(), SQLITE_TMPDIR: sorts },
      });
      expect(check.status, check.stderr).toBe(1);
      expect(check.stderr).toContain(`sluiced: ${refusal}`);

      // As the refusal says: SQLITE_TMPDIR at the state folder, whose room is there.
      const sluiced = startSluiced(['--config', configPath], { SQLITE_TMPDIR: state });
      try {
        const outcome = await Promise.race([
          sluiced.exited.then((c) => `exited ${String(c)}`),
          sluiced.line((l) => l.includes('"msg":"sluiced started"'), 45_000).then(() => 'started'),
        ]);
        expect(outcome, sluiced.lines.join('\n') + sluiced.stderr()).toBe('started');
        expect(await sluiced.stop()).toBe(0);
      } finally {
        await sluiced.kill();
      }
      const db = new BetterSqlite3(path, { readonly: true });
      try {
        expect(db.pragma('user_version', { simple: true })).toBe(3);
        const rows = db.prepare('SELECT key, state, seq FROM commands ORDER BY id').all();
        expect(rows).toEqual(
          Array.from({ length: COMMANDS }, (_, i) => ({
            key: `k${i}`,
            state: 'confirmed',
            seq: i + 1,
          })),
        );
      } finally {
        db.close();
      }
    }, 120_000);
  },
);
