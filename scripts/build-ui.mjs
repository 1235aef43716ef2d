#!/usr/bin/env node
// Part of `npm run build`: copies the status page's files (ui/, hand-written, nothing to
// compile) to dist/ui/, where the built daemon reads them (src/intake/ui-static.ts), so that
// they go wherever dist/ goes. An optional argument names another destination.
import { copyFileSync, mkdirSync, readdirSync, rmSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const from = join(root, 'ui');
const to = resolve(process.argv[2] ?? join(root, 'dist', 'ui'));

rmSync(to, { recursive: true, force: true });
mkdirSync(to, { recursive: true });
for (const entry of readdirSync(from, { withFileTypes: true })) {
  if (entry.isFile()) copyFileSync(join(from, entry.name), join(to, entry.name));
}
