import { closeSync, openSync, readSync, statSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import { LATEST_VERSION } from './migrations.js';

/**
 * The room a schema upgrade of the journal needs, measured without SQLite: the start refuses
 * an upgrade its filesystem has no room for before it writes anything (connection.ts), and
 * `sluiced --check` says what the next start will do with the journal (journalOutlook).
 */

/**
 * Free space an upgrade needs per byte of the journal: a migration copies the tables into the
 * log, and the checkpoint after it into the file, so at the peak the log and the file's growth
 * each hold the new tables, at most the journal's size each (measured on a tmpfs, the least
 * room the upgrade from version 1 took: 0.2 × the journal's size for settled commands with
 * long results, up to 1.4 × for short rows with none stored).
 */
export const UPGRADE_FACTOR = 2;

/**
 * Room beyond UPGRADE_FACTOR for the log's own bytes (a 24-byte header per page, its index in
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
  readonly needed: number;
  /** Bytes available to the daemon's user on the journal's filesystem. */
  readonly free: number;
}

/** Null when the file or its filesystem cannot be measured (the open says what is wrong). */
export function upgradeRoom(path: string): UpgradeRoom | null {
  const free = freeBytes(path);
  if (free === null) return null;
  let size: number;
  try {
    // Its log too: committed pages not yet in the file are the journal's as much.
    size = statSync(path).size + logBytes(path);
  } catch {
    return null;
  }
  return { size, needed: UPGRADE_FACTOR * size + upgradeMargin(size), free };
}

export function upgradeShortOfRoom(path: string, from: number, room: UpgradeRoom): string {
  const { size, needed, free } = room;
  return `not enough free space to upgrade the journal ${path} from schema version ${from} to ${LATEST_VERSION}: the upgrade copies its tables and needs about ${mb(needed)} free on its filesystem (twice the journal's ${mb(size)}, and ${mb(upgradeMargin(size))} for the log), and ${mb(free)} are free; nothing was written, the journal is left as it was (version ${from}); free ${mb(needed - free)} more there`;
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
 * the log is not left behind by an upgrade.
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
  const version = header.readUInt32BE(60);
  if (version === 0) return { kind: 'other' };
  if (version === LATEST_VERSION) return { kind: 'current', version };
  if (version > LATEST_VERSION) return { kind: 'newer', version };
  const room = upgradeRoom(path);
  const refusal =
    room !== null && room.free < room.needed ? upgradeShortOfRoom(path, version, room) : null;
  return { kind: 'upgrade', from: version, to: LATEST_VERSION, room, refusal };
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
