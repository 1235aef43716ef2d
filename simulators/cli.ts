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

const exitCode = await runCli(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  signal: stop.signal,
  // node-opcua's own messages to the log on stderr, routed as it loads (before it reports any):
  // on stdout they would land among the endpoint lines. Loaded only for a plant with an OPC UA
  // PLC (seconds on a small machine), as the plant itself does.
  beforeStart: async (plant, logger) => {
    if (!Object.values(plant.plcs).some((plc) => plc.protocol === 'opcua')) return;
    const { routeOpcuaMessages } = await import('./opcua-messages.js');
    routeOpcuaMessages(logger);
  },
});
// The plant is stopped (its servers closed, its write logs written, "stopped" printed; the log is
// synchronous): nothing is left to do. node-opcua's closed server may still hold timers of its own
// for a while (seconds on a loaded machine), which would run the forced exit above and turn a clean
// stop into exit 1.
process.exit(exitCode);
