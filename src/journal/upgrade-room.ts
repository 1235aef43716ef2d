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
import { committedPages } from './log-image.js';
import { LATEST_VERSION, MIGRATIONS } from './migrations.js';

/**
 * The room a schema upgrade of the journal needs, measured without SQLite: the start refuses
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
export function upgradeFactor(from: number): number {
  const sum = MIGRATIONS.filter((m) => m.version > from).reduce((t, m) => t + m.room, 0);
  return Math.round(sum * 10) / 10;
}

/**
 * Free space an upgrade from schema version `from` needs in SQLite's temporary folder per byte
 * of the journal: the most any of its migrations sorts there (each step's temporary files are
 * deleted at its end).
 */
export function sortFactor(from: number): number {
  return MIGRATIONS.filter((m) => m.version > from).reduce((t, m) => Math.max(t, m.sortRoom), 0);
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

/** `factor` × the journal's size, in words. */
export function timesTheJournal(factor: number, size: number): string {
  return `${factor === 2 ? 'twice' : `${factor} ×`} the journal's ${mb(size)}`;
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
export function upgradeRoom(path: string, from: number): UpgradeRoom | null {
  const free = freeBytes(path);
  if (free === null) return null;
  let size: number;
  try {
    // Its log too: committed pages not yet in the file are the journal's as much.
    size = statSync(path).size + logBytes(path);
  } catch {
    return null;
  }
  const sorts = sortRoom(path, from, size);
  const needed =
    Math.ceil(upgradeFactor(from) * size) +
    upgradeMargin(size) +
    (sorts?.shared === true ? sorts.needed : 0);
  return { size, needed, free, sorts };
}

/**
 * What the upgrade's sorts need in SQLite's temporary folder. Not counted, they failed the
 * upgrade SQLITE_FULL midway when that folder's filesystem (/var/tmp, often not the journal's,
 * or a small /tmp) had not the room, said as a full journal filesystem that had plenty.
 */
function sortRoom(path: string, from: number, size: number): SortRoom | null {
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
  return { folder, needed: Math.ceil(sortFactor(from) * size) + 1e6, free, shared };
}

/** Why the start refuses the upgrade for want of room, or null when the room is there. */
export function upgradeRefusal(path: string, from: number, room: UpgradeRoom): string | null {
  if (room.free < room.needed) return upgradeShortOfRoom(path, from, room);
  const { sorts } = room;
  if (sorts !== null && !sorts.shared && sorts.free < sorts.needed) {
    return `not enough free space to upgrade the journal ${path} from schema version ${from} to ${LATEST_VERSION} in SQLite's temporary folder ${sorts.folder} (SQLITE_TMPDIR, else TMPDIR, else /var/tmp): the upgrade sorts its commands there and needs about ${mb(sorts.needed)} free on that folder's filesystem (${sortFactor(from) === 1 ? 'as much as' : `${sortFactor(from)} ×`} the journal's ${mb(room.size)}, and 1.0 MB), and ${mb(sorts.free)} are free; nothing was written, the journal is left as it was (version ${from}); free ${mb(sorts.needed - sorts.free)} more there, or set SQLITE_TMPDIR to a folder with the room that sluiced may write (its state folder: the room is then counted with the journal's)`;
  }
  return null;
}

export function upgradeShortOfRoom(path: string, from: number, room: UpgradeRoom): string {
  const { size, needed, free, sorts } = room;
  const sorted =
    sorts?.shared === true
      ? `, ${mb(sorts.needed)} for its sorts in SQLite's temporary folder ${sorts.folder} on the same filesystem`
      : '';
  return `not enough free space to upgrade the journal ${path} from schema version ${from} to ${LATEST_VERSION}: the upgrade ${upgradeWork(from)} and needs about ${mb(needed)} free on its filesystem (${timesTheJournal(upgradeFactor(from), size)}${sorted}, and ${mb(upgradeMargin(size))} for the log), and ${mb(free)} are free; nothing was written, the journal is left as it was (version ${from}); free ${mb(needed - free)} more there`;
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
  const room = upgradeRoom(path, version);
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
