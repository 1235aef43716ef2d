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
       process.stdout.write('ready\\n');
       process.stdin.on('data', (d) => {
         db.exec('BEGIN IMMEDIATE');
         process.stdout.write('locked\\n');
         setTimeout(() => db.exec('COMMIT'), Number(String(d).trim()));
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
