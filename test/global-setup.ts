import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestProject } from 'vitest/node';
import { compileTree } from '../bench/compile.js';

declare module 'vitest' {
  export interface ProvidedContext {
    /**
     * The run's compiled tree (bench/compile.ts), which test/helpers/entry.ts starts from;
     * undefined where a file runs without this setup.
     */
    compiledTree?: string;
  }
}

/**
 * The project's TypeScript compiled once for the run, for the processes the tests start: a
 * start of sluiced under the TypeScript loader cost about 60 % more CPU than from compiled
 * JavaScript (the loader's own thread, which reads and hashes every source it loads), and the
 * suite starts hundreds of them. The tests themselves still run from source under vitest.
 */
export default async function setup(project: TestProject): Promise<(() => void) | undefined> {
  // In watch mode a tree built once would go stale as the sources change between reruns: the
  // processes keep the loader there, which reads the sources as they are.
  if (project.config.watch) return undefined;
  const dir = mkdtempSync(join(tmpdir(), 'sluice-test-js-'));
  // Readable by every user: a test starts a helper as nobody (test/journal/writer-lock.test.ts).
  chmodSync(dir, 0o755);
  const tree = await compileTree(join(dir, 'js'));
  project.provide('compiledTree', tree.dir);
  return () => {
    rmSync(dir, { recursive: true, force: true });
  };
}
