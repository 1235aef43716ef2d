import {
  accessSync,
  closeSync,
  constants,
  openSync,
  readFileSync,
  readSync,
  statSync,
  statfsSync,
} from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Database } from 'better-sqlite3';
import { openForCheck } from './check-reader.js';
import { committedPages } from './log-image.js';
import { LATEST_VERSION, MIGRATIONS, type Migration } from './migrations.js';

/**
 * The room a schema upgrade of the journal needs, measured without SQLite (but for a count of
 * the commands a step's room is of, countedUpgradeRoom): the start refuses
 * an upgrade its filesystem has no room for before it writes anything (schema-upgrade.ts), and
 * `sluiced --check` says what the next start will do with the journal (journalOutlook).
 */

/**
 * Free space an upgrade from schema version `from` needs per byte of the journal: the room of
 * each migration it runs (migrations.ts), all of them in the log until the checkpoint after the
 * last one copies it into the file. A copy of the tables (from version 1) takes about twice the
 * journal; the indexes of version 3 alone (from version 2), a fraction of it: an upgrade that
 * only adds an index does not ask for room it will never use.
 */
export function upgradeFactor(from: number, share: CommandShare | null = null): number {
  const sum = MIGRATIONS.filter((m) => m.version > from).reduce(
    (t, m) => t + m.room * scale(m, share),
    0,
  );
  return roundUp(sum);
}

/**
 * Free space an upgrade from schema version `from` needs in SQLite's temporary folder per byte
 * of the journal: the most any of its migrations sorts there (each step's temporary files are
 * deleted at its end).
 */
export function sortFactor(from: number, share: CommandShare | null = null): number {
  return roundUp(
    MIGRATIONS.filter((m) => m.version > from).reduce(
      (t, m) => Math.max(t, m.sortRoom * scale(m, share)),
      0,
    ),
  );
}

/**
 * The journal's commands that the upgrade's steps with a room of some of them (Migration.of)
 * are of: `some` of `all`, counted before the upgrade (countShare).
 */
export interface CommandShare {
  readonly some: number;
  readonly all: number;
  /** The commands counted, in words: "failed or rejected". */
  readonly what: string;
}

/** The part of the measured room a step needs with `share` counted (all of it when not). */
function scale(step: Migration, share: CommandShare | null): number {
  if (step.of === undefined || share === null) return 1;
  return share.all === 0 ? 0 : share.some / share.all;
}

/** Rounded up to two decimals: said, and multiplied by the journal's size, on the safe side. */
function roundUp(factor: number): number {
  return Math.ceil(Math.round(factor * 1e6) / 1e4) / 100;
}

/** The one condition of the steps from `from` with a room of some commands; null when none. */
function scaledRows(from: number): string | null {
  const of = [...new Set(MIGRATIONS.flatMap((m) => (m.version > from && m.of ? [m.of] : [])))];
  return of.length === 1 ? (of[0] ?? null) : null;
}

/**
 * Counts the commands the upgrade's indexes are of (Migration.of) on `db`, the journal before
 * its upgrade: one read of its commands table. Null when no step is of some commands, or the
 * count fails (the whole journal is then counted, on the safe side).
 */
export function countShare(db: Database, from: number): CommandShare | null {
  const rows = scaledRows(from);
  if (rows === null) return null;
  try {
    const counted = db
      .prepare(`SELECT count(*) AS "all", coalesce(sum(${rows}), 0) AS some FROM commands`)
      .get() as { all: number; some: number };
    return { ...counted, what: 'failed or rejected' };
  } catch {
    return null;
  }
}

/**
 * What an upgrade from `from` needs (upgradeRoom), its steps of some commands (Migration.of)
 * measured for the commands they are of when the whole journal's worst case would refuse it
 * and the count may change that: with none of those commands the room would be there. The count
 * reads the commands table through (`open` gives a connection that reads the journal, or null),
 * which neither a start with the room nor one refused whatever the count (restarted every 2 s
 * under the unit) makes.
 */
