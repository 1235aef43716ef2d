import { spawnSync } from 'node:child_process';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  rmSync,
  statSync,
  statfsSync,
  truncateSync,
} from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MIGRATIONS } from '../../src/journal/migrations.js';
import type { Plant } from '../../simulators/plant.js';
import { SLUICED, cleanEnv, runSluiced, startSluiced } from '../config/sluiced.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { tempDir } from '../helpers/fixtures.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { fillFilesystem, mountTmpfs, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * A journal of an older schema on a filesystem without the room its upgrade needs. sluiced
 * tried the upgrade anyway: it filled the filesystem to the last block, failed SQLITE_FULL,
 * rolled back and exited 1 — and under systemd (Restart=on-failure, RestartSec=2s) it did so
 * again every 2 s for as long as the space was not freed: the flash written over and over,
 * and every other writer on that filesystem met ENOSPC each time, while nothing had changed.
 * A start must refuse before it writes anything, say how much it needs and how much is free,
 * exit so that the unit starts it again (1, not 3), and the first start that finds the room
 * must upgrade the journal with every command kept. Ground truth: the system calls of the
 * refused process (strace: every write it made, with the file it went to), the filesystem's
 * used blocks, the journal's bytes, and the upgraded file. And each refused start must be cheap:
 * it must not read the whole journal through (the start's check of the file) to say so.
 */

const haveStrace = realComponent('strace', hasCommand('strace'), 'apt-get install strace');
const mountable = tmpfsAvailable();
const COMMANDS = 3_000;

let plant: Plant;
let dir: string;
let cleanup: () => void;
let configPath: string;
let state: string;

beforeAll(async () => {
  if (!mountable || !haveStrace) return;
  ({ dir, cleanup } = tempDir('sluice-upgrade-room-'));
  plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
  configPath = await writeDaemonSite(dir, plant, 'upgrade-room');
  state = join(dir, 'state');
  mkdirSync(state);
  mountTmpfs(state, '16m');
}, 30_000);

afterAll(async () => {
  if (!mountable || !haveStrace) return;
  unmount(state);
  await plant.stop();
  cleanup();
});

/** A version 1 journal as the Sluice of that schema left it: settled commands, recent. */
function writeV1(path: string): void {
  const v1 = new BetterSqlite3(path);
  v1.pragma('journal_mode = WAL');
  MIGRATIONS[0]!.up(v1);
  v1.pragma('user_version = 1');
  const now = Date.now();
  const insert = v1.prepare(`
    INSERT INTO commands (scope, key, fingerprint, device, action, position, issued_at,
      issued_at_source, ttl_ms, deadline, intake, state, code, seq, attempts, observed, detail,
      accepted_at, dispatched_at, settled_at, response)
    VALUES ('ops', ?, 'fp', 'inlet-valve', 'open', NULL, @now, 'issuer', 30000, @now + 30000,
      'https', 'confirmed', 'OK', ?, 1, '{"state":"OPEN"}', 'readback after the write shows OPEN',
      @now, @now, @now, ?)`);
  const event = v1.prepare(
    "INSERT INTO events (scope, key, at, from_state, to_state, intake, detail) VALUES ('ops', ?, ?, ?, ?, 'https', ?)",
  );
  v1.transaction(() => {
    for (let i = 0; i < COMMANDS; i++) {
      insert.run(`k${i}`, i + 1, 'r'.repeat(300), { now });
      event.run(`k${i}`, now, null, 'accepted', 'accepted');
      event.run(`k${i}`, now, 'accepted', 'dispatched', `seq ${i + 1}`);
      event.run(`k${i}`, now, 'dispatched', 'confirmed', 'OK');
    }
  })();
  v1.pragma('wal_checkpoint(TRUNCATE)');
  v1.close();
}

describe.runIf(mountable && haveStrace)('an upgrade the filesystem has no room for', () => {
  it('sluiced refuses it before writing anything, names what it needs and what is free, and upgrades once there is room', async () => {
    const path = join(state, 'journal.db');
    writeV1(path);
    const filler = join(state, 'filler');
    fillFilesystem(filler);
    truncateSync(filler, statSync(filler).size - 256 * 1024);
    const before = readFileSync(path);
    const used = (): number => {
      const fs = statfsSync(state);
      return (fs.blocks - fs.bfree) * fs.bsize;
    };
    const usedBefore = used();
    const fs = statfsSync(state);
    const free = fs.bavail * fs.bsize;

    // A start as the unit makes it, under strace: every write system call, with its file.
    const trace = join(dir, 'strace.log');
    const refused = spawnSync(
      'strace',
      [
        '-f',
        '-qq',
        '-y',
        '-e',
        'trace=write,pwrite64,writev,pwritev,pwritev2,ftruncate,fallocate,truncate,copy_file_range,read,pread64',
        '-o',
        trace,
        process.execPath,
        ...SLUICED,
        '--config',
        configPath,
      ],
      { encoding: 'utf8', env: cleanEnv(), timeout: 60_000 },
    );
    // 1, not 3: the unit starts it again (RestartPreventExitStatus=2 3), and one of those
    // starts finds the room.
    expect(refused.status).toBe(1);
    const fatal = refused.stdout
      .split('\n')
      .find((l) => l.includes('"msg":"sluiced could not start"'));
    const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;
    const size = before.length;
    const needed = Math.ceil(2.6 * size) + 1e6;
    expect(fatal).toContain(
      `not enough free space to upgrade the journal ${path} from schema version 1 to 3: the upgrade copies its tables and needs about ${mb(needed)} free on its filesystem (2.6 × the journal's ${mb(size)}, and 1.0 MB for the log), and `,
    );
    // What was free as the daemon measured it (the log's index, 32 KB, taken by then).
    const said = /, and ([\d.]+) MB are free; nothing was written/.exec(fatal ?? '');
    expect(Math.abs(Number(said?.[1]) - free / 1e6)).toBeLessThanOrEqual(0.1);
    expect(fatal).toContain('the journal is left as it was (version 1)');

    // Written on the journal's filesystem: the log's index (-shm, 32 KB: SQLite's reads need
    // it) and the lock's rollback journal (its header: BEGIN EXCLUSIVE, one daemon per
    // journal), both removed at exit, and nothing else — not a byte of the journal or its log.
    const calls = readFileSync(trace, 'utf8')
      .split('\n')
      .flatMap((line) => {
        const m = /^\d+\s+(\w+)\(\d+<([^>]*)>.*= (-?\d+)/.exec(line);
        return m !== null && m[2]!.startsWith(`${state}/`)
          ? [{ name: m[1]!, file: m[2]!, bytes: Number(m[3]) }]
          : [];
      });
    const writes = calls.filter((c) => !/^p?read/.test(c.name));
    expect(writes.length).toBeGreaterThan(0); // The trace sees the journal's folder.
    const bounded = [`${path}-shm`, `${path}.lock-journal`];
    expect(writes.filter((c) => !bounded.includes(c.file))).toEqual([]);
    // Nor read through (each restart did, to check it): its header and first page.
    const read = calls
      .filter((c) => /^p?read/.test(c.name) && c.file === path)
      .reduce((sum, c) => sum + Math.max(0, c.bytes), 0);
    expect(read).toBeLessThan(64 * 1024);
    expect(used()).toBe(usedBefore);
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(existsSync(`${path}-wal`)).toBe(false);

    // `sluiced --check`, which an operator runs before restarting on a new version, says the
    // same and fails as the start does; it reads the file's header only, and writes nothing
    // (no -shm either: it opens no SQLite connection).
    const check = runSluiced(['--config', configPath, '--check']);
    expect(check.status, check.stderr).toBe(1);
    expect(check.stderr).toContain(
      `sluiced: not enough free space to upgrade the journal ${path} from schema version 1 to 3: the upgrade copies its tables and needs about ${mb(needed)} free on its filesystem`,
    );
    expect(check.stderr).toContain(': the start would refuse it (exit 1)\n');
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(existsSync(`${path}-shm`)).toBe(false);
    expect(used()).toBe(usedBefore);

    // Space freed: the check says what the start will do, and passes.
    rmSync(filler);
    const room = runSluiced(['--config', configPath, '--check']);
    expect(room.status, room.stderr).toBe(0);
    expect(room.stdout).toMatch(
      new RegExp(
        // Its sorts go to SQLite's temporary folder (/var/tmp here), not on the journal's tmpfs.
        `journal: schema version 1, upgraded to 3 at start \\(needs about ${mb(needed).replace('.', '\\.')} free, [\\d.]+ MB are; its sorts about [\\d.]+ MB in [^ ]+, [\\d.]+ MB are free there\\)`,
      ),
    );
    expect(readFileSync(path).equals(before)).toBe(true);

    // The same start comes up, the journal upgraded, every command kept.
    const sluiced = startSluiced(['--config', configPath]);
    try {
      const outcome = await Promise.race([
        sluiced.exited.then((code) => `exited ${String(code)}`),
        sluiced.line((l) => l.includes('"msg":"sluiced started"'), 45_000).then(() => 'started'),
      ]);
      expect(outcome, sluiced.lines.join('\n') + sluiced.stderr()).toBe('started');
      expect(await sluiced.stop()).toBe(0);
    } finally {
      await sluiced.kill();
    }
    expect(runSluiced(['--config', configPath, '--check']).stdout).toContain(
      'journal: schema version 3\n',
    );
    const db = new BetterSqlite3(path, { readonly: true });
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(3);
      const rows = db.prepare('SELECT key, state, code, seq FROM commands ORDER BY id').all();
      expect(rows).toEqual(
        Array.from({ length: COMMANDS }, (_, i) => ({
          key: `k${i}`,
          state: 'confirmed',
          code: 'OK',
          seq: i + 1,
        })),
      );
      const events = db.prepare('SELECT count(*) AS n FROM events').get() as { n: number };
      expect(events.n).toBe(3 * COMMANDS);
    } finally {
      db.close();
    }
  }, 120_000);
});
