import { execFile } from 'node:child_process';

/** How a bounded run of a command ended. Never a rejection: the readers turn it into a probe. */
export interface ExecResult {
  readonly stdout: string;
  readonly stderr: string;
  /** Exit code; null when the process did not exit by itself (killed, or never started). */
  readonly code: number | null;
  /** Killed at `timeoutMs`. */
  readonly timedOut: boolean;
  /** Could not be run at all (ENOENT, EACCES) or was aborted: the reason. */
  readonly error: string | null;
}

export interface ExecOptions {
  readonly timeoutMs: number;
  /** Kills the process (SIGKILL) when aborted: a stopping poller does not wait for it. */
  readonly signal?: AbortSignal;
}

/** Runs a command without a shell. Injected so that the readers are tested on recorded output. */
export type Exec = (
  file: string,
  args: readonly string[],
  options: ExecOptions,
) => Promise<ExecResult>;

const MAX_OUTPUT_BYTES = 1024 * 1024;

interface ExecFileFailure {
  code?: unknown;
  killed?: boolean;
  signal?: NodeJS.Signals | null;
  name?: string;
}

export const execBounded: Exec = (file, args, options) =>
  new Promise<ExecResult>((resolve) => {
    execFile(
      file,
      [...args],
      {
        timeout: options.timeoutMs,
        killSignal: 'SIGKILL',
        maxBuffer: MAX_OUTPUT_BYTES,
        encoding: 'utf8',
        // Parsed output: no translated messages or locale-dependent number formats.
        env: { ...process.env, LC_ALL: 'C' },
        ...(options.signal === undefined ? {} : { signal: options.signal }),
      },
      (error, stdout, stderr) => {
        if (error === null) {
          resolve({ stdout, stderr, code: 0, timedOut: false, error: null });
          return;
        }
        const failure = error as ExecFileFailure;
        if (typeof failure.code === 'number') {
          resolve({ stdout, stderr, code: failure.code, timedOut: false, error: null });
          return;
        }
        const aborted = failure.name === 'AbortError';
        const timedOut = !aborted && failure.killed === true && failure.signal === 'SIGKILL';
        resolve({
          stdout,
          stderr,
          code: null,
          timedOut,
          error: aborted
            ? 'aborted'
            : timedOut
              ? null
              : typeof failure.code === 'string'
                ? `${file}: ${failure.code}`
                : error.message,
        });
      },
    );
  });
