import { JournalDamagedError, JournalUnavailableError } from '../core/errors.js';
import { translate } from './rows.js';
import { freeBytes } from './upgrade-room.js';

/**
 * A journal that cannot be opened, said with its path and SQLite's own sentence: sluiced does not
 * start on it (exit 3 when it is damaged or not a database: JournalDamagedError, which no restart
 * mends; exit 1 otherwise), and "journal unavailable (open): SQLITE_NOTADB" alone named neither the
 * file nor what is wrong with it. A damaged file is left as it is (nothing is created over it).
 */
export function openFailed(error: unknown, path: string): never {
  const code = (error as { code?: unknown }).code;
  if (typeof code !== 'string' || !(error instanceof Error)) return translate(error, 'open');
  const damaged = code.startsWith('SQLITE_NOTADB') || code.startsWith('SQLITE_CORRUPT');
  const what = code.startsWith('SQLITE_NOTADB')
    ? `${path} is not an SQLite database: not a Sluice journal, or one damaged`
    : code.startsWith('SQLITE_CORRUPT')
      ? `${path} is damaged`
      : code === 'SQLITE_IOERR_SHMSIZE'
        ? noRoomForIndex(path)
        : `cannot open ${path}`;
  try {
    return translate(error, 'open');
  } catch (translated) {
    if (!(translated instanceof JournalUnavailableError)) throw translated;
    throw new (damaged ? JournalDamagedError : JournalUnavailableError)(
      `${translated.message}: ${what} (${error.message}); it is left as it is`,
      { cause: error },
    );
  }
}

/**
 * SQLITE_IOERR_SHMSIZE: the log's shared-memory index (`-shm`, 32 KB, which every connection to
 * a journal in WAL mode maps, a reader's too) could not be made. Its cause is nearly always a
 * filesystem with less than those 32 KB free, and "disk I/O error", all SQLite says, sent the
 * operator after a failing disk.
 */
function noRoomForIndex(path: string): string {
  const free = freeBytes(path);
  const index = `cannot open ${path}: its log's shared-memory index ${path}-shm (32 KB) cannot be made`;
  if (free === null || free >= 64 * 1024) return index;
  return `${index}, its filesystem being full (${(free / 1024).toFixed(0)} KB free); free space there, then start again`;
}
