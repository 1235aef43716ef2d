import { spawn } from 'node:child_process';

/**
 * Another process (the operator CLI, say) that takes the journal's write lock on request and
 * holds it for a set time by its own timer, or until release(). A separate process, as in the
 * field: in this one, SQLite's busy wait would block the very timer that should end the lock.
 */
export async function lockHolder(path: string): Promise<{
  /** Takes the lock (resolves once held) for `ms`, or until release() when `ms` is omitted. */
  hold(ms?: number): Promise<void>;
  /**
   * Ends the lock now. The request is on its way to the holder when this returns (a pipe's
   * write goes out at once), so a call from a busy wait's log line lets that wait get through;
   * resolves once the lock has gone.
   */
  release(): Promise<void>;
  close(): void;
}> {
  const child = spawn(
    process.execPath,
    [
      '-e',
      `const db = new (require('better-sqlite3'))(process.argv[1]);
       let until = 0;
       let timer = null;
       const end = () => {
         if (timer !== null) clearTimeout(timer);
         timer = null;
         until = 0;
         if (db.inTransaction) db.exec('COMMIT');
       };
       const release = () => {
         timer = null;
         if (Date.now() < until) { timer = setTimeout(release, until - Date.now()); return; }
         end();
       };
       process.stdout.write('ready\\n');
       require('readline').createInterface({ input: process.stdin }).on('line', (line) => {
         const request = line.trim();
         if (request === 'release') {
           end();
           process.stdout.write('released\\n');
           return;
         }
         // A hold while holding extends the lock: one transaction, held to the later end.
         if (!db.inTransaction) db.exec('BEGIN IMMEDIATE');
         until = Math.max(until, request === 'held' ? Infinity : Date.now() + Number(request));
         if (timer !== null) clearTimeout(timer);
         timer = until === Infinity ? null : setTimeout(release, until - Date.now());
         process.stdout.write('locked\\n');
       });`,
      path,
    ],
    { stdio: ['pipe', 'pipe', 'inherit'] },
  );
  const line = (): Promise<void> =>
    new Promise<void>((resolve, reject) => {
      child.stdout.once('data', () => {
        resolve();
      });
      child.once('error', reject);
      child.once('exit', (code) => {
        reject(new Error(`the journal lock holder exited (${code ?? 'signal'})`));
      });
    });
  await line();
  return {
    hold: async (ms) => {
      const locked = line();
      child.stdin.write(`${ms ?? 'held'}\n`);
      await locked;
    },
    release: async () => {
      const released = line();
      child.stdin.write('release\n');
      await released;
    },
    close: () => {
      child.kill();
    },
  };
}
