import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { ROOT } from '../helpers/fixtures.js';

/**
 * What `npm run build` makes, written to `dist` instead of the working tree's dist/: the
 * compiled daemon (tsconfig.build.json) and the status page's files (scripts/build-ui.mjs).
 * Throws with the compiler's output when it fails.
 */
export function buildInto(dist: string): void {
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
