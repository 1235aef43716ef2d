import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import {
  breakdown,
  busiestStretch,
  categoryOf,
  type CpuProfile,
} from '../../bench/profile-categories.js';

const dir = mkdtempSync(join(tmpdir(), 'sluice-profile-'));
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

/**
 * The bench's profile summary (bench/profile-categories.ts) bins a V8 CPU profile's samples by
 * kind of work. Ground truth: a real profile of a node process whose work is known — it writes
 * to a file with fs.writeSync for three seconds (a system call on every write), then sleeps.
 */
describe('profile categories', () => {
  it('puts a process busy in write(2) in the natives, and finds its busy seconds', () => {
    const script = join(dir, 'writes.cjs');
    writeFileSync(
      script,
      `const fs = require('node:fs');
const fd = fs.openSync(${JSON.stringify(join(dir, 'out.txt'))}, 'w');
const line = Buffer.from('x'.repeat(64) + '\\n');
const end = Date.now() + 3200;
while (Date.now() < end) fs.writeSync(fd, line, 0, line.length, 0);
setTimeout(() => {}, 1500);
`,
    );
    const run = spawnSync(process.execPath, ['--cpu-prof', `--cpu-prof-dir=${dir}`, script], {
      encoding: 'utf8',
      timeout: 30_000,
    });
    expect(run.status, run.stderr).toBe(0);
    const file = readdirSync(dir).find((f) => f.endsWith('.cpuprofile'));
    expect(file).toBeDefined();
    const profile = JSON.parse(readFileSync(join(dir, file!), 'utf8')) as CpuProfile;

    const stretch = busiestStretch(profile);
    expect(stretch).not.toBeNull();
    // The whole seconds of the 3.2 s loop (its first one may begin after the profile's first
    // second began, with the process's start), none of the sleep after it.
    expect(stretch!.toS - stretch!.fromS).toBeGreaterThanOrEqual(2);
    expect(stretch!.toS).toBeLessThanOrEqual(4);

    const b = breakdown(profile, stretch!.fromS, stretch!.toS);
    const native = b.categories.find((c) => c.category.startsWith('native'));
    expect(native).toBeDefined();
    expect(native!.top.map((f) => f.name)).toContain('writeBuffer');
    // The loop is the system call and Node's wrappers of it (fs.writeSync's checks).
    const node = b.categories.find((c) => c.category.startsWith("Node's own"));
    expect(native!.shareOfBusy + (node?.shareOfBusy ?? 0)).toBeGreaterThan(0.5);
    expect(b.idleMs / (b.busyMs + b.idleMs)).toBeLessThan(0.1);
    // Every busy sample is in one category.
    const sum = b.categories.reduce((s, c) => s + c.shareOfBusy, 0);
    expect(sum).toBeCloseTo(1, 6);
  });

  it("names the journal, Sluice's code, Node's and the dependencies by the frame's file", () => {
    const at = (url: string, functionName = 'f'): string => categoryOf({ functionName, url });
    expect(at('file:///opt/sluice/dist/src/journal/connection.js')).toMatch(/^journal/);
    expect(at('file:///opt/sluice/node_modules/better-sqlite3/lib/methods/wrappers.js')).toMatch(
      /^journal/,
    );
    expect(at('file:///opt/sluice/dist/src/core/pipeline.js')).toMatch(/^Sluice's own/);
    expect(at('file:///opt/sluice/node_modules/fastify/lib/reply.js')).toMatch(/^dependencies/);
    expect(at('node:internal/streams/writable')).toMatch(/^Node's own/);
    expect(at('', 'writev')).toMatch(/^native/);
    expect(at('', '(garbage collector)')).toBe('garbage collector');
    expect(at('', '(idle)')).toBe('idle');
  });
});