export function countedUpgradeRoom(
  path: string,
  from: number,
  open: () => { db: Database; close(): void } | null,
): UpgradeRoom | null {
  const room = upgradeRoom(path, from);
  if (room === null || upgradeRefusal(path, from, room) === null) return room;
  if (scaledRows(from) === null) return room;
  const least = upgradeRoom(path, from, { some: 0, all: 1, what: '' });
  if (least === null || upgradeRefusal(path, from, least) !== null) return room;
  let reading: { db: Database; close(): void } | null = null;
  try {
    reading = open();
  } catch {
    // Unreadable now: the whole journal is counted.
  }
  if (reading === null) return room;
  let share: CommandShare | null;
  try {
    share = countShare(reading.db, from);
  } finally {
    reading.close();
  }
  return share === null ? room : upgradeRoom(path, from, share);
}

/**
 * The folder SQLite writes its temporary files to (the sorts of an index build or of a copy
 * larger than its cache, a statement journal): the first of SQLITE_TMPDIR, TMPDIR, /var/tmp,
 * /usr/tmp, /tmp and the working folder that is a folder this process may write and search, as
 * SQLite's unix VFS picks it (unixTempFileDir; better-sqlite3 sets no sqlite3_temp_directory and
 * this build keeps temp_store at files, TEMP_STORE=1). Null when none is.
 */
export function sortFolder(env: NodeJS.ProcessEnv = process.env): string | null {
  for (const folder of [env.SQLITE_TMPDIR, env.TMPDIR, '/var/tmp', '/usr/tmp', '/tmp', '.']) {
    if (folder === undefined || folder === '') continue;
    try {
      if (!statSync(folder).isDirectory()) continue;
      accessSync(folder, constants.W_OK | constants.X_OK);
      return resolve(folder);
    } catch {
      // Not there, or not ours to write: SQLite goes on to the next.
    }
  }
  return null;
}

/** What the upgrade from `from` does to the journal, as its messages say it. */
export function upgradeWork(from: number): string {
  return from < 2
    ? 'copies its tables'
    : 'builds indexes from one read of its commands (it copies no table)';
}

/**
 * `factor` × the journal's size, in words, with the commands counted when the factor is of
 * some of them (`… 0.02 × the journal's 47.7 MB (its 12 failed or rejected commands of 50,000)`).
 */
export function timesTheJournal(
  factor: number,
  size: number,
  share: CommandShare | null = null,
): string {
  const counted =
    share === null
      ? ''
      : ` (its ${share.some.toLocaleString('en-US')} ${share.what} commands of ${share.all.toLocaleString('en-US')})`;
  return `${factor === 2 ? 'twice' : `${factor} ×`} the journal's ${mb(size)}${counted}`;
}

/**
 * Room beyond upgradeFactor for the log's own bytes (a 24-byte header per page, its index in
 * the -shm file) and the pages SQLite writes besides: 2 % of the journal, 1 MB at least.
 */
function upgradeMargin(size: number): number {
  return Math.max(1e6, Math.ceil(size / 50));
}

export const mb = (bytes: number): string => `${(bytes / 1e6).toFixed(1)} MB`;

/** What an upgrade of the journal at `path` needs, and what its filesystem has. */
export interface UpgradeRoom {
  /** The journal's bytes, its log's included. */
  readonly size: number;
  /** On the journal's filesystem: the sorts' too when their folder is on it (`sorts.shared`). */
  readonly needed: number;
  /** Bytes available to the daemon's user on the journal's filesystem. */
  readonly free: number;
  /** SQLite's temporary folder and its room; null when it cannot be found or measured. */
  readonly sorts: SortRoom | null;
  /** The commands counted for the steps of some of them; null: the whole journal counted. */
  readonly share: CommandShare | null;
}

