import { readFileSync } from 'node:fs';
import { JournalDamagedError, StartStoppedError } from '../core/errors.js';
import { SQLITE_MODULE, answerOf, spawnSqliteChild } from './sqlite-child.js';

/** What the check process found: SQLite's quick_check lines, or the error that stopped it. */
type Outcome =
  | { readonly kind: 'absent' }
  | { readonly kind: 'not-ours' }
  | { readonly kind: 'checked'; readonly lines: string[] }
  | { readonly kind: 'error'; readonly code: string | null; readonly message: string };

/** Lines of SQLite's report kept for the message (it names a page, a table, a row each). */
const REPORTED = 3;

/**
 * The check process's program, plain JavaScript; its answer is one JSON line on stdout. In a
 * child process (sqlite-child.ts), killed at once by a stop asked for during the check
 * (checkJournal's `signal`: systemctl stop or restart), which a worker thread made wait for all of
 * it, up to TimeoutStopSec= and systemd's SIGKILL; sluicectl's check (src/cli/journal-check.ts)
 * runs the same way. The connection is read-write, as the journal's own, and writes nothing
 * (quick_check only reads; the writer lock is held, so no other daemon writes meanwhile), so a
 * check killed midway leaves the file as it was. A file whose header is not that of a Sluice
 * journal (not SQLite, or no schema version: another program's database, whose hot rollback
 * journal a connection would play back into it) is not opened: the journal's open refuses it and
 * leaves it as it is. But the journal of a daemon killed before SQLite's first checkpoint has no
 * schema version in its header either: the file holds the switch to WAL alone, and its log
 * (`-wal`) the version and every command. A file in WAL mode with a log is therefore checked
 * through a read-only connection, which reads the log (SQLite rebuilds its index, `-shm`, as for
 * any reader) and writes nothing into the file or the log; it is a journal when the version read
 * through the log is one. quick_check comes first: an I/O error reading the log stops it with
 * SQLite's I/O code, where a read of the version alone says SQLITE_CORRUPT.
 */
const PROGRAM = `
const { closeSync, existsSync, openSync, readSync, statSync } = require('node:fs');
const [path, sqlite, busyTimeoutMs, limit] = process.argv.slice(1);
function answer(outcome) {
  process.stdout.write(JSON.stringify(outcome) + '\\n');
}
// 'journal': its header holds a schema version; 'log': no version there, but in WAL mode with
// a log beside it, which may hold one; null: not a Sluice journal.
function kindOf(path) {
  const header = Buffer.alloc(100);
  let fd = null;
  try {
    fd = openSync(path, 'r');
    if (readSync(fd, header, 0, 100, 0) < 100) return null;
  } catch {
    return null; // A folder, a file this user may not read: the open says so.
  } finally {
    if (fd !== null) closeSync(fd);
  }
  if (header.toString('latin1', 0, 16) !== 'SQLite format 3\\0') return null;
  if (header.readUInt32BE(60) !== 0) return 'journal';
  // File format version numbers (bytes 18 and 19): 2 is WAL.
  let log = 0;
  try {
    log = statSync(path + '-wal').size;
  } catch {
    // No log.
  }
  return header[18] === 2 && log > 0 ? 'log' : null;
}
const kind = existsSync(path) ? kindOf(path) : undefined;
if (kind === undefined) {
  answer({ kind: 'absent' });
} else if (kind === null) {
  answer({ kind: 'not-ours' });
} else {
  const Database = require(sqlite);
  const readonly = kind === 'log';
  let db = null;
  try {
    db = new Database(path, { readonly, fileMustExist: true, timeout: Number(busyTimeoutMs) });
    const rows = db.pragma('quick_check(' + Number(limit) + ')');
    if (readonly && db.pragma('user_version', { simple: true }) === 0) {
      answer({ kind: 'not-ours' }); // No version in the log either.
    } else {
      answer({ kind: 'checked', lines: rows.map((r) => String(r.quick_check)) });
    }
  } catch (error) {
    answer({
      kind: 'error',
      code: typeof error.code === 'string' ? error.code : null,
      message: String(error.message),
    });
  } finally {
    if (db !== null) db.close();
  }
}
`;

/**
 * Refuses a damaged journal before the daemon opens it. SQLite opens a file whose header is
 * intact whatever its other pages hold, and meets a damaged page only when a statement reads
 * it: the daemon started, and a claim of a key whose index page was damaged failed, or (worse)
 * its open commands on such a page were never recovered (I5), while the rest went on as if the
 * journal were whole. quick_check reads every page of the file and checks each B-tree's
 * structure (not that the indexes match their tables: integrity_check, about twice the time).
 * Measured (2026-12-04, 2 busy cores, the file in the page cache): 0.22 s for a journal of
 * 100,000 settled commands (86 MB), 12–15 s for 1,000,000 (870 MB); it reads the whole file, so
 * from a cold disk it takes at least what the disk needs to read it (again on 2026-12-04: 0.5–1 s
 * and 2.6–5.6 s in the page cache, 2–3 s and 23–29 s with the file dropped from it — a start after
 * a boot). Off the event loop: the daemon tells systemd that the start goes on while the check
 * reads (EXTEND_TIMEOUT_USEC, checkJournal's bytesRead), and logs how long it took.
 *
 * Resolves when the journal is absent (created new) or whole, and when it is not one or SQLite
 * could not open it (not a database, cannot be opened): the open that follows says those in its
 * own words. Refuses (JournalDamagedError, which no restart mends) a journal that is damaged,
 * and one the disk fails to read (an I/O error reading it or its log), saying which.
 */
export async function refuseDamagedJournal(path: string, busyTimeoutMs = 2000): Promise<void> {
  return checkJournal(path, busyTimeoutMs).done;
}

