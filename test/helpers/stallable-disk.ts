import { execFileSync, spawn } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

/**
 * A state folder whose disk the test can stall: an ext4 image looped from a file on a second
 * ext4 image, which stall() freezes (fsfreeze). The inner filesystem's block I/O waits on the
 * frozen one, so an fdatasync of a file in the state folder does not return, while writes still
 * reach the page cache and the event loop turns. Needs root (mount) and util-linux's fsfreeze.
 */
export interface StallableDisk {
  /** The state folder (mode 700) on the inner filesystem. */
  readonly stateDir: string;
  /**
   * Freezes the outer filesystem. It is thawed after `endsAfterMs` whatever the test process
   * does (a detached shell): writes to the stalled filesystem may come to wait for it too
   * (ext4's own journal), and this process with them.
   */
  stall(endsAfterMs: number): void;
  /** Thaws it now (a no-op when it was not frozen, or thawed already). */
  resume(): void;
  /** Thaws it and unmounts both filesystems. */
  remove(): void;
}

export function stallableDisk(dir: string): StallableDisk {
  const outer = join(dir, 'outer');
  const stateDir = join(dir, 'state');
  mkdirSync(outer);
  mkdirSync(stateDir);
  const mounted: string[] = [];
  let frozen = false;
  const outerImage = join(dir, 'outer.img');
  execFileSync('truncate', ['-s', '48M', outerImage]);
  execFileSync('mkfs.ext4', ['-q', outerImage]);
  execFileSync('mount', ['-o', 'loop', outerImage, outer]);
  mounted.push(outer);
  const innerImage = join(outer, 'inner.img');
  execFileSync('truncate', ['-s', '32M', innerImage]);
  execFileSync('mkfs.ext4', ['-q', innerImage]);
  execFileSync('mount', ['-o', 'loop', innerImage, stateDir]);
  mounted.unshift(stateDir);
  execFileSync('chmod', ['700', stateDir]);
  const resume = (): void => {
    if (!frozen) return;
    try {
      execFileSync('fsfreeze', ['-u', outer], { stdio: 'ignore' });
    } catch {
      // Thawed already (the detached shell).
    }
    frozen = false;
  };
  return {
    stateDir,
    stall(endsAfterMs) {
      execFileSync('fsfreeze', ['-f', outer]);
      frozen = true;
      spawn('sh', ['-c', `sleep ${endsAfterMs / 1000}; fsfreeze -u ${outer} 2>/dev/null`], {
        detached: true,
        stdio: 'ignore',
      }).unref();
    },
    resume,
    remove() {
      resume();
      for (const path of mounted) execFileSync('umount', [path]);
    },
  };
}
