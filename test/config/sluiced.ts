import { spawn, spawnSync } from 'node:child_process';
import { createInterface } from 'node:readline';
import { prepare } from '../../src/daemon/prepare.js';
import { nodeArgs } from '../helpers/entry.js';

/** `sluiced` as an operator runs it: the CLI entry, compiled as it ships (test/helpers/entry.ts). */
export const SLUICED = nodeArgs('src/daemon/cli.ts');

/** The environment without the SLUICE_* overrides a developer's shell may carry. */
export function cleanEnv(): NodeJS.ProcessEnv {
  return Object.fromEntries(
    Object.entries(process.env).filter(([name]) => !name.startsWith('SLUICE_')),
  );
}

export interface Finished {
  readonly status: number | null;
  readonly stdout: string;
  readonly stderr: string;
}

/** Runs sluiced to its end (`--check`, or a start that fails). */
export function runSluiced(args: readonly string[], timeoutMs = 30_000): Finished {
  const r = spawnSync(process.execPath, [...SLUICED, ...args], {
    encoding: 'utf8',
    env: cleanEnv(),
    timeout: timeoutMs,
  });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * sluiced's command line and start-up checks run in this process: src/daemon/prepare.ts, what
 * the binary runs before it starts the daemon, with the same arguments and environment as
 * runSluiced's process, and the exit code the binary exits with. For `--check`, and for a
 * start the configuration refuses; it never starts a daemon: a start the checks let through
 * fails the test here. A process start costs most of a second of CPU (the TypeScript sources,
 * zod, yaml); what depends on the process is tested with runSluiced. SLUICED_TEST_SPAWN=1
 * runs these as processes too.
 */
export function runSluicedInProcess(args: readonly string[]): Finished {
  if (process.env.SLUICED_TEST_SPAWN === '1') return runSluiced(args);
  let stdout = '';
  let stderr = '';
  const prepared = prepare(args, {
    stdout: { write: (text: string) => (stdout += text) },
    stderr: { write: (text: string) => (stderr += text) },
    env: cleanEnv(),
  });
  if (prepared.exit === undefined) {
    throw new Error(
      `sluiced ${args.join(' ')}: every start-up check passed, and the binary would start the daemon (not run in the test's process)\nstdout:\n${stdout}\nstderr:\n${stderr}`,
    );
  }
  return { status: prepared.exit, stdout, stderr };
}

export interface Running {
  /** The process id (undefined when it could not be spawned). */
  readonly pid: number | undefined;
  /** Every stdout line so far. */
  readonly lines: string[];
  /** Everything on stderr so far. */
  stderr(): string;
  /** Resolves with the first stdout line that passes, or rejects after `timeoutMs`. */
  line(predicate: (line: string) => boolean, timeoutMs: number): Promise<string>;
  /** SIGTERM, and the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL (a crash, a power cut for the process), and the exit code (null: the signal). */
  kill(): Promise<number | null>;
  /** Sends `signal` to the process, and returns at once. */
  signal(signal: NodeJS.Signals): void;
  /** Resolves with the exit code once it has exited by itself or otherwise. */
  readonly exited: Promise<number | null>;
}

/**
 * Starts sluiced as a daemon; stdout is kept line by line. `env`: variables added to the
 * clean environment (e.g. NODE_DEBUG=module, to see on stderr which modules it loads).
 */
export function startSluiced(args: readonly string[], env: NodeJS.ProcessEnv = {}): Running {
  const child = spawn(process.execPath, [...SLUICED, ...args], {
    env: { ...cleanEnv(), ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  const lines: string[] = [];
  const waiters = new Set<() => void>();
  createInterface({ input: child.stdout }).on('line', (line) => {
    lines.push(line);
    for (const wake of waiters) wake();
  });
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString('utf8')));
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  return {
    pid: child.pid,
    lines,
    stderr: () => stderr,
    line: (predicate, timeoutMs) =>
      new Promise((resolve, reject) => {
        const check = (): void => {
          const hit = lines.find(predicate);
          if (hit === undefined) return;
          clearTimeout(timer);
          waiters.delete(check);
          resolve(hit);
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(
            new Error(
              `sluiced printed no such line; stdout:\n${lines.join('\n')}\nstderr:\n${stderr}`,
            ),
          );
        }, timeoutMs);
        waiters.add(check);
        check();
      }),
    stop: async () => {
      if (child.exitCode === null) child.kill('SIGTERM');
      return exited;
    },
    kill: async () => {
      if (child.exitCode === null) child.kill('SIGKILL');
      return exited;
    },
    signal: (signal) => {
      child.kill(signal);
    },
    exited,
  };
}
