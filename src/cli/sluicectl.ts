#!/usr/bin/env node
// sluicectl — the Sluice operator CLI (SPEC §7, docs/sluicectl.md): find, explain and settle
// stuck commands. Reads the journal read-only; changes go through the daemon's admin endpoint.
import { CommanderError } from 'commander';
import type { Io } from './context.js';
import { CliError, EXIT, messageOf } from './errors.js';
import { buildProgram } from './program.js';

/** Runs sluicectl with `argv` (without node and the script) and returns its exit code. */
export async function main(argv: readonly string[], io: Io): Promise<number> {
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

// A reader that goes away before the output ends (`sluicectl show KEY | head`, a pager quit
// early) closes the pipe: the rest has nowhere to go and is dropped. Not a crash with a stack
// trace, and the exit code stays the command's own (stuck's 3 for monitoring included).
process.stdout.on('error', (error: NodeJS.ErrnoException) => {
  if (error.code === 'EPIPE') return;
  process.stderr.write(`sluicectl: cannot write the output: ${messageOf(error)}\n`);
  process.exit(EXIT.ERROR);
});

const code = await main(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  now: () => Date.now(),
});
// exitCode, not exit(): stdout may be a pipe still draining a long table.
process.exitCode = code;
