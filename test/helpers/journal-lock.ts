import { spawn } from 'node:child_process';

/**
 * Another process (the operator CLI, say) that takes the journal's write lock on request and
 * holds it for a set time by its own timer. A separate process, as in the field: in this one,
 * SQLite's busy wait would block the very timer that should end the lock.
 */
export async function lockHolder(path: string): Promise<{
  hold(ms: number): Promise<void>;
  close(): void;
}> {
  const child = spawn(
    process.execPath,
    [
      '-e',
      `const db = new (require('better-sqlite3'))(process.argv[1]);
       let until = 0;
       let timer = null;
       const release = () => {
         timer = null;
         if (Date.now() < until) { timer = setTimeout(release, until - Date.now()); return; }
         db.exec('COMMIT');
       };
       process.stdout.write('ready\\n');
       require('readline').createInterface({ input: process.stdin }).on('line', (line) => {
         // A hold while holding extends the lock: one transaction, held to the later end.
         if (timer === null) db.exec('BEGIN IMMEDIATE');
         until = Math.max(until, Date.now() + Number(line.trim()));
         if (timer === null) timer = setTimeout(release, until - Date.now());
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
      child.stdin.write(`${ms}\n`);
      await locked;
    },
    close: () => {
      child.kill();
    },
  };
}
