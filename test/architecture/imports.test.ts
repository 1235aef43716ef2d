import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative, resolve } from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';

/**
 * The shape of src/'s imports, every kind counted (values, `import type`, re-exports): no module
 * reaches itself again through its imports, and no adapter (an intake, a driver, the journal)
 * or the domain core imports the daemon that wires them. A type-only cycle costs nothing at run
 * time, but it ties modules that should stand apart (a lane's data to the pipeline that builds
 * it), and it is how a value cycle starts. eslint.config.js keeps the core free of protocol
 * libraries and adapters; this keeps the rest of the layering.
 */

const SRC = resolve(import.meta.dirname, '../../src');

function sources(dir: string): string[] {
  return readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) return sources(path);
    return entry.name.endsWith('.ts') ? [path] : [];
  });
}

/** Each module of src/ and the modules of src/ it imports (resolved `.js` → `.ts`). */
function importGraph(): Map<string, string[]> {
  const graph = new Map<string, string[]>();
  for (const file of sources(SRC)) {
    const { importedFiles } = ts.preProcessFile(readFileSync(file, 'utf8'), true, true);
    const local = importedFiles
      .map((f) => f.fileName)
      .filter((name) => name.startsWith('.'))
      .map((name) => resolve(dirname(file), name.replace(/\.js$/, '.ts')));
    graph.set(relative(SRC, file), [...new Set(local.map((f) => relative(SRC, f)))]);
  }
  return graph;
}

/** Every cycle's modules, in import order, one per strongly connected set (Tarjan). */
function cycles(graph: Map<string, string[]>): string[][] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const found: string[][] = [];
  const visit = (node: string): void => {
    index.set(node, index.size);
    low.set(node, index.get(node)!);
    stack.push(node);
    onStack.add(node);
    for (const next of graph.get(node) ?? []) {
      if (!graph.has(next)) continue;
      if (!index.has(next)) {
        visit(next);
        low.set(node, Math.min(low.get(node)!, low.get(next)!));
      } else if (onStack.has(next)) {
        low.set(node, Math.min(low.get(node)!, index.get(next)!));
      }
    }
    if (low.get(node) !== index.get(node)) return;
    const component: string[] = [];
    let member: string;
    do {
      member = stack.pop()!;
      onStack.delete(member);
      component.push(member);
    } while (member !== node);
    if (component.length > 1 || (graph.get(node) ?? []).includes(node)) {
      found.push(component.reverse());
    }
  };
  for (const node of graph.keys()) if (!index.has(node)) visit(node);
  return found;
}

describe("src/'s imports", () => {
  const graph = importGraph();

  it('reads the modules it checks', () => {
    // A graph read wrong (no module, or no import resolved) would pass every check below.
    expect(graph.size).toBeGreaterThan(100);
    expect(graph.get('core/pipeline.ts')).toContain('core/lane.ts');
    expect(graph.get('daemon/daemon.ts')).toContain('core/pipeline.ts');
  });

  it('form no cycle, type-only imports and re-exports included', () => {
    // Each entry: modules that import one another, directly or through each other.
    expect(cycles(graph).map((c) => c.join(', '))).toEqual([]);
  });

  it('never reach the daemon from an intake, a driver, the journal or the core', () => {
    const wrong = [...graph].flatMap(([module, imports]) =>
      /^(intake|drivers|journal|core)\//.test(module)
        ? imports.filter((i) => i.startsWith('daemon/')).map((i) => `${module} → ${i}`)
        : [],
    );
    expect(wrong).toEqual([]);
  });
});
