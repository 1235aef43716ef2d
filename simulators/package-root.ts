import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The nearest directory holding a package.json, walking up from this module. The same code
 * runs from simulators/ (vitest, source) and from dist/simulators/ (built), so paths to
 * bundled files are resolved from the package root rather than from this file.
 */
export function packageRoot(from: string = import.meta.url): string {
  let dir = dirname(fileURLToPath(from));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) throw new Error(`no package.json above ${fileURLToPath(from)}`);
    dir = parent;
  }
}

export function defaultPlantPath(): string {
  return join(packageRoot(), 'simulators', 'plants', 'default.yaml');
}
