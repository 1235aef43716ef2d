import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

/** Rows a journal holds: commands (open, and settled ones within retention) and their events. */
export interface RowCounts {
  readonly commands: number;
  readonly events: number;
}

/**
 * The worker's program, plain JavaScript: a worker thread of a process that runs the
 * TypeScript sources (under the project's loader, or vitest) could not load a .ts file of its
 * own. better-sqlite3 is passed as a resolved path, so that the worker finds it whatever the
 * process's working directory (`/` under systemd).
 */
const PROGRAM = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.sqlite);
const db = new Database(workerData.path, {
  readonly: true,
  fileMustExist: true,
  timeout: workerData.busyTimeoutMs,
});
try {
  const count = (table) => db.prepare('SELECT count(*) AS n FROM ' + table).get().n;
  // One read transaction: both counts from one snapshot of the journal.
  const counts = db.transaction(() => ({ commands: count('commands'), events: count('events') }))();
  parentPort.postMessage(counts);
} finally {
  db.close();
}
`;

const SQLITE = createRequire(import.meta.url).resolve('better-sqlite3');

/**
 * Counts the journal's rows on a read-only connection in a worker thread. `count(*)` walks a
 * table's smallest index from end to end: measured on a journal of 1,000,000 commands and
 * 4,000,000 events (2026-12-03), 2.4 s with the file out of the page cache and 50–100 ms in it
 * — on the thread that carries commands, every command waited that long at each count. In WAL
 * mode the reader takes no lock the daemon's writes wait for.
 */
export function countRowsOffThread(path: string, busyTimeoutMs = 2000): Promise<RowCounts> {
  return new Promise((resolve, reject) => {
    const worker = new Worker(PROGRAM, {
      eval: true,
      workerData: { path, sqlite: SQLITE, busyTimeoutMs },
      // The program needs none of the process's flags (a TypeScript loader among them).
      execArgv: [],
      stdout: false,
      stderr: false,
    });
    let counts: RowCounts | null = null;
    worker.once('message', (message: RowCounts) => {
      counts = message;
    });
    worker.once('error', reject);
    worker.once('exit', (code) => {
      if (counts !== null) resolve(counts);
      else
        reject(
          new Error(`the journal's rows were not counted (the counting thread exited ${code})`),
        );
    });
  });
}
