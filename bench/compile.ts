import { mkdirSync, readFileSync, readdirSync, symlinkSync, writeFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { ROOT } from './paths.js';

/**
 * The daemon and the plant run as compiled JavaScript, as `sluiced` ships (dist/), not under
 * the TypeScript loader: the loader's worker thread would add its own memory to the daemon's
 * RSS (and TypeScript itself, some 60 MiB, whenever a source changed since it was last
 * transpiled) and its start-up to the time until the daemon listens.
 *
 * The sources are transpiled file by file, with the loader's settings (no type check: the
 * bench measures the working tree as it is), into a folder of the run. Every other top-level
 * entry of the project (package.json, node_modules, devices, ui, …) is linked beside them, so
 * that the tree resolves packages, finds its package root and reads its files as dist/ does.
 */

const SOURCES = ['src', 'simulators', 'bench'];

function tsFiles(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.ts') && !e.name.endsWith('.d.ts'))
    .map((e) => join(e.parentPath, e.name));
}

export interface CompiledTree {
  readonly dir: string;
  /** The compiled path of a source file of the project. */
  path(source: string): string;
}

export async function compileTree(dir: string): Promise<CompiledTree> {
  const { default: ts } = await import('typescript');
  mkdirSync(dir, { recursive: true });
  for (const entry of readdirSync(ROOT)) {
    if (SOURCES.includes(entry) || entry === '.git') continue;
    symlinkSync(join(ROOT, entry), join(dir, entry));
  }
  for (const top of SOURCES) {
    for (const file of tsFiles(join(ROOT, top))) {
      const { outputText } = ts.transpileModule(readFileSync(file, 'utf8'), {
        fileName: file,
        compilerOptions: {
          module: ts.ModuleKind.ESNext,
          target: ts.ScriptTarget.ES2023,
          verbatimModuleSyntax: true,
          sourceMap: false,
        },
      });
      const out = join(dir, relative(ROOT, file)).replace(/\.ts$/, '.js');
      mkdirSync(dirname(out), { recursive: true });
      writeFileSync(out, outputText);
    }
  }
  return {
    dir,
    path: (source) => join(dir, relative(ROOT, source)).replace(/\.ts$/, '.js'),
  };
}
