import { readFileSync, realpathSync, statSync } from 'node:fs';

/**
 * Whether a process holds the journal's writer lock (`<journal>.lock`, src/journal/writer-lock.ts):
 * a sluiced runs on this journal, whether or not its admin endpoint listens. The endpoint is not
 * there for the whole life of the daemon: not yet while it checks the journal and takes up the
 * commands it holds open at its start, no longer while a stop lets the commands in flight settle
 * (up to its shutdown bound). Told from the kernel's table of file locks (/proc/locks), without
 * opening the lock file: a reader's own lock on it, for the instant it looked, would refuse a
 * daemon starting at that instant ("in use by another sluiced"). Null when it cannot be told (no
 * lock file, no /proc/locks).
 */
export function journalLockHeld(journalPath: string): boolean | null {
  let dev: number;
  let ino: number;
  let table: string;
  try {
    const lock = statSync(`${realpathSync(journalPath)}.lock`);
    dev = lock.dev;
    ino = lock.ino;
    table = readFileSync('/proc/locks', 'utf8');
  } catch {
    return null;
  }
  // "1: POSIX  ADVISORY  WRITE 17054 fe:00:4423817 1073741824 1073742335": the file is
  // MAJOR:MINOR:INODE, the device numbers in hexadecimal (fs/locks.c lock_get_status()).
  const file = `${hex(major(dev))}:${hex(minor(dev))}:${ino}`;
  return table.split('\n').some((line) => line.split(/\s+/).includes(file));
}

function hex(n: number): string {
  return n.toString(16).padStart(2, '0');
}

// glibc's gnu_dev_major and gnu_dev_minor, on the st_dev Node gives (exact below 2^53).
function major(dev: number): number {
  return Number(((BigInt(dev) >> 8n) & 0xfffn) | ((BigInt(dev) >> 32n) & ~0xfffn));
}

function minor(dev: number): number {
  return Number((BigInt(dev) & 0xffn) | ((BigInt(dev) >> 12n) & ~0xffn));
}
