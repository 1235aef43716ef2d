// Lets a child process or worker thread run the project's TypeScript sources directly
// (node --import ./test/helpers/ts-register.mjs file.ts), the way vitest does in-process.
// Used by tests that need several real processes or threads sharing one journal.
import { createHash, randomBytes } from 'node:crypto';
import { threadId } from 'node:worker_threads';
import { readFile, writeFile, mkdir, rename } from 'node:fs/promises';
import { existsSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

export async function resolve(specifier, context, nextResolve) {
  if (
    specifier.endsWith('.js') &&
    context.parentURL?.startsWith('file:') &&
    (specifier.startsWith('.') || specifier.startsWith('/'))
  ) {
    const candidate = new URL(specifier.replace(/\.js$/, '.ts'), context.parentURL);
    if (existsSync(fileURLToPath(candidate))) return { url: candidate.href, shortCircuit: true };
  }
  return nextResolve(specifier, context);
}

// Transpiled output is cached by content hash: tests spawn many short-lived processes (a
// daemon killed and started again), and transpiling every file each time costs seconds.
// TypeScript itself is loaded only on a cache miss: importing it costs most of a second per
// process, which the reliability campaigns pay at every daemon restart.
const require = createRequire(import.meta.url);
const TS_VERSION = JSON.parse(
  readFileSync(require.resolve('typescript/package.json'), 'utf8'),
).version;
const CACHE = join(tmpdir(), `sluice-ts-cache-${TS_VERSION}`);

export async function load(url, context, nextLoad) {
  if (!url.endsWith('.ts')) return nextLoad(url, context);
  const source = await readFile(fileURLToPath(url), 'utf8');
  const hash = createHash('sha256').update(url).update('\0').update(source).digest('hex');
  const cached = join(CACHE, `${hash}.js`);
  if (existsSync(cached)) {
    return { format: 'module', source: await readFile(cached, 'utf8'), shortCircuit: true };
  }
  const { default: ts } = await import('typescript');
  const { outputText } = ts.transpileModule(source, {
    fileName: fileURLToPath(url),
    compilerOptions: {
      module: ts.ModuleKind.ESNext,
      target: ts.ScriptTarget.ES2023,
      verbatimModuleSyntax: true,
      sourceMap: false,
      inlineSourceMap: true,
    },
  });
  // Written aside and renamed: a concurrent reader never sees half a file. The name is unique
  // per process, thread and call (worker threads share the pid); a failed cache write only
  // costs the next process a transpile.
  try {
    await mkdir(CACHE, { recursive: true });
    const partial = `${cached}.${process.pid}.${threadId}.${randomBytes(6).toString('hex')}.tmp`;
    await writeFile(partial, outputText);
    await rename(partial, cached);
  } catch {
    // Another process or thread won the race, or the temp dir is read-only: fine either way.
  }
  return { format: 'module', source: outputText, shortCircuit: true };
}
