import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import { JournalDamagedError } from '../core/errors.js';

/** The check thread's first message: where its I/O counters are (null where none are kept). */
interface ThreadMessage {
  readonly kind: 'thread';
  readonly io: string | null;
}

/** What the check thread found: SQLite's quick_check lines, or the error that stopped it. */
type Outcome =
  | { readonly kind: 'absent' }
  | { readonly kind: 'not-ours' }
  | { readonly kind: 'checked'; readonly lines: string[] }
  | { readonly kind: 'error'; readonly code: string | null; readonly message: string };

/** Lines of SQLite's report kept for the message (it names a page, a table, a row each). */
const REPORTED = 3;

/**
 * The worker's program, plain JavaScript (see row-counts.ts for why). The connection is not
 * read-only: a read-only one cannot recover the log a killed daemon left, and it writes nothing
 * (quick_check only reads; the writer lock is held, so no other daemon writes meanwhile). A file
 * whose header is not that of a Sluice journal (not SQLite, or no schema version: another
 * program's database, whose hot rollback journal a connection would play back into it) is not
 * opened: the journal's open refuses it and leaves it as it is.
 */
const PROGRAM = `
const { closeSync, existsSync, openSync, readSync, readlinkSync } = require('node:fs');
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.sqlite);
// This thread's own I/O counters (Linux: /proc/thread-self is "<pid>/task/<tid>"), read by the
// main thread while quick_check runs here: what it has read so far.
try {
  parentPort.postMessage({ kind: 'thread', io: '/proc/' + readlinkSync('/proc/thread-self') + '/io' });
} catch {
  parentPort.postMessage({ kind: 'thread', io: null });
}
function ours(path) {
  const header = Buffer.alloc(100);
  let fd = null;
  try {
    fd = openSync(path, 'r');
    if (readSync(fd, header, 0, 100, 0) < 100) return false;
  } catch {
    return false; // A folder, a file this user may not read: the open says so.
  } finally {
    if (fd !== null) closeSync(fd);
  }
  return header.toString('latin1', 0, 16) === 'SQLite format 3\\0' && header.readUInt32BE(60) !== 0;
}
if (!existsSync(workerData.path)) {
  parentPort.postMessage({ kind: 'absent' });
} else if (!ours(workerData.path)) {
  parentPort.postMessage({ kind: 'not-ours' });
} else {
  let db = null;
  try {
    db = new Database(workerData.path, { fileMustExist: true, timeout: workerData.busyTimeoutMs });
    const rows = db.pragma('quick_check(' + workerData.limit + ')');
    parentPort.postMessage({ kind: 'checked', lines: rows.map((r) => String(r.quick_check)) });
  } catch (error) {
    parentPort.postMessage({
      kind: 'error',
      code: typeof error.code === 'string' ? error.code : null,
      message: String(error.message),
    });
  } finally {
    if (db !== null) db.close();
  }
}
`;

const SQLITE = createRequire(import.meta.url).resolve('better-sqlite3');

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
 * could not read it at all (not a database, cannot be opened): the open that follows says those
 * in its own words.
 */
export async function refuseDamagedJournal(path: string, busyTimeoutMs = 2000): Promise<void> {
  return checkJournal(path, busyTimeoutMs).done;
}

/** The check of refuseDamagedJournal while it runs. */
export interface JournalCheck {
  /** Settles as refuseDamagedJournal's promise does. */
  readonly done: Promise<void>;
  /**
   * The bytes the check's thread has read so far (its `rchar` in /proc: reads from the page
   * cache count too), or null when this system does not say (no /proc/thread-self, no task I/O
   * accounting) or the thread has not started or has ended. Growth is the proof that the
   * check is getting on (the start's EXTEND_TIMEOUT_USEC, src/daemon/start-progress.ts): a
   * thread held in a read the disk never answers reads nothing more.
   */
  readonly bytesRead: () => number | null;
}

/** refuseDamagedJournal, with a look at how far its thread has read. */
export function checkJournal(path: string, busyTimeoutMs = 2000): JournalCheck {
  let io: string | null = null;
  const outcome = new Promise<Outcome>((resolve, reject) => {
    const worker = new Worker(PROGRAM, {
      eval: true,
      workerData: { path, sqlite: SQLITE, busyTimeoutMs, limit: REPORTED },
      execArgv: [],
      stdout: false,
      stderr: false,
    });
    let result: Outcome | null = null;
    worker.on('message', (message: Outcome | ThreadMessage) => {
      if (message.kind === 'thread') io = message.io;
      else result = message;
    });
    worker.once('error', reject);
    worker.once('exit', (code) => {
      io = null;
      if (result !== null) resolve(result);
      else reject(new Error(`the journal's check thread exited ${code} without an answer`));
    });
  });
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

function judge(path: string, outcome: Outcome): void {
  let found: string;
  if (outcome.kind === 'checked') {
    if (outcome.lines.length === 1 && outcome.lines[0] === 'ok') return;
    found = outcome.lines.join('; ');
  } else if (outcome.kind === 'error' && outcome.code?.startsWith('SQLITE_CORRUPT') === true) {
    found = `${outcome.code}: ${outcome.message}`;
  } else {
    return;
  }
  throw new JournalDamagedError(
    `journal unavailable (open): ${path} is damaged (SQLite's check: ${found}); sluiced does not start on it: the keys and open commands on its damaged pages would be lost. Restore the journal from a backup, or move it aside with its -wal and -shm files (a new journal is then created: check the valves, the commands it held are unknown to Sluice); it is left as it is`,
  );
}
