/**
 * sluicectl's exit codes (documented in `sluicectl --help` and docs/sluicectl.md) and the one
 * error class that carries them: every failure reaches the operator as one clear line and a
 * code a script can test, never as a stack trace.
 */
export const EXIT = {
  /** Done; nothing to report. */
  OK: 0,
  /** An error: the journal or the daemon cannot be reached, a command failed, not ready. */
  ERROR: 1,
  /** The command line is wrong: unknown option, bad duration, missing reason. */
  USAGE: 2,
  /** `stuck` listed open commands: something needs a person. */
  STUCK: 3,
} as const;

export type ExitCode = (typeof EXIT)[keyof typeof EXIT];

export class CliError extends Error {
  readonly exitCode: ExitCode;
  /** A stable code when the failure has one (the daemon's problem `code`, e.g. ALREADY_SETTLED). */
  readonly code: string | null;
  constructor(message: string, exitCode: ExitCode = EXIT.ERROR, code: string | null = null) {
    super(message);
    this.name = 'CliError';
    this.exitCode = exitCode;
    this.code = code;
  }
}

export class UsageError extends CliError {
  constructor(message: string) {
    super(message, EXIT.USAGE, 'USAGE');
    this.name = 'UsageError';
  }
}

export function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
