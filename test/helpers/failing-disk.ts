import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';

/**
 * A folder on a disk that fails reads, as one with sectors it cannot read: an ext4 image (4 KiB
 * blocks, no ext4 journal) looped and mounted. failReadsFrom() cuts the loop device short
 * inside a file's blocks (its backing file truncated, `losetup -c`), after mounting it again so
 * that none of its pages is left in the page cache: the kernel then fails every read of a block
 * past the cut with EIO ("attempt to access beyond end of device"), what a read of a failing
 * sector returns, while the blocks before it read as before. Needs root (mount, losetup) and
 * e2fsprogs' filefrag; the guard is tmpfsAvailable() (root, mount), as for stallableDisk.
 */
export interface FailingDisk {
  /** The folder on the disk. */
  readonly folder: string;
  /**
   * Fails every read of `file` (one of the files given, the last) from byte `at` (rounded down
   * to its block) to its end; the blocks of the files before it still read.
   */
  failReadsFrom(file: string, at: number): void;
  /** Unmounts the disk and removes its image. */
  remove(): void;
}

const BLOCK = 4096;

/**
 * A failing disk in `dir` (its image and mount point there), holding `files`, written in order
 * after 1 MiB left free before them for the files made later (a log's index, a lock file), so
 * that the last of them ends the data on the disk.
 */
export function failingDisk(
  dir: string,
  files: readonly { name: string; data: Buffer }[],
): FailingDisk {
  const image = join(dir, 'disk.img');
  const folder = join(dir, 'disk');
  mkdirSync(folder);
  execFileSync('truncate', ['-s', '32M', image]);
  execFileSync('mkfs.ext4', ['-q', '-b', String(BLOCK), '-O', '^has_journal', image]);
  execFileSync('mount', ['-o', 'loop', image, folder]);
  let mounted = true;
  // As a state folder is (sluiced refuses one others may read).
  execFileSync('chmod', ['700', folder]);
  // The room for the files made later: taken first, so that it lies before the files below,
  // and given back once they are written.
  const room = join(folder, 'room');
  writeFileSync(room, Buffer.alloc(1024 * 1024));
  // Each synced before the next is written: its blocks are allocated in that order.
  execFileSync('sync', ['-f', folder]);
  for (const { name, data } of files) {
    writeFileSync(join(folder, name), data);
    execFileSync('sync', ['-f', folder]);
  }
  rmSync(room);
  execFileSync('sync', ['-f', folder]);
  const remount = (): void => {
    execFileSync('umount', [folder]);
    mounted = false;
    execFileSync('mount', ['-o', 'loop', image, folder]);
    mounted = true;
  };
  return {
    folder,
    failReadsFrom(file, at) {
      const block = physicalBlock(join(folder, file), Math.floor(at / BLOCK));
      for (const other of files) {
        if (other.name === file) continue;
        const end = lastBlock(join(folder, other.name));
        if (end >= block)
          throw new Error(`${other.name} has blocks past the cut (${end} >= ${block})`);
      }
      // Mounted again: the file's pages are read from the device from now on.
      remount();
      const device = execFileSync('findmnt', ['-n', '-o', 'SOURCE', folder], {
        encoding: 'utf8',
      }).trim();
      execFileSync('truncate', ['-s', String(block * BLOCK), image]);
      execFileSync('losetup', ['-c', device]);
    },
    remove() {
      if (mounted) execFileSync('umount', ['-l', folder]);
      mounted = false;
      rmSync(image, { force: true });
    },
  };
}

/** The file's extents (filefrag -v): its blocks `from`..`to`, at device block `at` on. */
function extentsOf(path: string): { from: number; to: number; at: number }[] {
  const out = execFileSync('filefrag', ['-v', `-b${BLOCK}`, path], { encoding: 'utf8' });
  return [...out.matchAll(/^\s*\d+:\s+(\d+)\.\.\s*(\d+):\s+(\d+)\.\.\s*(\d+):/gm)].map((m) => ({
    from: Number(m[1]),
    to: Number(m[2]),
    at: Number(m[3]),
  }));
}

/** The last device block holding data of the file at `path` (−1: none). */
function lastBlock(path: string): number {
  return Math.max(-1, ...extentsOf(path).map((e) => e.at + e.to - e.from));
}

/**
 * The device block holding block `logical` of the file at `path`, checked to be followed by the
 * file's later blocks in order to its end (one extent from there on).
 */
function physicalBlock(path: string, logical: number): number {
  const extents = extentsOf(path);
  const last = extents.at(-1);
  const extent = extents.find((e) => e.from <= logical && logical <= e.to);
  if (extent === undefined || extent !== last) {
    throw new Error(`block ${logical} of ${path} is not in its last extent`);
  }
  return extent.at + (logical - extent.from);
}

/**
 * The files a daemon killed while it ran leaves of its journal, made at `path` by the journal's
 * own code: the journal file (closed once before, so its header holds its schema version) and
 * 1,000 claims (scope `ops`, keys `key-<batch>-<n>`, closes past their deadline, on
 * `inlet-valve`) in its log (`-wal`), twenty batches committed and synced, not yet copied into
 * the file. The first connection to open them reads the whole log (SQLite's recovery of its
 * index). `beforeFirstCheckpoint`: the journal of a daemon killed before SQLite's first
 * checkpoint, never closed: its file holds no schema version, its log the version, the tables
 * and the claims.
 */
export async function journalLeftByKilledDaemon(
  path: string,
  beforeFirstCheckpoint = false,
): Promise<{ name: string; data: Buffer }[]> {
  if (!beforeFirstCheckpoint) SqliteJournal.open({ path, groupCommit: true }).close();
  const journal = SqliteJournal.open({ path, groupCommit: true });
  try {
    const now = Date.now();
    for (let b = 0; b < 20; b++) {
      for (let i = 0; i < 50; i++) {
        journal.claim({
          scope: 'ops',
          key: `key-${b}-${i}`,
          fingerprint: `f-${b}-${i}`,
          device: 'inlet-valve',
          action: 'close',
          position: null,
          issuedAt: now,
          issuedAtSource: 'issuer',
          ttlMs: 30_000,
          deadline: now - 1,
          intake: 'test',
          acceptedAt: now,
        });
      }
      await journal.durable();
    }
    // Read while it is open, as the killed daemon left them (its close would copy the log in).
    return [
      { name: 'journal.db', data: readFileSync(path) },
      { name: 'journal.db-wal', data: readFileSync(`${path}-wal`) },
    ];
  } finally {
    journal.close();
  }
}
