import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { inject } from 'vitest';
import { ROOT } from './fixtures.js';

/**
 * How a test starts one of the project's entry files (src/daemon/cli.ts, simulators/cli.ts,
 * test/helpers/*-process.ts, …) in a process or a worker thread of its own: from the run's
 * compiled tree (test/global-setup.ts), as `sluiced` ships, or, when a file runs without that
 * setup, from source under the TypeScript loader. `entry` is relative to the project's root.
 */
function compiled(entry: string): string | undefined {
  const tree = inject('compiledTree');
  if (tree === undefined) return undefined;
  const path = join(tree, entry).replace(/\.ts$/, '.js');
  return existsSync(path) ? path : undefined;
}

const TS_REGISTER = join(ROOT, 'test/helpers/ts-register.mjs');

/** The node arguments that run `entry`; the entry's own arguments follow them. */
export function nodeArgs(entry: string): string[] {
  const js = compiled(entry);
  return js === undefined ? ['--import', TS_REGISTER, join(ROOT, entry)] : [js];
}

/** A worker thread's script and execArgv for `entry` (new Worker(script, { execArgv })). */
export function workerEntry(entry: string): { script: URL; execArgv: string[] } {
  const js = compiled(entry);
  return js === undefined
    ? { script: pathToFileURL(join(ROOT, entry)), execArgv: ['--import', TS_REGISTER] }
    : { script: pathToFileURL(js), execArgv: [] };
}
