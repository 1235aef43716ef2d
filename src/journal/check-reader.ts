import { existsSync, readFileSync, statSync } from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import type { OpenPage, OpenPageRef } from '../core/journal.js';
import { withLog } from './log-image.js';

/**
 * The journal as `sluiced --check` reads it: the records the start compares the configuration
 * with (renamed devices and identities: the meta table, the open commands by device), and
 * nothing else. `--check` writes nothing at all, and an SQLite connection may: a read-only one
 * to a journal in WAL mode makes the log and its shared-memory index (`-wal`, `-shm`) when they
 * are not there, and leaves them, files of the checking user's (root's, often) that the
 * daemon's user could then not open.
 *
 * So: with the log and its index both there (sluiced runs, or was killed), a read-only
 * connection, which reads through the log and creates nothing. With neither (sluiced stopped
 * cleanly: its last connection copied the log into the file and removed both), the file is
 * read into memory and opened there (its header marked for the rollback journal, in the copy:
 * SQLite opens no WAL database in memory), up to MAX_COPY_BYTES. With the log alone, the same,
 * with the log's committed pages copied into the copy as a checkpoint would (log-image.ts): a
 * daemon killed before SQLite's first checkpoint leaves the tables in its log alone, and the
 * file read without it held none ("no such table: meta").
 */

/** The largest journal --check reads into memory (a journal of a million commands is ~900 MB). */
export const MAX_COPY_BYTES = 256 * 1024 * 1024;

export interface CheckReader {
  readMeta(key: string): string | null;
  openDevices(): string[];
  openOfDevice(device: string, afterId: number, limit: number): OpenPage;
  /** The commands held under `scope` (SqliteJournal.scopeKeys). */
  scopeKeys(scope: string): { count: number; open: number; lastSettledAt: number | null };
  /** Never called by a check that writes nothing; throws. */
  writeMeta(key: string, value: string): void;
  close(): void;
}

export type CheckReading =
  | { readonly kind: 'none' }
  | { readonly kind: 'read'; readonly reader: CheckReader }
  | { readonly kind: 'unreadable'; readonly why: string };

/** A connection that reads the journal as --check may (above), or why there is none. */
export type CheckOpening =
  | { readonly kind: 'none' }
  | { readonly kind: 'open'; readonly db: BetterSqlite3.Database }
  | { readonly kind: 'unreadable'; readonly why: string };

export function openForCheck(path: string, maxCopyBytes = MAX_COPY_BYTES): CheckOpening {
  if (!existsSync(path)) return { kind: 'none' };
  const log = existsSync(`${path}-wal`);
  const index = existsSync(`${path}-shm`);
  try {
    if (log && index) {
      const db = new BetterSqlite3(path, { readonly: true, fileMustExist: true, timeout: 2000 });
      return { kind: 'open', db };
    }
    const bytes = statSync(path).size + (log ? statSync(`${path}-wal`).size : 0);
    if (bytes > maxCopyBytes) {
      return {
        kind: 'unreadable',
        why: `${Math.round(bytes / 1_048_576)} MB: larger than --check reads into memory while sluiced is stopped (${Math.round(maxCopyBytes / 1_048_576)} MB); run it while sluiced runs, when it reads the journal in place`,
      };
    }
    const file = readFileSync(path);
    const copy = log ? withLog(file, readFileSync(`${path}-wal`)) : file;
    // File format version numbers (bytes 18 and 19): 2 is WAL, 1 the rollback journal.
    if (copy.length >= 20 && copy[18] === 2 && copy[19] === 2) copy.fill(1, 18, 20);
    return { kind: 'open', db: new BetterSqlite3(copy, { readonly: true }) };
  } catch (error) {
    return { kind: 'unreadable', why: messageOf(error) };
  }
}

export function readJournalForCheck(path: string, maxCopyBytes = MAX_COPY_BYTES): CheckReading {
  const opened = openForCheck(path, maxCopyBytes);
  if (opened.kind !== 'open') return opened;
  const { db } = opened;
  try {
    const readMeta = db.prepare('SELECT value FROM meta WHERE key = ?').pluck();
    const nextOpenDevice = db
      .prepare(
        `SELECT device FROM commands WHERE state IN ('accepted', 'dispatched') AND device > ?
         ORDER BY device LIMIT 1`,
      )
      .pluck();
    const openPage = db.prepare(
      `SELECT id, scope, key, fingerprint, device, state, action FROM commands
       WHERE device = ? AND state IN ('accepted', 'dispatched') AND id > ? ORDER BY id LIMIT ?`,
    );
    const scopeKeys = db.prepare(
      `SELECT count(*) AS count, coalesce(sum(state IN ('accepted', 'dispatched')), 0) AS open,
         max(settled_at) AS lastSettledAt FROM commands WHERE scope = ?`,
    );
    const reader: CheckReader = {
      scopeKeys: (scope) =>
        scopeKeys.get(scope) as { count: number; open: number; lastSettledAt: number | null },
      readMeta: (key) => (readMeta.get(key) as string | undefined) ?? null,
      openDevices: () => {
        const devices: string[] = [];
        for (
          let d = nextOpenDevice.get('') as string | undefined;
          d !== undefined;
          d = nextOpenDevice.get(d) as string | undefined
        ) {
          devices.push(d);
        }
        return devices;
      },
      openOfDevice: (device, afterId, limit) => {
        const refs = openPage.all(device, afterId, limit) as OpenPageRef[];
        const last = refs.at(-1);
        return {
          refs,
          next: limit >= 0 && refs.length === limit && last !== undefined ? last.id : null,
        };
      },
      writeMeta: () => {
        throw new Error('sluiced --check writes nothing to the journal');
      },
      close: () => {
        db.close();
      },
    };
    return { kind: 'read', reader };
  } catch (error) {
    db.close();
    return { kind: 'unreadable', why: messageOf(error) };
  }
}

function messageOf(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  const message = error instanceof Error ? error.message : String(error);
  return typeof code === 'string' ? `${code}: ${message}` : message;
}
