import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { SLUICED, cleanEnv, startSluiced } from '../config/sluiced.js';
import { startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import { schemaOf } from '../helpers/journal-schema.js';
import { hasCommand, realComponent } from '../helpers/real.js';
import { writeV1Journal } from '../helpers/v1-journal.js';
import { mountTmpfs, tmpfsAvailable, unmount } from '../reliability/support.js';

/**
 * The upgrade from schema version 1 commits in two steps (migrations.ts): the copy of the tables
 * to version 2, then version 3's indexes of the commands that ended rejected or failed. Here the
 * journal's filesystem fills between them (another writer takes its last blocks): version 2 is
 * committed, the index build of the step to 3 meets the full filesystem and is rolled back.
 * sluiced must say so truly (not that the whole upgrade was undone, nor that the journal is
 * upgraded), leave the journal whole at version 2 with every command, and the next start with
 * room must end the upgrade with every command kept. Real sluiced (its upgrade in its own
 * process), the SQLite journal on a real tmpfs, a reader of the journal (a backup) that fills
 * the filesystem between the steps. That moment is made exact with strace: it stops the
 * upgrade's process (SIGSTOP) at its second fsync of the log, the one that commits version 2
 * (the first syncs the log's header as the step writes its first page; a step of a journal
 * this size fits SQLite's page cache, so no page is written to the log in between), and the
 * reader fills the filesystem then and lets it go on (upgrade-reader-process.ts). Filled once
 * version 2 was seen, the fill raced the index build and came after it at times. Ground truth:
 * the journal file as SQLite reads it (its version, its indexes, its rows).
 */

const mountable = tmpfsAvailable();
const haveStrace = realComponent('strace', hasCommand('strace'), 'apt-get install strace');
const COMMANDS = 4_000;

interface Row {
  scope: string;
  key: string;
  state: string;
  code: string | null;
  seq: number | null;
}

function rowsOf(path: string): Row[] {
  const db = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
  try {
    return db
      .prepare('SELECT scope, key, state, code, seq FROM commands ORDER BY scope, key')
      .all() as Row[];
  } finally {
    db.close();
  }
}

describe.runIf(mountable && haveStrace)('an upgrade from version 1 whose second step fails', () => {
  let plant: Plant;
  let dir: string;
  let cleanup: () => void;
  let configPath: string;
  let state: string;
  const children: ChildProcess[] = [];

  beforeAll(async () => {
    ({ dir, cleanup } = tempDir('sluice-upgrade-step-'));
    plant = await startModbusPlant({ 'inlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
    configPath = await writeDaemonSite(dir, plant, 'upgrade-step');
    state = join(dir, 'state');
    mkdirSync(state);
    // Room for the upgrade's check (2.6 × the journal's 2.1 MB and 1 MB) and little more.
    mountTmpfs(state, '16m');
  }, 30_000);

  afterEach(() => {
    // Each in a process group of its own: strace with sluiced and its upgrade process.
    for (const c of children.splice(0)) {
      if (c.pid !== undefined && c.exitCode === null && c.signalCode === null) {
        process.kill(-c.pid, 'SIGKILL');
      }
    }
  });

  afterAll(async () => {
    if (!mountable) return;
    unmount(state);
    await plant.stop();
    cleanup();
  });

  it('leaves the journal whole at version 2, says its last step was undone, and the next start ends the upgrade', async () => {
    const path = join(state, 'journal.db');
    writeV1Journal(path, COMMANDS);
    // Some ended failed or rejected: the step to 3 indexes them.
    const v1 = new BetterSqlite3(path);
    v1.exec(`
      UPDATE commands SET state = 'failed', code = 'DEVICE_UNREACHABLE' WHERE seq % 4 = 0;
      UPDATE commands SET state = 'rejected', code = 'STALE_COMMAND' WHERE seq % 10 = 1;
    `);
    v1.pragma('wal_checkpoint(TRUNCATE)');
    v1.close();
    const before = rowsOf(path);
    const unsuccessful = before.filter((r) => r.state === 'failed' || r.state === 'rejected');
    expect(unsuccessful.length).toBe(1_400);

    const filler = join(state, 'filler');
    const trace = join(dir, 'strace.log');
    const reader = spawn(
      process.execPath,
      [...nodeArgs('test/helpers/upgrade-reader-process.ts'), path, '2', filler, trace],
      { stdio: ['ignore', 'pipe', 'inherit'], detached: true },
    );
    children.push(reader);
    const lines = createInterface({ input: reader.stdout })[Symbol.asyncIterator]();
    expect((await lines.next()).value).toBe('reading');
    const readerExited = new Promise((resolve) => reader.once('exit', resolve));

    // A start as the unit makes it, its processes traced for their fsyncs of the log alone.
    const failed = spawn(
      'strace',
      [
        '-f',
        '-qq',
        '-o',
        trace,
        '-P',
        `${path}-wal`,
        '-e',
        'trace=fsync,fdatasync',
        '-e',
        'inject=fsync,fdatasync:signal=SIGSTOP:when=2',
        process.execPath,
        ...SLUICED,
        '--config',
        configPath,
      ],
      { env: cleanEnv(), stdio: ['ignore', 'pipe', 'pipe'], detached: true },
    );
    children.push(failed);
    let output = '';
    failed.stdout.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    failed.stderr.on('data', (chunk: Buffer) => (output += chunk.toString('utf8')));
    const exited = new Promise<number | null>((resolve) => failed.once('exit', resolve));
    // Stopped with version 2's pages in the log, before its commit.
    expect((await lines.next()).value).toBe('version 1');
    expect((await lines.next()).value).toBe('filled');
    expect(await readerExited).toBe(0);
    const code = await exited;

    // 1: the unit starts it again, and the start that finds the room ends the upgrade.
    expect(code, output).toBe(1);
    const fatal = output.split('\n').find((l) => l.includes('"msg":"sluiced could not start"'));
    // The filesystem that filled may be the journal's or, when its sorts go elsewhere (/var/tmp
    // here), that one: SQLite says SQLITE_FULL for either.
    expect(fatal).toMatch(
      /SQLITE_FULL: the filesystem of [^ ]+\/journal\.db(, or that of SQLite's temporary folder [^ ]+ where the upgrade sorts,)? is full: upgrading the journal from schema version 1 to 3 copies its tables/,
    );
    expect(fatal).toContain('its last step was undone and the journal is at version 2');
    expect(fatal).not.toContain('left as it was');

    // Ground truth, the filesystem still full: version 2, whole, none of version 3's indexes,
    // every command as it was.
    const db = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
    try {
      expect(db.pragma('user_version', { simple: true })).toBe(2);
      expect(db.pragma('quick_check', { simple: true })).toBe('ok');
      const indexes = (
        db.prepare("SELECT name FROM sqlite_schema WHERE type = 'index'").all() as {
          name: string;
        }[]
      ).map((r) => r.name);
      expect(indexes).toContain('commands_open_device'); // Version 2's.
      expect(indexes.filter((n) => n.startsWith('commands_unsuccessful'))).toEqual([]);
    } finally {
      db.close();
    }
    expect(rowsOf(path)).toEqual(before);

    // Space freed: the next start upgrades the journal from version 2 and comes up.
    rmSync(filler);
    const sluiced = startSluiced(['--config', configPath]);
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
    const fresh = join(dir, 'fresh.db');
    SqliteJournal.open({ path: fresh }).close();
    expect(schemaOf(path)).toEqual(schemaOf(fresh));
    expect(rowsOf(path)).toEqual(before);
    const upgraded = new BetterSqlite3(path, { readonly: true, fileMustExist: true });
    try {
      expect(upgraded.pragma('user_version', { simple: true })).toBe(3);
      const listed = upgraded
        .prepare(
          "SELECT key FROM commands INDEXED BY commands_unsuccessful WHERE state IN ('rejected', 'failed') ORDER BY key",
        )
        .all() as { key: string }[];
      expect(listed.map((r) => r.key)).toEqual(unsuccessful.map((r) => r.key).sort());
    } finally {
      upgraded.close();
    }
  }, 120_000);
});
