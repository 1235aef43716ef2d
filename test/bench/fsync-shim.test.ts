import { execFileSync } from 'node:child_process';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildFsyncShim, FsyncCounterFile, type FsyncShim } from '../../bench/fsync-counter.js';
import { tempDir } from '../helpers/fixtures.js';
import { hasCommand, realComponent } from '../helpers/real.js';

/**
 * The bench's LD_PRELOAD shim (bench/fsync-count.c), built with the machine's C compiler and
 * loaded into a real Node process: it counts that process's fsyncs and fdatasyncs by thread
 * (fs.fsyncSync on the main thread, fs.fdatasync on libuv's thread pool) and, with
 * --fsync-delay-ms, makes each last at least the delay — timed here from outside the shim.
 */

const compiler = ['cc', 'gcc', 'clang'].some(hasCommand);
const present = realComponent('a C compiler (cc)', compiler, 'apt-get install gcc');

const { dir, cleanup } = tempDir('sluice-shim-');
let shim: FsyncShim;

beforeAll(() => {
  if (present) shim = buildFsyncShim(dir);
});
afterAll(cleanup);

/** Three fsyncs on the main thread and two fdatasyncs on the pool; their durations in ms. */
const SCRIPT = `
const fs = require('node:fs');
const fd = fs.openSync(process.argv[1], 'w');
const times = [];
for (let i = 0; i < 3; i++) {
  fs.writeSync(fd, 'x');
  const t = performance.now();
  fs.fsyncSync(fd);
  times.push(performance.now() - t);
}
const pool = (n) => {
  if (n === 0) { console.log(JSON.stringify(times)); return; }
  fs.writeSync(fd, 'y');
  const t = performance.now();
  fs.fdatasync(fd, (e) => { if (e) throw e; times.push(performance.now() - t); pool(n - 1); });
};
pool(2);
`;

function run(counter: FsyncCounterFile, delayMs?: number): number[] {
  if (!shim.available) throw new Error(shim.reason);
  const out = execFileSync(
    process.execPath,
    ['-e', SCRIPT, join(dir, `f-${String(delayMs ?? 0)}`)],
    {
      env: { ...process.env, ...counter.env(shim, delayMs === undefined ? {} : { delayMs }) },
    },
  );
  return JSON.parse(out.toString()) as number[];
}

describe.runIf(present)('the fsync shim', () => {
  it('builds', () => {
    expect(shim).toMatchObject({ available: true });
  });

  it('counts fsyncs by thread', () => {
    const counter = new FsyncCounterFile(join(dir, 'plain.bin'));
    run(counter);
    const counts = counter.read();
    expect(counts.mainCalls).toBe(3);
    expect(counts.otherCalls).toBe(2);
  });

  it('with a delay, makes every fsync last at least it, on every thread', () => {
    const counter = new FsyncCounterFile(join(dir, 'delayed.bin'));
    const times = run(counter, 20);
    expect(times).toHaveLength(5);
    for (const t of times) expect(t).toBeGreaterThanOrEqual(20);
    const counts = counter.read();
    expect(counts.mainCalls).toBe(3);
    expect(counts.otherCalls).toBe(2);
    // The counted time includes the delay.
    expect(counts.mainMs).toBeGreaterThanOrEqual(3 * 20);
    expect(counts.otherMs).toBeGreaterThanOrEqual(2 * 20);
  });
});
