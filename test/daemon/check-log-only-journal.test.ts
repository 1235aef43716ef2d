import { createHash } from 'node:crypto';
import { copyFileSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LATEST_VERSION } from '../../src/journal/migrations.js';
import { runSluiced } from '../config/sluiced.js';
import { configYaml } from '../cli/helpers.js';
import { journalLeftByKilledDaemon } from '../helpers/failing-disk.js';
import { tempDir } from '../helpers/fixtures.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';

/**
 * `sluiced --check` on the journal of a daemon killed before SQLite's first checkpoint: the file
 * holds only the switch to WAL, and its log (`-wal`) the schema version, the tables and every
 * command. The check read the version from the file's header alone and said "a file the start
 * checks (it is no Sluice journal this check can read)", exit 0, also of a newer Sluice's
 * journal the start refuses (exit 3); its rename check, without the log's index (`-shm`), read
 * the file alone and said "no such table: meta". It now reads such a journal through its log,
 * writing nothing. Real parts: journals written by the journal's own code and by SQLite, copied
 * as a killed process leaves them (with and without the index), the sluiced binary for the check
 * and for the start it foretells. Ground truth: the state folder's files and bytes, the same
 * after the check, and the start's own exit code.
 */

let dir: string;
let cleanup: () => void;

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-check-log-only-'));
  await loopbackCertificate(dir);
});

afterAll(() => {
  cleanup();
});

/** A site whose state folder holds `files`; its configuration's path. */
function site(name: string, files: readonly { name: string; data: Buffer }[]): string {
  const folder = join(dir, name);
  const state = join(folder, 'state');
  mkdirSync(state, { recursive: true, mode: 0o700 });
  for (const file of files) writeFileSync(join(state, file.name), file.data);
  copyFileSync(join(dir, 'cert.pem'), join(folder, 'cert.pem'));
  copyFileSync(join(dir, 'key.pem'), join(folder, 'key.pem'));
  const config = join(folder, 'sluice.yaml');
  writeFileSync(config, configYaml('state'));
  return config;
}

/** The state folder's files and their bytes: what a check must leave as they are. */
function onDisk(config: string): Record<string, string> {
  const state = join(config, '..', 'state');
  return Object.fromEntries(
    readdirSync(state)
      .sort()
      .map((name) => [
        name,
        createHash('sha256')
          .update(readFileSync(join(state, name)))
          .digest('hex'),
      ]),
  );
}

function check(config: string): { status: number | null; stdout: string; stderr: string } {
  const before = onDisk(config);
  const run = runSluiced(['--config', config, '--check']);
  expect(onDisk(config)).toEqual(before);
  return run;
}

describe("sluiced --check on a journal whose schema is in its log alone (a daemon killed before SQLite's first checkpoint)", () => {
  for (const withIndex of [true, false]) {
    it(`reads it through its log${withIndex ? '' : ' without its index (-shm)'}: its schema version, and the renames checked`, async () => {
      const source = join(dir, `source-${String(withIndex)}.db`);
      const [file, log] = await journalLeftByKilledDaemon(source, true);
      // Its schema version where the check looked for it alone: not in the file's header.
      expect(file!.data.readUInt32BE(60)).toBe(0);
      const files = [
        { name: 'journal.db', data: file!.data },
        { name: 'journal.db-wal', data: log!.data },
      ];
      if (withIndex) {
        // The index the killed daemon's connection left: made here by a reader of the copy.
        const copy = join(dir, `copy-${String(withIndex)}`);
        mkdirSync(copy);
        for (const f of files) writeFileSync(join(copy, f.name), f.data);
        const reader = new BetterSqlite3(join(copy, 'journal.db'), { readonly: true });
        reader.pragma('user_version');
        files.push({ name: 'journal.db-shm', data: readFileSync(join(copy, 'journal.db-shm')) });
        reader.close();
      }
      const config = site(`killed-${String(withIndex)}`, files);
      const journal = join(config, '..', 'state', 'journal.db');

      const run = check(config);
      expect(run.stderr).toBe('');
      expect(run.stdout).toContain('configuration is valid (nothing was created)');
      expect(run.stdout).toContain(`            journal: schema version ${LATEST_VERSION}\n`);
      expect(run.stdout).toContain(
        `  renames   no device or identity renamed against the journal ${journal}\n`,
      );
      expect(run.stdout).not.toContain('could not be read');
      expect(run.stdout).not.toContain('was not read');
      expect(run.status).toBe(0);
    }, 60_000);
  }

  it('fails on a newer Sluice journal (exit 3) as the start does', () => {
    // Written by SQLite as a newer Sluice would leave it, killed before its first checkpoint:
    // copied while its connection is open (its close would copy the log into the file).
    const source = join(dir, 'newer.db');
    const db = new BetterSqlite3(source);
    let files: { name: string; data: Buffer }[];
    try {
      db.pragma('journal_mode = WAL');
      db.exec('CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)');
      db.pragma(`user_version = ${LATEST_VERSION + 1}`);
      files = [
        { name: 'journal.db', data: readFileSync(source) },
        { name: 'journal.db-wal', data: readFileSync(`${source}-wal`) },
      ];
    } finally {
      db.close();
    }
    expect(files[0]!.data.readUInt32BE(60)).toBe(0);
    const config = site('newer', files);
    const journal = join(config, '..', 'state', 'journal.db');

    const run = check(config);
    expect(run.stdout).toBe('');
    expect(run.stderr).toBe(
      `sluiced: the journal ${journal} is of schema version ${LATEST_VERSION + 1}, written by a newer Sluice: this one cannot read it, and the start would refuse it (exit 3)\n`,
    );
    expect(run.status).toBe(3);
    // What the check foretold.
    const start = runSluiced(['--config', config]);
    expect(start.status).toBe(3);
  }, 60_000);
});
