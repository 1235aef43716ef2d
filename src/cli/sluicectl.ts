#!/usr/bin/env node
// sluicectl — the Sluice operator CLI (SPEC §7, docs/sluicectl.md): find, explain and settle
// stuck commands. Reads the journal read-only; changes go through the daemon's admin endpoint.
// The command line itself is main.ts; this file gives it the process (streams, environment,
// clock) and turns its answer into the exit code.
import { EXIT, messageOf } from './errors.js';
import { main } from './main.js';

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
  onInterrupt: (say) => {
    const signals = { SIGINT: 2, SIGTERM: 15 } as const;
    const handlers = Object.entries(signals).map(([signal, number]) => {
      const handler = (): void => {
        say();
        process.exit(128 + number);
      };
      process.once(signal, handler);
      return () => process.off(signal, handler);
    });
    return () => {
      for (const off of handlers) off();
    };
  },
});
// exitCode, not exit(): stdout may be a pipe still draining a long table.
process.exitCode = code;
