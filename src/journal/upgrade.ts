import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Worker } from 'node:worker_threads';
import {
  JournalDamagedError,
  JournalUnavailableError,
  JournalVersionError,
} from '../core/errors.js';
import type { Upgrade } from './connection.js';

/** The upgrade thread's messages (upgrade-thread.ts). */
type ThreadMessage =
  | { readonly kind: 'thread'; readonly io: string | null }
  | { readonly kind: 'done'; readonly upgrade: Upgrade | null }
  | { readonly kind: 'error'; readonly name: string; readonly message: string };

/** The upgrade of upgradeJournalOffThread while it runs. */
export interface JournalUpgrade {
  /** The versions it went from and to; null when the journal needed none. */
  readonly done: Promise<Upgrade | null>;
  /**
   * The bytes the upgrade's thread has read and written so far (its `rchar` + `wchar` in
   * /proc: the old tables read, the new ones written to the log, SQLite's sorts spilled to its
   * temporary files), or null when this system does not say or the thread is not running.
   * Growth is the proof that the upgrade is getting on (start-progress.ts): a thread held in a
   * write the disk never answers moves no more bytes.
   */
  readonly bytesMoved: () => number | null;
}

/**
 * The thread's program: the compiled upgrade-thread.js beside this file, or, where the sources
 * run under the project's TypeScript loader, upgrade-thread.ts (the thread inherits the
 * process's flags, the loader among them).
 */
const THREAD = new URL(
  `./upgrade-thread${extname(fileURLToPath(import.meta.url))}`,
  import.meta.url,
);

/**
 * upgradeJournal (connection.ts) on a worker thread: the daemon's event loop goes on sending
 * the watchdog's pings and the start's extensions while the journal is upgraded. Its errors
 * come back as the classes they were thrown as (the exit code depends on it: 3 for a damaged
 * journal, 1 for one the filesystem has no room to upgrade), with their messages.
 */
export function upgradeJournalOffThread(path: string, busyTimeoutMs = 2000): JournalUpgrade {
  let io: string | null = null;
  const done = new Promise<Upgrade | null>((resolve, reject) => {
    const worker = new Worker(THREAD, { workerData: { path, busyTimeoutMs } });
    let result: { upgrade: Upgrade | null } | Error | null = null;
    worker.on('message', (message: ThreadMessage) => {
      if (message.kind === 'thread') io = message.io;
      else if (message.kind === 'done') result = { upgrade: message.upgrade };
      else result = rebuilt(message.name, message.message);
    });
    worker.once('error', reject);
    worker.once('exit', (code) => {
      io = null;
      if (result === null) {
        reject(new Error(`the journal's upgrade thread exited ${code} without an answer`));
      } else if (result instanceof Error) reject(result);
      else resolve(result.upgrade);
    });
  });
  const bytesMoved = (): number | null => {
    if (io === null) return null;
    try {
      const text = readFileSync(io, 'utf8');
      const read = /^rchar:\s*(\d+)$/m.exec(text)?.[1];
      const written = /^wchar:\s*(\d+)$/m.exec(text)?.[1];
      return read === undefined || written === undefined ? null : Number(read) + Number(written);
    } catch {
      return null;
    }
  };
  return { done, bytesMoved };
}

function rebuilt(name: string, message: string): Error {
  switch (name) {
    case 'JournalDamagedError':
      return new JournalDamagedError(message);
    case 'JournalUnavailableError':
      return new JournalUnavailableError(message);
    case 'JournalVersionError':
      return new JournalVersionError(message);
    default:
      return new Error(message);
  }
}
