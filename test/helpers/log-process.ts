import { daemonLogger } from '../../src/daemon/log.js';

/**
 * A process that logs as sluiced does (daemonLogger on its stdout) and ends in the same turn,
 * before the batch of that turn is written (test/daemon/log.test.ts):
 *
 *   node --import ./test/helpers/ts-register.mjs test/helpers/log-process.ts MODE LINES
 *
 * (the test starts it from the run's compiled tree: test/helpers/entry.ts).
 *
 * MODE: `exit` (process.exit(0)), `throw` (an uncaught exception), `reject` (a promise rejected
 * with no handler). Like sluiced (src/daemon/cli.ts), an error that escapes is logged at fatal
 * by an uncaughtExceptionMonitor.
 */
const [mode, count] = process.argv.slice(2);
const logger = await daemonLogger('info');
process.on('uncaughtExceptionMonitor', (error, origin) => {
  logger.fatal({ err: error, origin }, 'crashed');
});
// In a turn of the event loop of its own (a timer's), as the daemon's work is.
setTimeout(() => {
  const lines = Number(count);
  for (let i = 0; i < lines; i++) {
    logger.child({ device: `valve-${i % 7}`, key: `k-${i}` }).info({ n: i }, 'command settled');
  }
  if (mode === 'exit') process.exit(0);
  if (mode === 'throw') throw new Error('escaped');
  if (mode === 'reject') void Promise.reject(new Error('unhandled'));
}, 1);
