import { CommanderError } from 'commander';
import type { Io } from './context.js';
import { CliError, EXIT, messageOf } from './errors.js';
import { buildProgram } from './program.js';
import { Style } from './table.js';
import { terminalSafe } from './terminal-text.js';

/**
 * Runs sluicectl with `argv` (without node and the script) and returns its exit code. The
 * binary (sluicectl.ts) is this with the process's streams, environment and clock; it is kept
 * apart from the binary so that it can be called without the binary's side effects.
 */
export async function main(argv: readonly string[], given: Io): Promise<number> {
  // Every line goes out with its control characters escaped (terminal-text.ts): it echoes what
  // the operator typed, and what the journal and the daemon hold.
  const io = terminalSafe(
    given,
    Style.for(given.stdout, argv.includes('--no-color'), given.env).colour,
  );
  const result: { code: number } = { code: EXIT.OK };
  const program = buildProgram(io, result);
  try {
    await program.parseAsync(argv, { from: 'user' });
    return result.code;
  } catch (error) {
    if (error instanceof CommanderError) {
      // --help and --version end here too, with exit code 0; everything else commander refuses
      // is a usage error (it has printed the message already).
      return error.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
    }
    if (error instanceof CliError) {
      io.stderr.write(`sluicectl: ${error.message}\n`);
      if (error.exitCode === EXIT.USAGE) io.stderr.write("(see 'sluicectl --help')\n");
      return error.exitCode;
    }
    io.stderr.write(`sluicectl: unexpected error: ${messageOf(error)}\n`);
    if (io.env.SLUICECTL_DEBUG === '1' && error instanceof Error && error.stack !== undefined) {
      io.stderr.write(`${error.stack}\n`);
    }
    return EXIT.ERROR;
  }
}
