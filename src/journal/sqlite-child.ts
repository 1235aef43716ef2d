import { spawn } from 'node:child_process';
import { createRequire } from 'node:module';

/**
 * A read of the whole journal file in a child process of its own: the daemon's start check
 * (integrity.ts), sluicectl's check (src/cli/journal-check.ts) and the count of its rows for
 * /metrics (row-counts.ts). Not a worker thread: a statement that walks the file runs in SQLite's
 * C code, which Worker.terminate() does not interrupt (better-sqlite3 has no sqlite3_interrupt),
 * and Node joins every worker before the process exits — measured: terminate() 0.5 s into a 75 s
 * statement returned after 75 s, and process.exit() waited as long. A stop asked for meanwhile
 * (systemctl stop, a sluicectl that has printed its answer) waited for all of it. A child is
 * killed at once.
 */

/** better-sqlite3, resolved: the child finds it whatever its working directory (`/` under systemd). */
export const SQLITE_MODULE = createRequire(import.meta.url).resolve('better-sqlite3');

/** How the child ended: what it wrote on stdout, its exit code or the signal that killed it. */
export interface ChildEnd {
  readonly out: string;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

export interface SqliteChild {
  /** The child's process id (undefined when it could not be started). */
  readonly pid: number | undefined;
  /** Resolves once the child has ended and its stdout is closed; rejects when it cannot start. */
  readonly ended: Promise<ChildEnd>;
  /** Kills the child where it is (SIGKILL); nothing when it has ended. */
  kill(): void;
}

/**
 * Runs `program` (plain JavaScript: it needs none of this process's flags, a TypeScript loader
 * among them, and spawn passes none) in `node -e`, with `args` after it (process.argv[1] on). Its
 * answer is what it writes on stdout; its stderr is dropped. `signal` kills it.
 */
export function spawnSqliteChild(
  program: string,
  args: readonly string[],
  signal?: AbortSignal,
): SqliteChild {
  const child = spawn(process.execPath, ['-e', program, ...args], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  const kill = (): void => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  };
  const ended = new Promise<ChildEnd>((resolve, reject) => {
    let out = '';
    child.stdout.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      out += chunk;
    });
    child.once('error', (error) => {
      signal?.removeEventListener('abort', kill);
      reject(error);
    });
    child.once('close', (code, killedBy) => {
      signal?.removeEventListener('abort', kill);
      resolve({ out, code, signal: killedBy });
    });
  });
  if (signal?.aborted === true) kill();
  else signal?.addEventListener('abort', kill, { once: true });
  return { pid: child.pid, ended, kill };
}

/** The child's answer: the JSON line it wrote, or null when it wrote none (killed, crashed). */
export function answerOf(end: ChildEnd): unknown {
  try {
    return JSON.parse(end.out) as unknown;
  } catch {
    return null;
  }
}
