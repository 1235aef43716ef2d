import { closeSync, openSync, writeSync } from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';

/**
 * A journal with one damaged page, as a torn write or a failing SD card leaves one: 2,000
 * commands claimed by the journal's own code (scope `ops`, keys `key-0`…, closes already past
 * their deadline, on the device `deviceOf` names), enough for the key index to span many pages;
 * then one leaf of the key index, in the middle of the file, overwritten with garbage. SQLite
 * meets the damage only when a statement reads that page.
 */
export function journalWithDamagedKeyIndex(
  path: string,
  deviceOf: (i: number) => string = () => 'inlet-valve',
  damaged = 'commands_key',
): void {
  const journal = SqliteJournal.open({ path });
  const now = Date.now();
  for (let i = 0; i < 2_000; i++) {
    journal.claim({
      scope: 'ops',
      key: `key-${i}`,
      fingerprint: `f-${i}`,
      device: deviceOf(i),
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
  damageMiddleLeaf(path, damaged);
}

/**
 * Overwrites with garbage one leaf page of the table or index `name` (the middle one of its
 * leaves), as a torn write or a failing SD card leaves a page: SQLite meets the damage only
 * when a statement reads that page. Returns the page's number.
 */
export function damageMiddleLeaf(path: string, name: string): number {
  const db = new BetterSqlite3(path, { readonly: true });
  const pageSize = db.pragma('page_size', { simple: true }) as number;
  const leaves = db
    .prepare("SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf'")
    .all(name) as { pageno: number }[];
  db.close();
  if (leaves.length <= 2) throw new Error(`${name} has ${leaves.length} leaves: too few`);
  const page = leaves[Math.floor(leaves.length / 2)]!.pageno;
  const fd = openSync(path, 'r+');
  try {
    writeSync(fd, Buffer.alloc(pageSize, 0x5a), 0, pageSize, (page - 1) * pageSize);
  } finally {
    closeSync(fd);
  }
  return page;
}
