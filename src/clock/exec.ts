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

/**
 * The environment the process had when this module was loaded, which the daemon does before any
 * driver runs: the one its clock tools are given. process.env is not theirs to inherit as it
 * stands later: node-opcua sets OPENSSL_CONF and RANDFILE process-wide as it works, never when
 * loaded (node-opcua-pki points them at its own files before it runs openssl, and
 * node-opcua-crypto sets OPENSSL_CONF around reading a private key and "restores" an unset one
 * as the string "undefined"). A pmc or chronyc wrapper that runs an OpenSSL tool with
 * OPENSSL_CONF=undefined fails (`openssl req`: Can't open "undefined"). Nothing in Sluice sets a
 * variable for a child through process.env.
 */
const START_ENVIRONMENT: Readonly<NodeJS.ProcessEnv> = Object.freeze({ ...process.env });

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
        env: { ...START_ENVIRONMENT, LC_ALL: 'C' },
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
