import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync, readFileSync } from 'node:fs';
import { TS_REGISTER } from './paths.js';

/**
 * The bench's own processes (the simulated plant, the daemon): node children that run an
 * entry (compiled JavaScript, or TypeScript under the project's loader), talk over the IPC
 * channel (one request, one answer, by id), and log to a file of the run. The bench reads their CPU time and memory
 * from /proc, so that the load generator in this process is not counted as theirs. A child's
 * stdout and stderr are that file itself, not pipes this process copies from: the daemon logs
 * at its shipped level, a few lines per command, and their copying would be counted as the
 * clients' CPU.
 */

export interface ChildRequest {
  readonly id: number;
  readonly op: string;
  readonly args?: unknown;
}

export type ChildMessage =
  | { readonly type: 'ready'; readonly data: unknown }
  | { readonly type: 'answer'; readonly id: number; readonly ok: true; readonly result: unknown }
  | { readonly type: 'answer'; readonly id: number; readonly ok: false; readonly error: string };

export class BenchChild {
  private nextId = 1;
  private readonly pending = new Map<
    number,
    { resolve: (v: unknown) => void; reject: (e: Error) => void }
  >();
  private exited: Promise<void>;
  private exitCode: number | null = null;

  private constructor(
    readonly name: string,
    readonly process: ChildProcess,
    readonly logFile: string,
  ) {
    process.on('message', (message: ChildMessage) => {
      if (message.type !== 'answer') return;
      const waiter = this.pending.get(message.id);
      if (waiter === undefined) return;
      this.pending.delete(message.id);
      if (message.ok) waiter.resolve(message.result);
      else waiter.reject(new Error(`${name}: ${message.error}`));
    });
    this.exited = new Promise((resolve) => {
      process.once('exit', (code, signal) => {
        this.exitCode = code ?? (signal === null ? 0 : 128);
        for (const waiter of this.pending.values()) {
          waiter.reject(new Error(`${name} exited (${code ?? signal ?? '?'}); see ${logFile}`));
        }
        this.pending.clear();
        resolve();
      });
    });
  }

  /**
   * Starts `script` (a .js file, or a .ts file under the loader) and resolves with the child and the data of its `ready`
   * message, within `timeoutMs`.
   */
  static async start(args: {
    readonly name: string;
    readonly script: string;
    readonly argv?: readonly string[];
    readonly env?: Record<string, string>;
    readonly logFile: string;
    readonly timeoutMs: number;
  }): Promise<{ child: BenchChild; ready: unknown; spawnedAt: number }> {
    const log = openSync(args.logFile, 'a');
    const spawnedAt = Date.now();
    let proc: ChildProcess;
    try {
      proc = spawn(
        process.execPath,
        [
          // SLUICE_BENCH_CPU_PROFILE=DIR: every child writes a V8 CPU profile there at its exit
          // (open in Chrome DevTools), to see where a phase's time goes.
          ...(process.env.SLUICE_BENCH_CPU_PROFILE === undefined
            ? []
            : ['--cpu-prof', `--cpu-prof-dir=${process.env.SLUICE_BENCH_CPU_PROFILE}`]),
          // SLUICE_BENCH_NODE_FLAGS="--trace-gc ...": V8 and Node flags for every child, for flags
          // that NODE_OPTIONS refuses (their output goes to the child's log in the scratch folder).
          ...(process.env.SLUICE_BENCH_NODE_FLAGS?.split(/\s+/).filter((f) => f !== '') ?? []),
          ...(args.script.endsWith('.ts') ? ['--import', TS_REGISTER] : []),
          args.script,
          ...(args.argv ?? []),
        ],
        {
          stdio: ['ignore', log, log, 'ipc'],
          env: { ...process.env, ...args.env },
        },
      );
    } finally {
      // The child has its own copy of the descriptor.
      closeSync(log);
    }
    const child = new BenchChild(args.name, proc, args.logFile);
    const ready = await new Promise<unknown>((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(
          new Error(`${args.name} not ready within ${args.timeoutMs} ms; see ${args.logFile}`),
        );
      }, args.timeoutMs);
      proc.on('message', (message: ChildMessage) => {
        if (message.type !== 'ready') return;
        clearTimeout(timer);
        resolve(message.data);
      });
      proc.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(
          new Error(
            `${args.name} exited at start (${code ?? signal ?? '?'}): ${tail(args.logFile)}`,
          ),
        );
      });
    }).catch(async (error: unknown) => {
      await child.kill();
      throw error;
    });
    return { child, ready, spawnedAt };
  }

  get pid(): number {
    return this.process.pid ?? -1;
  }

  request<T>(op: string, args?: unknown, timeoutMs = 60_000): Promise<T> {
    const id = this.nextId++;
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${this.name}: ${op} not answered within ${timeoutMs} ms`));
      }, timeoutMs);
      this.pending.set(id, {
        resolve: (v) => {
          clearTimeout(timer);
          resolve(v as T);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      const message: ChildRequest = { id, op, ...(args === undefined ? {} : { args }) };
      this.process.send(message);
    });
  }

  /** CPU seconds (user + system) the process has used so far, from /proc. */
  cpuSeconds(): number {
    return procCpuSeconds(this.pid);
  }

  /** Resident and peak resident memory in MiB, from /proc. */
  memory(): { rssMiB: number; peakMiB: number } {
    return procMemory(this.pid);
  }

  /** SIGTERM, then SIGKILL after `graceMs`; resolves once the process has exited. */
  async stop(graceMs = 15_000): Promise<number | null> {
    if (this.exitCode === null) {
      this.process.kill('SIGTERM');
      const timer = setTimeout(() => this.process.kill('SIGKILL'), graceMs);
      await this.exited;
      clearTimeout(timer);
    }
    return this.exitCode;
  }

  async kill(): Promise<void> {
    if (this.exitCode === null) {
      this.process.kill('SIGKILL');
      await this.exited;
    }
  }
}

function tail(file: string): string {
  try {
    return readFileSync(file, 'utf8').split('\n').slice(-20).join('\n');
  } catch {
    return '(no log)';
  }
}

const CLOCK_TICKS = 100;

export function procCpuSeconds(pid: number): number {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // Fields after the command name, which may hold spaces: it ends at the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const utime = Number(fields[11]);
    const stime = Number(fields[12]);
    return (utime + stime) / CLOCK_TICKS;
  } catch {
    return Number.NaN;
  }
}

export function procMemory(pid: number): { rssMiB: number; peakMiB: number } {
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const kib = (field: string): number => {
      const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(status);
      return m === null ? Number.NaN : Number(m[1]);
    };
    return { rssMiB: kib('VmRSS') / 1024, peakMiB: kib('VmHWM') / 1024 };
  } catch {
    return { rssMiB: Number.NaN, peakMiB: Number.NaN };
  }
}
