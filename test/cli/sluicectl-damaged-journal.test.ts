import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { tempDir } from '../helpers/fixtures.js';
import { sluicectl, sluicectlInProcess } from './helpers.js';

/**
 * A journal with one damaged page (a torn write, a failing SD card): SQLite meets it only when a
 * statement reads it, so `list`, `stuck` and `show` of commands on other pages printed what they
 * found, exit 0, and the commands on the damaged page were missing without a word. sluicectl
 * checks the whole file after its read (quick_check) and refuses: one clear error naming the
 * file and what to do, exit 1. The journal is written by the journal's own code; the damage is
 * garbage in one leaf of the key index, as test/daemon/damaged-journal.test.ts makes it; the file
 * is left as it was.
 */

let dir: string;
let cleanup: () => void;
let path: string;
let damaged: Buffer;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('sluice-ctl-damaged-'));
  path = join(dir, 'journal.db');
  const journal = SqliteJournal.open({ path });
  const now = Date.now();
  // Enough keys for the key index to span many pages.
  for (let i = 0; i < 2_000; i++) {
    journal.claim({
      scope: 'ops',
      key: `key-${i}`,
      fingerprint: `f-${i}`,
      device: i === 0 ? 'outlet-valve' : 'inlet-valve',
      action: 'close',
      position: null,
      issuedAt: now,
      issuedAtSource: 'issuer',
      ttlMs: 30_000,
      deadline: now - 1,
      intake: 'test',
      acceptedAt: now,
    });
  }
  journal.close();
  const db = new BetterSqlite3(path, { readonly: true });
  const pageSize = db.pragma('page_size', { simple: true }) as number;
  const leaves = db
    .prepare("SELECT pageno FROM dbstat WHERE name = 'commands_key' AND pagetype = 'leaf'")
    .all() as { pageno: number }[];
  db.close();
  expect(leaves.length).toBeGreaterThan(2);
  const page = leaves[Math.floor(leaves.length / 2)]!.pageno;
  const fd = openSync(path, 'r+');
  writeSync(fd, Buffer.alloc(pageSize, 0x5a), 0, pageSize, (page - 1) * pageSize);
  closeSync(fd);
  damaged = readFileSync(path);
});

afterAll(() => {
  cleanup();
});

const refused = (): RegExp =>
  new RegExp(
    `^sluicectl: the journal ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is damaged \\(SQLite's check: "[^"]+"\\): what its readable pages hold is not shown.*restore the journal from a backup, or move it aside with its -wal and -shm files`,
  );

describe('sluicectl on a journal with a damaged page', () => {
  it.each([
    ['list', ['list', '--limit', '5']],
    ['list --device', ['list', '--device', 'outlet-valve', '--json']],
    ['stuck', ['stuck']],
    ['show', ['show', 'key-0']],
  ] as const)('%s: refused, exit 1, one clear error', async (_name, words) => {
    const run = await sluicectlInProcess(['--journal', path, ...words]);
    expect({ code: run.code, stdout: run.stdout }).toEqual({ code: 1, stdout: '' });
    expect(run.stderr).toMatch(refused());
  });

  it('the binary, as a process; the file is left as it was', async () => {
    const run = await sluicectl(['--journal', path, 'list']);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(refused());
    expect(readFileSync(path).equals(damaged)).toBe(true);
  });
});
