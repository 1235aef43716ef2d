// Another program reading the journal while sluiced upgrades it (a backup, the sqlite3 shell),
// and another writer taking the filesystem's last blocks meanwhile. Holds a read transaction
// begun before the upgrade, and says "reading" on stdout; once the upgrade is committed (a new
// connection reads the version `target`), fills the filesystem with `filler`, says "filled",
// ends its read and exits. SQLite copies the log into the journal (the checkpoint) only after
// such a reader has ended, so that copy is made on the full filesystem, after the commit.
import { writeSync } from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import { fillFilesystem } from '../reliability/support.js';

const [path, target, filler] = process.argv.slice(2);
if (path === undefined || target === undefined || filler === undefined) {
  throw new Error('usage: upgrade-reader-process.ts <journal> <version> <filler>');
}
const reader = new BetterSqlite3(path, { fileMustExist: true });
reader.exec('BEGIN');
reader.prepare('SELECT count(*) FROM sqlite_schema').get();
writeSync(1, 'reading\n');

const version = (): number => {
  const db = new BetterSqlite3(path, { fileMustExist: true });
  try {
    return db.pragma('user_version', { simple: true }) as number;
  } finally {
    db.close();
  }
};
const deadline = Date.now() + 30_000;
const poll = (): void => {
  if (version() < Number(target)) {
    if (Date.now() > deadline) throw new Error(`the journal never reached version ${target}`);
    setTimeout(poll, 2);
    return;
  }
  fillFilesystem(filler);
  writeSync(1, 'filled\n');
  reader.exec('COMMIT');
  reader.close();
};
poll();
