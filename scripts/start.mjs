#!/usr/bin/env node
// `npm start`: builds Sluice if needed. The daemon and its demo (simulators, embedded broker,
// self-signed certificate) arrive with the daemon; until then this says so instead of pretending.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
if (!existsSync(join(root, 'dist', 'src', 'core', 'pipeline.js'))) {
  console.log('building Sluice (npm run build) ...');
  execFileSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });
}
console.log(
  'Sluice is built. The daemon (sluiced) is not part of this version yet; see README "Status".',
);
