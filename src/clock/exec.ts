import { spawn } from 'node:child_process';

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

/**
 * Runs `file` in a process group of its own (`detached`), and kills the whole group at the
 * timeout or abort. A wrapper script in place of pmc or chronyc (docs/clock.md) runs the tool
 * as its child: killing the script alone left that child running, reparented to init, one more
 * for every poll that timed out (a chronyc wrapper whose chronyc hung: ten a second on the
 * default interval and timeout, for as long as it hangs). The group is killed at the end of
 * every run too, so that nothing the tool started in the background outlives the reading.
 */
export const execBounded: Exec = (file, args, options) =>
  new Promise<ExecResult>((resolve) => {
    if (options.signal?.aborted === true) {
      resolve({ stdout: '', stderr: '', code: null, timedOut: false, error: 'aborted' });
      return;
    }
    const child = spawn(file, [...args], {
      detached: true,
      stdio: ['ignore', 'pipe', 'pipe'],
      // Parsed output: no translated messages or locale-dependent number formats.
      env: { ...START_ENVIRONMENT, LC_ALL: 'C' },
    });
    const tooLong = `${file}: output longer than ${MAX_OUTPUT_BYTES} bytes`;
    const stdout = collected(() => {
      end({ code: null, timedOut: false, error: tooLong });
    });
    const stderr = collected(() => {
      end({ code: null, timedOut: false, error: tooLong });
    });
    const onAbort = (): void => {
      end({ code: null, timedOut: false, error: 'aborted' });
    };
    const timer = setTimeout(() => {
      end({ code: null, timedOut: true, error: null });
    }, options.timeoutMs);
    let ended = false;
    function end(how: Omit<ExecResult, 'stdout' | 'stderr'>): void {
      if (ended) return;
      ended = true;
      clearTimeout(timer);
      options.signal?.removeEventListener('abort', onAbort);
      if (child.pid !== undefined) {
        try {
          // The group's id is the leader's pid; the leader may be gone while its children stay.
          process.kill(-child.pid, 'SIGKILL');
        } catch {
          // ESRCH: every process of the group has ended.
        }
      }
      // A process that left the group (setsid) may still hold the pipes: they are not waited for.
      child.stdout.destroy();
      child.stderr.destroy();
      resolve({ stdout: stdout.text(), stderr: stderr.text(), ...how });
    }
    child.stdout.on('data', stdout.add);
    child.stderr.on('data', stderr.add);
    options.signal?.addEventListener('abort', onAbort, { once: true });
    child.once('error', (error: NodeJS.ErrnoException) => {
      end({
        code: null,
        timedOut: false,
        error: typeof error.code === 'string' ? `${file}: ${error.code}` : error.message,
      });
    });
    // 'close', not 'exit': the output is whole once both pipes have ended. A child of the tool
    // holding a pipe open past the tool's exit is ended by the timeout, with the group.
    child.once('close', (code, signal) => {
      end(
        code !== null
          ? { code, timedOut: false, error: null }
          : { code: null, timedOut: false, error: `${file}: killed by ${signal ?? 'a signal'}` },
      );
    });
  });

/** A pipe's output as text, up to MAX_OUTPUT_BYTES; `overflow` is called once past it. */
function collected(overflow: () => void): { add: (chunk: Buffer) => void; text: () => string } {
  const chunks: Buffer[] = [];
  let bytes = 0;
  return {
    add: (chunk: Buffer) => {
      bytes += chunk.length;
      if (bytes > MAX_OUTPUT_BYTES) {
        overflow();
        return;
      }
      chunks.push(chunk);
    },
    text: () => Buffer.concat(chunks).toString('utf8'),
  };
}
