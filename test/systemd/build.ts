import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import {
  cpSync,
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { join, relative } from 'node:path';
import { ROOT } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';

/**
 * What `npm run build` makes, written to `dist` instead of the working tree's dist/: the
 * compiled daemon (tsconfig.build.json) and the status page's files (scripts/build-ui.mjs).
 * Throws with the compiler's output when it fails.
 *
 * The build is made once for a given content of its inputs (the sources, the status page, the
 * compiler's settings and version, the lock file) and kept in the temp dir: the install tests
 * each build the same package, and a type-checking build takes tens of seconds beside the
 * rest of the suite. Concurrent callers share one build: the first takes a lock (a directory,
 * made or not at once), the others wait for its result; a build is made aside and renamed into
 * place, so nobody copies half of one. A lock whose process is gone is taken over.
 */
export async function buildInto(dist: string): Promise<void> {
  const built = join(tmpdir(), `sluice-build-${inputsHash()}`);
  const lock = `${built}.lock`;
  await until(
    () => {
      if (existsSync(built)) return true;
      try {
        mkdirSync(lock);
      } catch {
        if (!ownerAlive(lock)) rmSync(lock, { recursive: true, force: true });
        return undefined;
      }
      try {
        mkdirSync(join(lock, String(process.pid)));
        if (!existsSync(built)) {
          const partial = `${built}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
          try {
            build(partial);
            try {
              renameSync(partial, built);
            } catch (error) {
              // Another caller's build got there first (a stale lock taken over twice): the same.
              if (!existsSync(built)) throw error;
            }
          } finally {
            rmSync(partial, { recursive: true, force: true });
          }
        }
      } finally {
        rmSync(lock, { recursive: true, force: true });
      }
      return true;
    },
    // A build beside the rest of the suite on two cores has taken over a minute.
    300_000,
    'the package built',
  );
  cpSync(built, dist, { recursive: true });
}

function build(dist: string): void {
  const steps: [string, string[]][] = [
    [
      join(ROOT, 'node_modules/typescript/bin/tsc'),
      ['-p', join(ROOT, 'tsconfig.build.json'), '--outDir', dist],
    ],
    [join(ROOT, 'scripts/build-ui.mjs'), [join(dist, 'ui')]],
  ];
  for (const [script, args] of steps) {
    const r = spawnSync(process.execPath, [script, ...args], { encoding: 'utf8' });
    if (r.status !== 0) {
      throw new Error(`${script} ${args.join(' ')} exited ${r.status}:\n${r.stdout}${r.stderr}`);
    }
  }
}

/**
 * Whether the process named in a lock (its one entry, a pid) still runs; a lock without one is
 * taken for alive for its first 10 s (its owner names itself right after making it).
 */
function ownerAlive(lock: string): boolean {
  let pid: number;
  try {
    const entry = readdirSync(lock)[0];
    if (entry === undefined) return Date.now() - statSync(lock).mtimeMs < 10_000;
    pid = Number(entry);
  } catch {
    return true;
  }
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** A hash of every file the build reads from the project, by path and content. */
function inputsHash(): string {
  const hash = createHash('sha256');
  const files = [
    ...['src', 'simulators', 'ui'].flatMap((top) =>
      readdirSync(join(ROOT, top), { withFileTypes: true, recursive: true })
        .filter((e) => e.isFile())
        .map((e) => join(e.parentPath, e.name)),
    ),
    ...[
      'tsconfig.json',
      'tsconfig.build.json',
      'package.json',
      'package-lock.json',
      'scripts/build-ui.mjs',
      'node_modules/typescript/package.json',
    ].map((f) => join(ROOT, f)),
  ].sort();
  for (const file of files) {
    hash.update(relative(ROOT, file)).update('\0').update(readFileSync(file)).update('\0');
  }
  return hash.digest('hex').slice(0, 32);
}
