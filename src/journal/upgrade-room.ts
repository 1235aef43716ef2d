import { closeSync, openSync, readSync, statSync, statfsSync } from 'node:fs';
import { dirname } from 'node:path';
import { LATEST_VERSION, MIGRATIONS } from './migrations.js';

/**
 * The room a schema upgrade of the journal needs, measured without SQLite: the start refuses
 * an upgrade its filesystem has no room for before it writes anything (connection.ts), and
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
  readonly needed: number;
  /** Bytes available to the daemon's user on the journal's filesystem. */
  readonly free: number;
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
  return { size, needed: Math.ceil(upgradeFactor(from) * size) + upgradeMargin(size), free };
}

export function upgradeShortOfRoom(path: string, from: number, room: UpgradeRoom): string {
  const { size, needed, free } = room;
  return `not enough free space to upgrade the journal ${path} from schema version ${from} to ${LATEST_VERSION}: the upgrade ${upgradeWork(from)} and needs about ${mb(needed)} free on its filesystem (${timesTheJournal(upgradeFactor(from), size)}, and ${mb(upgradeMargin(size))} for the log), and ${mb(free)} are free; nothing was written, the journal is left as it was (version ${from}); free ${mb(needed - free)} more there`;
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
  const room = upgradeRoom(path, version);
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