/** The room the upgrade's sorts need in SQLite's temporary folder (sortFolder). */
export interface SortRoom {
  readonly folder: string;
  readonly needed: number;
  /** Bytes available to the daemon's user on the folder's filesystem. */
  readonly free: number;
  /** Whether that filesystem is the journal's (its `needed` is then in the journal's). */
  readonly shared: boolean;
}

/**
 * What an upgrade from schema version `from` needs. Null when the file or its filesystem cannot
 * be measured (the open says what is wrong).
 */
export function upgradeRoom(
  path: string,
  from: number,
  share: CommandShare | null = null,
): UpgradeRoom | null {
  const free = freeBytes(path);
  if (free === null) return null;
  let size: number;
  try {
    // Its log too: committed pages not yet in the file are the journal's as much.
    size = statSync(path).size + logBytes(path);
  } catch {
    return null;
  }
  const sorts = sortRoom(path, from, size, share);
  const needed =
    Math.ceil(upgradeFactor(from, share) * size) +
    upgradeMargin(size) +
    (sorts?.shared === true ? sorts.needed : 0);
  return { size, needed, free, sorts, share };
}

/**
 * What the upgrade's sorts need in SQLite's temporary folder. Not counted, they failed the
 * upgrade SQLITE_FULL midway when that folder's filesystem (/var/tmp, often not the journal's,
 * or a small /tmp) had not the room, said as a full journal filesystem that had plenty.
 */
function sortRoom(
  path: string,
  from: number,
  size: number,
  share: CommandShare | null,
): SortRoom | null {
  const folder = sortFolder();
  if (folder === null) return null;
  const free = freeBytes(`${folder}/.`);
  if (free === null) return null;
  let shared: boolean;
  try {
    shared = statSync(folder).dev === statSync(dirname(path)).dev;
  } catch {
    return null;
  }
  // 1 MB beyond the factor: the statement journal and a small sort's files.
  return { folder, needed: Math.ceil(sortFactor(from, share) * size) + 1e6, free, shared };
}

/** Why the start refuses the upgrade for want of room, or null when the room is there. */
export function upgradeRefusal(path: string, from: number, room: UpgradeRoom): string | null {
  if (room.free < room.needed) return upgradeShortOfRoom(path, from, room);
  const { sorts } = room;
  if (sorts !== null && !sorts.shared && sorts.free < sorts.needed) {
    return `not enough free space to upgrade the journal ${path} from schema version ${from} to ${LATEST_VERSION} in SQLite's temporary folder ${sorts.folder} (SQLITE_TMPDIR, else TMPDIR, else /var/tmp): the upgrade sorts its commands there and needs about ${mb(sorts.needed)} free on that folder's filesystem (${sortWords(from, room)}, and 1.0 MB), and ${mb(sorts.free)} are free; nothing was written, the journal is left as it was (version ${from}); free ${mb(sorts.needed - sorts.free)} more there, or set SQLITE_TMPDIR to a folder with the room that sluiced may write (its state folder: the room is then counted with the journal's)`;
  }
  return null;
}

/** The sorts' room in words: `0.3 × the journal's 3.1 MB`, `as much as the journal's …`. */
function sortWords(from: number, room: UpgradeRoom): string {
  const factor = sortFactor(from, room.share);
  return factor === 1 && room.share === null
    ? `as much as the journal's ${mb(room.size)}`
    : timesTheJournal(factor, room.size, scaledRows(from) === null ? null : room.share);
}

export function upgradeShortOfRoom(path: string, from: number, room: UpgradeRoom): string {
  const { size, needed, free, sorts, share } = room;
  const sorted =
    sorts?.shared === true
      ? `, ${mb(sorts.needed)} for its sorts in SQLite's temporary folder ${sorts.folder} on the same filesystem`
      : '';
  return `not enough free space to upgrade the journal ${path} from schema version ${from} to ${LATEST_VERSION}: the upgrade ${upgradeWork(from)} and needs about ${mb(needed)} free on its filesystem (${timesTheJournal(upgradeFactor(from, share), size, share)}${sorted}, and ${mb(upgradeMargin(size))} for the log), and ${mb(free)} are free; nothing was written, the journal is left as it was (version ${from}); free ${mb(needed - free)} more there`;
}

