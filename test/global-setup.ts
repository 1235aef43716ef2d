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
    /**
     * The run's folder for the simulated OPC UA servers' certificate made once per run
     * (test/helpers/sim-certificate.ts); undefined where a file runs without this setup.
     */
    simPkiDir?: string;
  }
}

/**
 * The project's TypeScript compiled once for the run, for the processes the tests start: a
 * start of sluiced under the TypeScript loader cost about 60 % more CPU than from compiled
 * JavaScript (the loader's own thread, which reads and hashes every source it loads), and the
 * suite starts hundreds of them. The tests themselves still run from source under vitest.
 */
export default async function setup(project: TestProject): Promise<() => void> {
  // Made by the first plant start that needs it, not here: a run without an OPC UA plant does
  // not pay for its RSA key.
  const simPkiDir = mkdtempSync(join(tmpdir(), 'sluice-test-sim-pki-'));
  project.provide('simPkiDir', simPkiDir);
  const removeSimPki = (): void => {
    rmSync(simPkiDir, { recursive: true, force: true });
  };
  // In watch mode a tree built once would go stale as the sources change between reruns: the
  // processes keep the loader there, which reads the sources as they are.
  if (project.config.watch) return removeSimPki;
  const dir = mkdtempSync(join(tmpdir(), 'sluice-test-js-'));
  // Readable by every user: a test starts a helper as nobody (test/journal/writer-lock.test.ts).
  chmodSync(dir, 0o755);
  const tree = await compileTree(join(dir, 'js'));
  project.provide('compiledTree', tree.dir);
  return () => {
    rmSync(dir, { recursive: true, force: true });
    removeSimPki();
  };
}
