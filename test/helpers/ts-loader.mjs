// Lets a child process or worker thread run the project's TypeScript sources directly
// (node --import ./test/helpers/ts-register.mjs file.ts), the way vitest does in-process.
// Used by tests that need several real processes or threads sharing one journal.
import { createHash } from 'node:crypto';
import { readFile, writeFile, mkdir, rename } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import ts from 'typescript';

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
const CACHE = join(tmpdir(), `sluice-ts-cache-${ts.version}`);

export async function load(url, context, nextLoad) {
  if (!url.endsWith('.ts')) return nextLoad(url, context);
  const source = await readFile(fileURLToPath(url), 'utf8');
  const hash = createHash('sha256').update(url).update('\0').update(source).digest('hex');
  const cached = join(CACHE, `${hash}.js`);
  if (existsSync(cached)) {
    return { format: 'module', source: await readFile(cached, 'utf8'), shortCircuit: true };
  }
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
  await mkdir(CACHE, { recursive: true });
  // Written aside and renamed: a concurrent reader never sees half a file.
  const partial = `${cached}.${process.pid}.tmp`;
  await writeFile(partial, outputText);
  await rename(partial, cached);
  return { format: 'module', source: outputText, shortCircuit: true };
}