/** What the next start will do with the journal at `path`, for `sluiced --check`. */
export type JournalOutlook =
  | { readonly kind: 'none' }
  /** A file the start's own checks will judge (not an SQLite database, an empty one). */
  | { readonly kind: 'other' }
  | { readonly kind: 'current'; readonly version: number }
  | { readonly kind: 'newer'; readonly version: number }
  | {
      readonly kind: 'upgrade';
      readonly from: number;
      readonly to: number;
      readonly room: UpgradeRoom | null;
      /** Why the start will refuse it, when the room is not there. */
      readonly refusal: string | null;
    };

/**
 * Read from the file's header (the schema version is bytes 60–63 of an SQLite database's first
 * page), without SQLite: `--check` creates and writes nothing, and a connection would (the -shm
 * index of a journal in WAL mode; the checkpoint its last connection makes on closing). The
 * header is the file's: a migration checkpoints its log at once, so a version committed only to
 * the log is not left behind by an upgrade. But a daemon killed before SQLite's first
 * checkpoint leaves a file in WAL mode with no version in its header, and its version in its
 * log: then the first page as the log's last commit has it (versionInLog).
 */
export function journalOutlook(path: string): JournalOutlook {
  let header: Buffer;
  try {
    const fd = openSync(path, 'r');
    try {
      header = Buffer.alloc(100);
      if (readSync(fd, header, 0, 100, 0) < 100) return { kind: 'other' };
    } finally {
      closeSync(fd);
    }
  } catch (error) {
    return (error as { code?: unknown }).code === 'ENOENT' ? { kind: 'none' } : { kind: 'other' };
  }
  if (header.toString('latin1', 0, 16) !== 'SQLite format 3\0') return { kind: 'other' };
  // File format version numbers (bytes 18 and 19): 2 is WAL.
  const version = header.readUInt32BE(60) || (header[18] === 2 ? versionInLog(path) : 0);
  if (version === 0) return { kind: 'other' };
  if (version === LATEST_VERSION) return { kind: 'current', version };
  if (version > LATEST_VERSION) return { kind: 'newer', version };
  // Counted, when it is, through a connection that writes nothing (check-reader.ts).
  const room = countedUpgradeRoom(path, version, () => {
    const opened = openForCheck(path);
    return opened.kind === 'open' ? { db: opened.db, close: () => opened.db.close() } : null;
  });
  const refusal = room === null ? null : upgradeRefusal(path, version, room);
  return { kind: 'upgrade', from: version, to: LATEST_VERSION, room, refusal };
}

/** The largest log versionInLog reads (a log left before the first checkpoint is a few MB). */
const MAX_LOG_BYTES = 256 * 1024 * 1024;

/**
 * The schema version in the first page as the committed transactions of the journal's log
 * (`-wal`) leave it (log-image.ts); 0 when the log is not there, too large, or does not hold
 * that page.
 */
function versionInLog(path: string): number {
  try {
    if (statSync(`${path}-wal`).size > MAX_LOG_BYTES) return 0;
    const first = committedPages(readFileSync(`${path}-wal`))?.page.get(1);
    return first === undefined || first.length < 64 ? 0 : first.readUInt32BE(60);
  } catch {
    return 0;
  }
}

/** Bytes of the journal's log (`-wal`), 0 when it has none. */
export function logBytes(path: string): number {
  try {
    return statSync(`${path}-wal`).size;
  } catch {
    return 0;
  }
}

/** Bytes available to the daemon's user on the filesystem of `path`; null when unknown. */
export function freeBytes(path: string): number | null {
  try {
    const fs = statfsSync(dirname(path));
    return fs.bavail * fs.bsize;
  } catch {
    return null;
  }
}
