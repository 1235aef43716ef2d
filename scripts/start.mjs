#!/usr/bin/env node
// `npm start`: builds Sluice when the build is missing or older than its sources, then runs
// the demo (dist/src/demo/main.js): simulators, an embedded MQTT broker and the daemon.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const entry = join(root, 'dist', 'src', 'demo', 'main.js');

function newest(dir, every = false) {
  let latest = 0;
  for (const item of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, item.name);
    if (item.isDirectory()) latest = Math.max(latest, newest(path, every));
    else if (every || item.name.endsWith('.ts')) latest = Math.max(latest, statSync(path).mtimeMs);
  }
  return latest;
}

const built = existsSync(entry) ? statSync(entry).mtimeMs : 0;
// The status page's files (ui/) are copied into the build as they are.
const sources = Math.max(
  newest(join(root, 'src')),
  newest(join(root, 'simulators')),
  newest(join(root, 'ui'), true),
);
if (built < sources) {
  console.log('building Sluice (npm run build) ...');
  execFileSync(process.platform === 'win32' ? 'npm.cmd' : 'npm', ['run', 'build', '--silent'], {
    cwd: root,
    stdio: 'inherit',
  });
}
await import(pathToFileURL(entry).href);
