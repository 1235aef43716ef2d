import { execFileSync } from 'node:child_process';
import { closeSync, openSync, read, writeSync } from 'node:fs';
import { join } from 'node:path';
import { tempDir } from './fixtures.js';

/**
 * Holds every thread of libuv's pool until release(): each blocked reading a FIFO of its own
 * making. An fdatasync asked for meanwhile (the journal's barrier runs on the pool) is queued
 * behind them — a real one, on the real WAL, that cannot return before release() — as on a disk
 * whose flush stalls, which this machine's disk cannot be made to do on demand. What happens
 * while a barrier runs is then tested without racing the disk.
 */
export function holdThreadPool(): { release: () => Promise<void> } {
  const { dir, cleanup } = tempDir('sluice-pool-');
  const fifo = join(dir, 'hold');
  execFileSync('mkfifo', [fifo]);
  // Read and write: opening does not wait for a writer, and each read waits for a byte.
  const fd = openSync(fifo, 'r+');
  const threads = Number(process.env.UV_THREADPOOL_SIZE ?? '') || 4;
  const held = Array.from(
    { length: threads },
    () =>
      new Promise<void>((resolve, reject) => {
        read(fd, Buffer.alloc(1), 0, 1, null, (error) => {
          if (error === null) resolve();
          else reject(error);
        });
      }),
  );
  let released = false;
  return {
    release: async () => {
      if (released) return;
      released = true;
      writeSync(fd, Buffer.alloc(threads));
      await Promise.all(held);
      closeSync(fd);
      cleanup();
    },
  };
}
