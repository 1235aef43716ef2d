#!/usr/bin/env node
/** sluice-sim: runs the simulated plant until SIGTERM or SIGINT. Usage in simulators/README.md. */
import { runCli } from './cli-main.js';

const FORCED_EXIT_MS = 5000;
const stop = new AbortController();
let signalled = false;
const onSignal = (): void => {
  if (signalled) {
    // A second signal: the operator does not want to wait for a graceful stop.
    process.exit(1);
  }
  signalled = true;
  setTimeout(() => process.exit(1), FORCED_EXIT_MS).unref();
  stop.abort();
};
process.on('SIGTERM', onSignal);
process.on('SIGINT', onSignal);

process.exitCode = await runCli(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  signal: stop.signal,
});
