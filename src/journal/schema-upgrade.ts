import { statSync } from 'node:fs';
import { dirname } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import type { Database } from 'better-sqlite3';
import { JournalUnavailableError } from '../core/errors.js';
import { LATEST_VERSION, MIGRATIONS, createLatest } from './migrations.js';
import { openFailed } from './open-errors.js';
import {
  freeBytes,
  mb,
  sortFolder,
  timesTheJournal,
  upgradeFactor,
  countedUpgradeRoom,
  upgradeRefusal,
  upgradeWork,
} from './upgrade-room.js';

/**
 * The journal's schema upgrade: the migrations of an older journal to this Sluice's schema
 * (migrations.ts), in the start's own process (openConnection, connection.ts) or in the daemon's upgrade
 * process (upgradeJournal, upgrade.ts), with the room it needs checked first (upgrade-room.ts)
 * and what a failure left said truly.
 */

/** What upgradeJournal did: the schema version it found, and the one it left. */
export interface Upgrade {
  readonly from: number;
  readonly to: number;
}

/**
 * The daemon's upgrade of an older journal to this Sluice's schema, with the writer lock held
 * (src/daemon/daemon.ts runs it in a child process, upgrade.ts): the migrations and the
 * checkpoint after them, as openConnection runs them, with the same refusals and messages. It
 * is what makes a start long (a copy of every command: 3.4 s for 100,000 on a developer's
 * machine, more on a gateway's eMMC and at a million), and on the event loop it held the
 * watchdog's pings and the start's extensions for all that time: longer than WatchdogSec=,
 * systemd killed the daemon mid-copy, the upgrade was rolled back, and every restart did the
 * same. Anything but an older Sluice journal (none, a new one, one of this schema, one not
 * ours, one newer) is left untouched for the open to judge and say.
 */
export function upgradeJournal(path: string, busyTimeoutMs = 2000): Upgrade | null {
  const version = schemaVersion(path, busyTimeoutMs);
  if (version === null || version <= 0 || version >= LATEST_VERSION) return null;
  let db: Database;
  try {
    db = new BetterSqlite3(path, { fileMustExist: true, timeout: busyTimeoutMs });
  } catch (error) {
    openFailed(error, path);
  }
  try {
    // As openConnection: refused before anything is written, then the journal's own modes.
    refuseUpgradeWithoutRoom(path, version, busyTimeoutMs);
    db.pragma('journal_mode = WAL');
    db.pragma('synchronous = FULL');
    migrate(db, version, path);
    return { from: version, to: LATEST_VERSION };
  } catch (error) {
    if (error instanceof JournalUnavailableError) throw error;
    return openFailed(error, path);
  } finally {
    if (db.open) db.close();
  }
}

export function migrate(db: Database, from: number, path: string): void {
  if (from === 0) {
    db.transaction(() => {
      createLatest(db);
      db.pragma(`user_version = ${LATEST_VERSION}`);
    }).immediate();
    return;
  }
  // Before the upgrade: a failed one leaves its log, as large as it got, until the close.
  const free = freeBytes(path);
  let reached = from;
  try {
    for (const migration of MIGRATIONS) {
      if (migration.version <= from) continue;
      db.transaction(() => {
        migration.up(db);
        db.pragma(`user_version = ${migration.version}`);
      }).immediate();
      reached = migration.version;
    }
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'SQLITE_FULL') throw error;
    throw migrationFull(path, from, reached, free, error);
  }
  if (reached === from) return;
  try {
    // A migration rewrites tables: move its pages into the database file and empty the WAL, so
    // that the copy does not hold twice the space on a small gateway filesystem.
    db.pragma('wal_checkpoint(TRUNCATE)');
  } catch (error) {
    if ((error as { code?: unknown }).code !== 'SQLITE_FULL') throw error;
    throw checkpointFull(path, from, error);
  }
}

/**
 * An upgrade is refused, before it writes anything, when the journal's filesystem has not the
 * room it needs (upgradeFactor). Attempted, it filled the filesystem to the last block, failed
 * SQLITE_FULL and was rolled back — and under systemd (Restart=on-failure) every start 2 s
 * later did the same, for as long as the space was not freed: the flash written over and over,
 * and every other writer on that filesystem (the logs, other services) met ENOSPC each time,
 * while nothing had changed. Refused, the start fails (exit 1) having written nothing, each
 * restart measures again, and the first one that finds the room upgrades the journal. When
 * the free space cannot be measured, the upgrade is tried (migrationFull says a failure).
 */
export function refuseUpgradeWithoutRoom(path: string, from: number, busyTimeoutMs = 2000): void {
  // Its indexes of some commands (from version 2) counted, when the worst case would refuse.
  const room = countedUpgradeRoom(path, from, () => {
    const db = new BetterSqlite3(path, { fileMustExist: true, timeout: busyTimeoutMs });
    return { db, close: () => db.close() };
  });
  const refusal = room === null ? null : upgradeRefusal(path, from, room);
  if (refusal === null) return;
  throw new JournalUnavailableError(
    `journal unavailable (open): ${refusal}: sluiced measures again at each start (the unit restarts it every 2 s) and upgrades the journal once the room is there`,
  );
}

