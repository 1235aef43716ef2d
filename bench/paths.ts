import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The bench's own folder and the repository root it belongs to. */
export const BENCH_DIR = dirname(fileURLToPath(import.meta.url));
export const ROOT = resolve(BENCH_DIR, '..');
/** The loader that runs the project's TypeScript directly (child processes use it too). */
export const TS_REGISTER = join(ROOT, 'test', 'helpers', 'ts-register.mjs');
