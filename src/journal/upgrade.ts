import { fork } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  JournalDamagedError,
  JournalUnavailableError,
  JournalVersionError,
  StartStoppedError,
} from '../core/errors.js';
import type { Upgrade } from './schema-upgrade.js';

/** The upgrade process's answer (upgrade-process.ts). */
type Answer =
  | { readonly kind: 'done'; readonly upgrade: Upgrade | null }
  | { readonly kind: 'error'; readonly name: string; readonly message: string };

/** The upgrade of upgradeJournalInChild while it runs. */
export interface JournalUpgrade {
  /**
   * The versions it went from and to; null when the journal needed none. Rejects with
   * StartStoppedError when `signal` stopped it before its answer.
   */
  readonly done: Promise<Upgrade | null>;
  /**
   * The bytes the upgrade's process has read and written so far (its `rchar` + `wchar` in
   * /proc: the old tables read, the new ones written to the log, SQLite's sorts spilled to its
   * temporary files; also its own start's reads of the program), or null when this system
   * does not say or the process is not running. Growth is the proof that the upgrade is getting
   * on (start-progress.ts): a process held in a write the disk never answers moves no more.
   */
  readonly bytesMoved: () => number | null;
}

/**
 * The process's program: the compiled upgrade-process.js beside this file, or, where the sources
 * run under the project's TypeScript loader, upgrade-process.ts (fork passes the process's node
 * flags, the loader among them).
 */
const PROGRAM = fileURLToPath(
  new URL(`./upgrade-process${extname(fileURLToPath(import.meta.url))}`, import.meta.url),
);

/**
 * upgradeJournal (schema-upgrade.ts) in a child process: the daemon's event loop goes on sending
 * the watchdog's pings and the start's extensions while the journal is upgraded, and a stop
 * asked for meanwhile (`signal`) kills it where it is (SQLite rolls back the migration it was
 * in; upgrade-process.ts). Its errors come back as the classes they were thrown as (the exit
 * code depends on it: 3 for a damaged journal, 1 for one the filesystem has no room to upgrade),
 * with their messages.
 */
export function upgradeJournalInChild(
  path: string,
  busyTimeoutMs = 2000,
  signal?: AbortSignal,
): JournalUpgrade {
  let io: string | null = null;
  const done = new Promise<Upgrade | null>((resolve, reject) => {
    if (signal?.aborted === true) {
      reject(stopped());
      return;
    }
    const child = fork(PROGRAM, [path, String(busyTimeoutMs)], {
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    if (child.pid !== undefined) io = `/proc/${child.pid}/io`;
    const stop = (): void => {
      child.kill('SIGKILL');
    };
    signal?.addEventListener('abort', stop, { once: true });
    let result: { upgrade: Upgrade | null } | Error | null = null;
    child.on('message', (message: Answer) => {
      if (message.kind === 'done') result = { upgrade: message.upgrade };
      else result = rebuilt(message.name, message.message);
    });
    child.once('error', (error) => {
      io = null;
      signal?.removeEventListener('abort', stop);
      reject(error);
    });
    child.once('exit', (code, killedBy) => {
      io = null;
      signal?.removeEventListener('abort', stop);
      if (signal?.aborted === true && result === null) {
        reject(stopped());
      } else if (result === null) {
        reject(
          new Error(
            `the journal's upgrade process ended (${killedBy ?? `exit ${code}`}) without an answer`,
          ),
        );
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

function stopped(): StartStoppedError {
  return new StartStoppedError(
    "the journal's upgrade was stopped before its end (a stop asked for during the start); SQLite rolled back the migration it was in, and the next start upgrades the journal again",
  );
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