/**
 * The journal's schema version, read as the start reads it; null when there is no journal at
 * `path` or it is no SQLite file (the start says what is wrong with it). Opened writable but
 * writing nothing: the last connection to close removes the log and its index (-shm), which a
 * read-only one leaves behind.
 */
export function schemaVersion(path: string, busyTimeoutMs: number): number | null {
  try {
    const db = new BetterSqlite3(path, { fileMustExist: true, timeout: busyTimeoutMs });
    try {
      return db.pragma('user_version', { simple: true }) as number;
    } finally {
      db.close();
    }
  } catch {
    return null;
  }
}

/**
 * refuseUpgradeWithoutRoom for the daemon's start, before its check of the whole file
 * (integrity.ts): a start refused for want of room is made again at each restart, every 2 s
 * under the unit, and each read the whole journal through first. Anything else (no journal, a
 * damaged one, one of this schema) is left to the check and the open.
 */
export function checkUpgradeRoom(path: string, busyTimeoutMs = 2000): void {
  const version = schemaVersion(path, busyTimeoutMs);
  if (version !== null && version > 0 && version < LATEST_VERSION) {
    refuseUpgradeWithoutRoom(path, version, busyTimeoutMs);
  }
}

/**
 * A migration the filesystem had no room for, though refuseUpgradeWithoutRoom found it there
 * (another writer took it meanwhile, or the estimate fell short). Its transaction was rolled
 * back: the journal is at the version it had before it (its old one, unless an earlier step
 * was committed), and the next start measures again. "SQLITE_FULL: cannot open" said neither
 * that the upgrade was what needed the room, nor how much.
 */
function migrationFull(
  path: string,
  from: number,
  reached: number,
  free: number | null,
  cause: unknown,
): JournalUnavailableError {
  let room = '';
  try {
    const size = statSync(path).size;
    const had = free === null ? '' : `; ${mb(free)} were free`;
    room = ` and needs up to about ${mb(upgradeFactor(from) * size)} free there (${timesTheJournal(upgradeFactor(from), size)}${had})`;
  } catch {
    // Size unknown: the sentence goes without it.
  }
  const undone =
    reached === from
      ? `the upgrade was undone and the journal is left as it was (version ${from})`
      : `its last step was undone and the journal is at version ${reached}`;
  return new JournalUnavailableError(
    `journal unavailable (open): SQLITE_FULL: the filesystem of ${path}${sortsElsewhere(path)} is full: upgrading the journal from schema version ${from} to ${LATEST_VERSION} ${upgradeWork(from)}${room}; ${undone}; free space there, then start sluiced again (it tries again at each start)`,
    { cause },
  );
}

/**
 * ", or that of SQLite's temporary folder …" when the upgrade's sorts go to another filesystem
 * than the journal's (upgrade-room.ts sortFolder): SQLite says SQLITE_FULL for either, and the
 * one that filled may be that one.
 */
function sortsElsewhere(path: string): string {
  const folder = sortFolder();
  try {
    if (folder === null || statSync(folder).dev === statSync(dirname(path)).dev) return '';
  } catch {
    return '';
  }
  return `, or that of SQLite's temporary folder ${folder} where the upgrade sorts,`;
}

/**
 * The upgrade committed, and the copy of its log into the journal file (the checkpoint) found
 * no room: another writer took it after the COMMIT, or while a reader of the old journal held
 * the checkpoint back. Nothing was undone: the journal is at the new version, and its log
 * (`-wal`) holds the upgraded tables, some of their pages perhaps copied over the old ones in
 * the file already, so the file without its log is no journal. Said as undone, the upgrade was
 * taken for not made, and the log for the failed attempt's leftover, to be removed.
 */
function checkpointFull(path: string, from: number, cause: unknown): JournalUnavailableError {
  let room = '';
  try {
    // The copy writes each of the log's pages once: the file grows by the log's size at most.
    room = ` (it needs up to the log's ${mb(statSync(`${path}-wal`).size)} more there)`;
  } catch {
    // Size unknown: the sentence goes without it.
  }
  return new JournalUnavailableError(
    `journal unavailable (open): SQLITE_FULL: the filesystem of ${path} is full: the journal was upgraded from schema version ${from} to ${LATEST_VERSION}: the upgrade is committed, in its log ${path}-wal, but copying it into ${path} found no room${room}; the journal is at version ${LATEST_VERSION}, every command in it, and is whole only with that log: keep ${path}-wal beside it (never remove or move it away); free space there, then start sluiced again (it opens the journal at version ${LATEST_VERSION} without upgrading it again, and copies the log into it once there is room)`,
    { cause },
  );
}
