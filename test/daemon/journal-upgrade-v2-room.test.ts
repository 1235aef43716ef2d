import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import { mkdirSync, readFileSync, statSync, statfsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Plant } from '../../simulators/plant.js';
import { SLUICED, cleanEnv, startSluiced } from '../config/sluiced.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { writeSettledJournal } from '../helpers/settled-journal.js';
import { fillFilesystem, mountTmpfs, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * The upgrade from schema version 2 builds two indexes of the commands that ended failed or
 * rejected, and nothing else; the room it asked for in SQLite's temporary folder was 0.3 × the
 * whole journal (the worst case measured, every command failed): a journal of confirmed commands
 * was refused, the folder a few MB short of what the upgrade never uses, at every start. The
 * room is now counted from the failed and rejected commands when the whole journal's would
 * refuse: the start upgrades, `sluiced --check` says so, every command kept; a folder with less
 * than what those commands need is still refused before anything is written. An upgrade that
 * runs out of room all the same (another writer took it meanwhile) is undone, every command
 * kept, and the next start upgrades the journal.
 * Real sluiced and `sluiced --check`, a real version 2 journal, SQLITE_TMPDIR a real small
 * tmpfs; ground truth: the journal file's bytes, version, indexes and rows. The filesystem
 * filled during the upgrade is strace's ENOSPC on the upgrade process's writes to the log: a
 * real filesystem has the room the estimate found, and another writer taking it between the
 * check and the commit is a race a test cannot time.
 */

const mountable = tmpfsAvailable();
const haveStrace = realComponent('strace', hasCommand('strace'), 'apt-get install strace');
const COMMANDS = 12_000;
const UNSUCCESSFUL = 40;
const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;

describe.runIf(mountable)(
  'an upgrade from version 2 of a journal of commands that mostly succeeded',
  () => {
    let plant: Plant;
    let dir: string;
    let cleanup: () => void;
    let configPath: string;
    let sorts: string;

    beforeAll(async () => {
      ({ dir, cleanup } = tempDir('sluice-upgrade-v2-room-'));
      plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
      configPath = await writeDaemonSite(dir, plant, 'upgrade-v2-room');
      sorts = join(dir, 'sorts');
      mkdirSync(sorts);
      // Room for the sorts of a few commands (1 MB asked, and 1 MB besides), not for 0.3 × a
      // journal of ten megabytes.
      mountTmpfs(sorts, '2m');
    }, 30_000);

    afterAll(async () => {
      if (!mountable) return;
      unmount(sorts);
      await plant.stop();
      cleanup();
    });

    /** A version 2 journal: written by this Sluice, its version 3 indexes dropped. */
    function writeV2(path: string): void {
      writeSettledJournal(path, COMMANDS, 'inlet-valve');
      const db = new BetterSqlite3(path);
      try {
        db.exec(`
          DROP INDEX commands_unsuccessful;
          DROP INDEX commands_unsuccessful_device;
          UPDATE commands SET state = 'failed', code = 'DEVICE_UNREACHABLE'
            WHERE id % 300 = 0;
        `);
        db.pragma('user_version = 2');
        db.pragma('wal_checkpoint(TRUNCATE)');
      } finally {
        db.close();
      }
    }

    const rowsOf = (path: string): unknown[] => {
      const db = new BetterSqlite3(path, { readonly: true });
      try {
        return db.prepare('SELECT id, key, state, code FROM commands ORDER BY id').all();
      } finally {
        db.close();
      }
    };

    const check = (): SpawnSyncReturns<string> =>
      spawnSync(process.execPath, [...SLUICED, '--config', configPath, '--check'], {
        encoding: 'utf8',
        env: { ...cleanEnv(), SQLITE_TMPDIR: sorts },
      });

    it('is refused only when the folder has not the room of its failed and rejected commands, and upgrades with every command kept', async () => {
      const state = join(dir, 'state');
      mkdirSync(state);
      const path = join(state, 'journal.db');
      writeV2(path);
      const size = statSync(path).size;
      const rows = rowsOf(path);
      expect(rows.filter((r) => (r as { state: string }).state === 'failed')).toHaveLength(
        UNSUCCESSFUL,
      );
      const free = (): number => {
        const fs = statfsSync(sorts);
        return fs.bavail * fs.bsize;
      };
      // The premise: the whole journal's worst case does not fit in the folder.
      expect(0.3 * size + 1e6).toBeGreaterThan(free() + 1e6);

      // Short of even a few commands' room (1 MB): refused before anything is written.
      const filler = join(sorts, 'filler');
      fillFilesystem(filler);
      const before = readFileSync(path);
      const refused = check();
      expect(refused.status, refused.stderr).toBe(1);
      expect(refused.stderr).toContain(
        `sluiced: not enough free space to upgrade the journal ${path} from schema version 2 to 3 in SQLite's temporary folder ${sorts} (SQLITE_TMPDIR, else TMPDIR, else /var/tmp)`,
      );
      const start = startSluiced(['--config', configPath], { SQLITE_TMPDIR: sorts });
      try {
        expect(await start.exited).toBe(1);
      } finally {
        await start.kill();
      }
      expect(readFileSync(path).equals(before)).toBe(true);

      // With the room of its failed and rejected commands (not of 0.3 × the journal): the check
      // says what the start will do, and passes.
      writeFileSync(filler, '');
      const passed = check();
      expect(passed.status, passed.stderr).toBe(0);
      const said = new RegExp(
        `journal: schema version 2, upgraded to 3 at start \\(needs about [\\d.]+ MB free, [\\d.]+ MB are; its sorts about ([\\d.]+) MB in ${sorts}, ${mb(free()).replace('.', '\\.')} are free there\\)`,
      ).exec(passed.stdout);
      expect(said, passed.stdout).not.toBeNull();
      // 1 MB, and 0.3 × the part of the journal its failed commands are (0.01 × at the least).
      expect(Number(said![1])).toBeGreaterThanOrEqual(1);
      expect(Number(said![1])).toBeLessThan(1 + (0.02 * size) / 1e6);
      expect(readFileSync(path).equals(before)).toBe(true);

      const sluiced = startSluiced(['--config', configPath], { SQLITE_TMPDIR: sorts });
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
        expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
        const indexes = db
          .prepare("SELECT name FROM sqlite_schema WHERE name LIKE 'commands_unsuccessful%'")
          .pluck()
          .all();
        expect(indexes.sort()).toEqual(['commands_unsuccessful', 'commands_unsuccessful_device']);
      } finally {
        db.close();
      }
      expect(rowsOf(path)).toEqual(rows);
    }, 120_000);

    it.runIf(haveStrace)(
      'run out of room midway, is undone with every command kept, and done at the next start',
      async () => {
        const state = join(dir, 'state-full');
        mkdirSync(state);
        const path = join(state, 'journal.db');
        writeV2(path);
        const rows = rowsOf(path);
        // SQLite's temporary folder as the first case left it: room for the sorts of the failed
        // commands, not for the whole journal's worst case (the count is made and passes).
        // The daemon's upgrade process (upgrade-process.ts, as upgrade.ts forks it), every write
        // to the log after its header failing ENOSPC, as on a filesystem that filled.
        const child = spawn(
          'strace',
          [
            '-f',
            '-qq',
            '-o',
            '/dev/null',
            '-P',
            `${path}-wal`,
            '-e',
            'trace=pwrite64,write',
            '-e',
            'inject=pwrite64,write:error=ENOSPC:when=2+',
            process.execPath,
            ...nodeArgs('src/journal/upgrade-process.ts'),
            path,
            '2000',
          ],
          {
            stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
            env: { ...cleanEnv(), SQLITE_TMPDIR: sorts },
          },
        );
        let answer: unknown = null;
        child.on('message', (m) => (answer = m));
        await new Promise((resolve) => child.once('exit', resolve));
        expect(answer).toMatchObject({ kind: 'error' });
        const message = (answer as { message: string }).message;
        expect(message).toContain(
          `journal unavailable (open): SQLITE_FULL: the filesystem of ${path}`,
        );
        expect(message).toContain(
          'the upgrade was undone and the journal is left as it was (version 2)',
        );
        const db = new BetterSqlite3(path, { readonly: true });
        try {
          expect(db.pragma('user_version', { simple: true })).toBe(2);
          expect(db.pragma('integrity_check', { simple: true })).toBe('ok');
          expect(
            db
              .prepare("SELECT name FROM sqlite_schema WHERE name LIKE 'commands_unsuccessful%'")
              .all(),
          ).toEqual([]);
        } finally {
          db.close();
        }
        expect(rowsOf(path)).toEqual(rows);

        // The next start, with the room: upgraded, every command kept.
        const config = readFileSync(configPath, 'utf8').replace(
          /^stateDir: .*$/m,
          `stateDir: ${state}`,
        );
        const fullConfig = join(dir, 'full.yaml');
        writeFileSync(fullConfig, config);
        const sluiced = startSluiced(['--config', fullConfig], { SQLITE_TMPDIR: sorts });
        try {
          const outcome = await Promise.race([
            sluiced.exited.then((c) => `exited ${String(c)}`),
            sluiced
              .line((l) => l.includes('"msg":"sluiced started"'), 45_000)
              .then(() => 'started'),
          ]);
          expect(outcome, sluiced.lines.join('\n') + sluiced.stderr()).toBe('started');
          expect(await sluiced.stop()).toBe(0);
        } finally {
          await sluiced.kill();
        }
        const after = new BetterSqlite3(path, { readonly: true });
        try {
          expect(after.pragma('user_version', { simple: true })).toBe(3);
        } finally {
          after.close();
        }
        expect(rowsOf(path)).toEqual(rows);
      },
      120_000,
    );
  },
);
