import { createHash, randomBytes } from 'node:crypto';
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import type TypeScriptModule from 'typescript';
import { ROOT } from './paths.js';

type TypeScript = typeof TypeScriptModule;

/**
 * The daemon and the plant run as compiled JavaScript, as `sluiced` ships (dist/), not under
 * the TypeScript loader: the loader's worker thread would add its own memory to the daemon's
 * RSS (and TypeScript itself, some 60 MiB, whenever a source changed since it was last
 * transpiled) and its start-up to the time until the daemon listens. The test suite runs the
 * processes it starts from such a tree too (test/global-setup.ts): under the loader each start
 * of sluiced cost about 60 % more CPU, and the suite starts hundreds.
 *
 * The sources are transpiled file by file, with the loader's settings (no type check: the
 * bench and the tests run the working tree as it is), into a folder of the run; the other
 * files of the source folders (plants, fixtures, .mjs) are linked in place. Every other
 * top-level entry of the project (package.json, node_modules, devices, ui, …) is linked
 * beside them, so that the tree resolves packages, finds its package root and reads its files
 * as dist/ does. test/ is among the sources for the helper processes the tests start
 * (test/helpers/*-process.ts, the worker threads).
 *
 * Each file's output is kept in a cache in the temp dir, by the hash of its path, its source
 * and the compiler's version and settings (as test/helpers/ts-loader.mjs keeps its own):
 * transpiling the whole tree takes seconds, and TypeScript is loaded only when a file changed.
 * Nothing is measured while the tree is made, so a cached file changes no figure.
 */

const SOURCES = ['src', 'simulators', 'bench', 'test'];

function files(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile())
    .map((e) => join(e.parentPath, e.name));
}

const transpiled = (file: string): boolean => file.endsWith('.ts') && !file.endsWith('.d.ts');

export interface CompiledTree {
  readonly dir: string;
  /** The compiled path of a source file of the project. */
  path(source: string): string;
}

/** The transpile's settings; SETTINGS_KEY names them in the cache's key (keep the two alike). */
const settings = (ts: TypeScript): TypeScriptModule.CompilerOptions => ({
  module: ts.ModuleKind.ESNext,
  target: ts.ScriptTarget.ES2023,
  verbatimModuleSyntax: true,
  sourceMap: false,
});
const SETTINGS_KEY = JSON.stringify({ module: 'ESNext', target: 'ES2023', sourceMap: false });

export async function compileTree(dir: string): Promise<CompiledTree> {
  const require = createRequire(import.meta.url);
  const version = (
    JSON.parse(readFileSync(require.resolve('typescript/package.json'), 'utf8')) as {
      version: string;
    }
  ).version;
  const cache = join(tmpdir(), `sluice-js-cache-${version}`);
  let ts: TypeScript | null = null;
  mkdirSync(dir, { recursive: true });
  for (const entry of readdirSync(ROOT)) {
    if (SOURCES.includes(entry) || entry === '.git') continue;
    symlinkSync(join(ROOT, entry), join(dir, entry));
  }
  for (const top of SOURCES) {
    for (const file of files(join(ROOT, top))) {
      if (!transpiled(file)) {
        const link = join(dir, relative(ROOT, file));
        mkdirSync(dirname(link), { recursive: true });
        symlinkSync(file, link);
        continue;
      }
      const source = readFileSync(file, 'utf8');
      const hash = createHash('sha256')
        .update(SETTINGS_KEY)
        .update('\0')
        .update(file)
        .update('\0')
        .update(source)
        .digest('hex');
      const cached = join(cache, `${hash}.js`);
      let outputText: string;
      if (existsSync(cached)) {
        outputText = readFileSync(cached, 'utf8');
      } else {
        ts ??= (await import('typescript')).default;
        ({ outputText } = ts.transpileModule(source, {
          fileName: file,
          compilerOptions: settings(ts),
        }));
        // Written aside and renamed: a run beside this one never reads half a file. A
        // failed write only costs the next run this transpile.
        try {
          mkdirSync(cache, { recursive: true });
          const partial = `${cached}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
          writeFileSync(partial, outputText);
          renameSync(partial, cached);
        } catch {
          // a read-only temp dir: fine
        }
      }
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
