// Another program reading the journal while sluiced upgrades it (a backup, the sqlite3 shell),
// and another writer taking the filesystem's last blocks meanwhile. Holds a read transaction
// begun before the upgrade, and says "reading" on stdout; once the upgrade has committed the
// version `target` (a second connection reads it), fills the filesystem with `filler`, says
// "filled", ends its read and exits. SQLite copies the log into the journal (the checkpoint)
// only after such a reader has ended, and no later write can reuse the log's space: each page
// written after the fill meets the full filesystem.
//
// With `trace` (the output of strace, under which sluiced runs, stopping its upgrade process with
// SIGSTOP at the fsync that commits a step: upgrade-process.ts), the fill comes while the
// upgrade's process is stopped there, the step's pages in the log and synced, its commit not yet
// seen by readers. The reader says the version it reads then ("version N"), fills the
// filesystem, says "filled" and lets the process go on (SIGCONT): the step's commit needs no more
// room, and the next step's pages meet the full filesystem. Filled once the step's commit was
// seen instead, the fill raced the next step, and came after its commit at times.
import { existsSync, readFileSync, writeSync } from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import { fillFilesystem } from '../reliability/support.js';

const [path, target, filler, trace] = process.argv.slice(2);
if (path === undefined || target === undefined || filler === undefined) {
  throw new Error('usage: upgrade-reader-process.ts <journal> <version> <filler> [trace]');
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

/**
 * The process strace gave SIGSTOP ("<pid> --- SIGSTOP {…} ---"), once it is stopped ("<pid> ---
 * stopped by SIGSTOP ---").
 */
function stoppedProcess(): number | undefined {
  if (trace === undefined || !existsSync(trace)) return undefined;
  const text = readFileSync(trace, 'utf8');
  const pid = /^(\d+)\s+--- SIGSTOP \{/m.exec(text)?.[1];
  return pid !== undefined && new RegExp(`^${pid}\\s+--- stopped by SIGSTOP ---`, 'm').test(text)
    ? Number(pid)
    : undefined;
}

const deadline = Date.now() + 30_000;
let upgrade: number | undefined;
const poll = (): void => {
  if (Date.now() > deadline) throw new Error(`the journal's upgrade did not come to its point`);
  if (trace !== undefined) {
    upgrade = stoppedProcess();
    if (upgrade === undefined) {
      setTimeout(poll, 2);
      return;
    }
    writeSync(1, `version ${version()}\n`);
  } else if (version() < Number(target)) {
    setTimeout(poll, 2);
    return;
  }
  fillFilesystem(filler);
  writeSync(1, 'filled\n');
  if (upgrade !== undefined) process.kill(upgrade, 'SIGCONT');
  reader.exec('COMMIT');
  reader.close();
};
poll();