/** The check of refuseDamagedJournal while it runs. */
export interface JournalCheck {
  /**
   * Settles as refuseDamagedJournal's promise does; rejects with StartStoppedError when
   * `signal` stopped the check before its answer.
   */
  readonly done: Promise<void>;
  /**
   * The bytes the check's process has read so far (its `rchar` in /proc: reads from the page
   * cache count too), or null when this system does not say (no /proc, no task I/O accounting)
   * or the process has not started or has ended. Growth is the proof that the check is getting
   * on (the start's EXTEND_TIMEOUT_USEC, src/daemon/start-progress.ts): a process held in a read
   * the disk never answers reads nothing more.
   */
  readonly bytesRead: () => number | null;
}

/**
 * refuseDamagedJournal, with a look at how far its process has read. `signal` (a stop asked for
 * while the daemon starts) kills the check where it is: done rejects with StartStoppedError once
 * the process is gone, and the file is as it was (the check writes nothing).
 */
export function checkJournal(
  path: string,
  busyTimeoutMs = 2000,
  signal?: AbortSignal,
): JournalCheck {
  let io: string | null = null;
  const aborted = (): boolean => signal?.aborted === true;
  const outcome = (async (): Promise<Outcome> => {
    if (aborted()) throw stopped();
    const child = spawnSqliteChild(
      PROGRAM,
      [path, SQLITE_MODULE, String(busyTimeoutMs), String(REPORTED)],
      signal,
    );
    if (child.pid !== undefined) io = `/proc/${child.pid}/io`;
    let end;
    try {
      end = await child.ended;
    } finally {
      io = null;
    }
    if (aborted()) throw stopped();
    const answer = answerOf(end) as Outcome | null;
    if (answer === null) {
      throw new Error(
        `the journal's check process ended (${end.signal ?? `exit ${end.code}`}) without an answer`,
      );
    }
    return answer;
  })();
  const bytesRead = (): number | null => {
    if (io === null) return null;
    try {
      const rchar = /^rchar:\s*(\d+)$/m.exec(readFileSync(io, 'utf8'))?.[1];
      return rchar === undefined ? null : Number(rchar);
    } catch {
      return null;
    }
  };
  return {
    done: outcome.then((o) => {
      judge(path, o);
    }),
    bytesRead,
  };
}

function stopped(): StartStoppedError {
  return new StartStoppedError(
    'the journal check was stopped before its end (a stop asked for during the start); the next start checks the journal again',
  );
}

/**
 * SQLite's codes for a read of the file that failed (its unix VFS answers EIO, a sector the disk
 * cannot read, with SQLITE_IOERR_CORRUPTFS, other failed reads with SQLITE_IOERR_READ).
 */
const READ_FAILED = new Set([
  'SQLITE_IOERR_READ',
  'SQLITE_IOERR_SHORT_READ',
  'SQLITE_IOERR_CORRUPTFS',
]);

/** quick_check's line for a page it could not read, with SQLite's (extended) error code. */
const UNREADABLE_PAGE = /unable to get the page\. error code=(\d+)/;

/** SQLITE_IOERR, the primary code (low byte) of every extended I/O error code. */
const SQLITE_IOERR = 10;

/**
 * Whether SQLite's error `code` stopping a check is a read of the file or its log that failed
 * (the disk's, not damage in what was read). sluicectl's check judges by it too
 * (src/cli/journal-check.ts).
 */
export function readFailed(code: string | null): boolean {
  return code !== null && READ_FAILED.has(code);
}

/** Whether quick_check's `lines` name a page it could not get for an I/O error. */
export function unreadablePages(lines: readonly string[]): boolean {
  return lines.some((line) => {
    const code = UNREADABLE_PAGE.exec(line)?.[1];
    return code !== undefined && (Number(code) & 0xff) === SQLITE_IOERR;
  });
}

function judge(path: string, outcome: Outcome): void {
  let found: string;
  // The disk failed a read: not damage SQLite found in what it read, but pages it could not
  // read at all. A check it stopped vouches for nothing; the open after it may not read those
  // pages, and would start on a journal missing the keys and open commands they hold.
  let unreadable = false;
  if (outcome.kind === 'checked') {
    if (outcome.lines.length === 1 && outcome.lines[0] === 'ok') return;
    found = outcome.lines.join('; ');
    unreadable = unreadablePages(outcome.lines);
  } else if (outcome.kind === 'error' && outcome.code?.startsWith('SQLITE_CORRUPT') === true) {
    found = `${outcome.code}: ${outcome.message}`;
  } else if (outcome.kind === 'error' && readFailed(outcome.code)) {
    found = `${outcome.code}: ${outcome.message}`;
    unreadable = true;
  } else {
    return;
  }
  if (unreadable) {
    throw new JournalDamagedError(
      `journal unavailable (open): ${path} cannot be read: an I/O error, the disk failed to read part of it or of its -wal file (SQLite's check: ${found}); sluiced does not start on it: the keys and open commands on what it cannot read would be lost. The disk may be failing (the kernel's log, journalctl -k, names the failed reads): restore the journal from a backup onto a sound disk, or move it aside with its -wal and -shm files (a new journal is then created: check the valves, the commands it held are unknown to Sluice); it is left as it is`,
    );
  }
  throw new JournalDamagedError(
    `journal unavailable (open): ${path} is damaged (SQLite's check: ${found}); sluiced does not start on it: the keys and open commands on its damaged pages would be lost. Restore the journal from a backup, or move it aside with its -wal and -shm files (a new journal is then created: check the valves, the commands it held are unknown to Sluice); it is left as it is`,
  );
}
