import { chmodSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execBounded } from '../../src/clock/exec.js';
import { tempDir } from '../helpers/fixtures.js';
import { until } from '../helpers/mosquitto.js';

/**
 * execBounded, the runner of pmc and chronyc, on real processes: docs/clock.md allows a wrapper
 * script in their place, and a script runs the tool as its own child. The ground truth is the
 * process table: the pid the tool's child writes, looked up in /proc.
 */

let dir: string;
let cleanup: () => void;
const started: number[] = [];

beforeAll(() => {
  ({ dir, cleanup } = tempDir('sluice-clock-exec-'));
});

afterAll(() => {
  for (const pid of started) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // Ended, as it should have.
    }
  }
  cleanup();
});

/** A wrapper script whose tool hangs: it starts `sleep` as its child and waits for it. */
function hangingWrapper(name: string): { script: string; pidFile: string } {
  const script = join(dir, name);
  const pidFile = join(dir, `${name}.pid`);
  writeFileSync(script, `#!/bin/sh\nsleep 300 &\necho $! > "${pidFile}"\nwait\n`);
  chmodSync(script, 0o755);
  return { script, pidFile };
}

/** The pid in `file`, once the script has written it. */
async function pidIn(file: string): Promise<number> {
  const pid = await until(
    () => (existsSync(file) && /^\d+\n$/.test(readFileSync(file, 'utf8')) ? true : undefined),
    5_000,
    `the wrapper's child pid in ${file}`,
  ).then(() => Number(readFileSync(file, 'utf8')));
  started.push(pid);
  return pid;
}

/** Whether `pid` still runs: a zombie (ended, not reaped yet) does not. */
function running(pid: number): boolean {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // pid (comm) STATE …: the comm may hold spaces and parentheses, the state follows the last ')'.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

describe('execBounded', () => {
  it('a wrapper whose tool hangs: timed out, and the tool is killed with it, not left running', async () => {
    const { script, pidFile } = hangingWrapper('chronyc-hangs');
    const result = await execBounded(script, [], { timeoutMs: 500 });
    expect(result).toMatchObject({ code: null, timedOut: true, error: null });
    const tool = await pidIn(pidFile);
    // The run has ended; its tool must end with it (it would sleep for 300 s).
    await until(() => (running(tool) ? undefined : true), 5_000, `the tool (pid ${tool}) ended`);
    expect(running(tool)).toBe(false);
  });

  it('aborted (the poller stopping): the tool is killed too', async () => {
    const { script, pidFile } = hangingWrapper('pmc-hangs');
    const abort = new AbortController();
    const run = execBounded(script, [], { timeoutMs: 60_000, signal: abort.signal });
    const tool = await pidIn(pidFile);
    expect(running(tool)).toBe(true);
    abort.abort();
    expect(await run).toMatchObject({ code: null, timedOut: false, error: 'aborted' });
    await until(() => (running(tool) ? undefined : true), 5_000, `the tool (pid ${tool}) ended`);
    expect(running(tool)).toBe(false);
  });

  it('a tool that answers: its output, exit status and the locale the readers parse', async () => {
    const script = join(dir, 'answers');
    writeFileSync(script, '#!/bin/sh\necho "out $1 $LC_ALL"\necho "err" >&2\nexit 3\n');
    chmodSync(script, 0o755);
    expect(await execBounded(script, ['arg'], { timeoutMs: 5_000 })).toEqual({
      stdout: 'out arg C\n',
      stderr: 'err\n',
      code: 3,
      timedOut: false,
      error: null,
    });
  });

  it('a tool that is missing: the reason, no exit status', async () => {
    const missing = join(dir, 'no-such-pmc');
    expect(await execBounded(missing, [], { timeoutMs: 5_000 })).toEqual({
      stdout: '',
      stderr: '',
      code: null,
      timedOut: false,
      error: `${missing}: ENOENT`,
    });
  });
});
