// The daemon's process, run by its entry (cli.ts) once that holds SIGHUP: the command line and
// the configuration, the signals, the start and the exit codes (cli.ts lists them).
import { ConfigError } from '../config/config.js';
import { JournalDamagedError, JournalVersionError, StartStoppedError } from '../core/errors.js';
import type { Daemon } from './daemon.js';
import { handOverHangups } from './early-hangup.js';
import { daemonLogger } from './log.js';
import { STOP_MARGIN_MS, prepare } from './prepare.js';
import { outliveTerminalHangup } from './terminal.js';

// The command line, the configuration and every start-up check (prepare.ts): --check ends
// here, and so does a configuration the start refuses, before anything is created.
const prepared = prepare(process.argv.slice(2), {
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
});
if (prepared.exit !== undefined) process.exit(prepared.exit);
const { config, configPath, shutdownBoundMs } = prepared;

// Run in a terminal, the daemon keeps serving when the terminal hangs up, and stops cleanly
// after it (terminal.ts); under systemd nothing changes.
outliveTerminalHangup();

// JSON lines on stdout (journald), readable lines on a terminal.
const logger = await daemonLogger(config.log.level);

// An error that escapes every handler (a bug: an exception, a promise rejected with no handler)
// ends the process as Node ends it, exit 1; systemd restarts the daemon, and its recovery
// settles the open commands by reading the controllers (I5). It is said first in the JSON log,
// with its stack, among the lines that led to it: Node's own report is raw text on
// stderr, which a log pipeline reading JSON lines does not parse.
process.on('uncaughtExceptionMonitor', (error, origin) => {
  logger.fatal(
    { err: error, origin },
    'sluiced crashed: an error escaped every handler; the process exits, systemd restarts it, and recovery settles the open commands by reading the controllers',
  );
});

// Signals are handled once: the first stops gracefully, a second (or a stop that overruns
// its bound) exits at once — the journal keeps whatever was in flight for recovery. The
// handlers are in place before the start begins: a stop asked for while the daemon starts
// (systemd's stop of a unit still starting) waits for the start, then stops it gracefully,
// rather than the signal's default action killing the process halfway — except during the
// journal check, which reads the whole file (tens of seconds on a large journal), and an older
// journal's upgrade: it is killed and the start ends there (StartStoppedError, exit 0), within
// TimeoutStopSec=.
let daemon: Daemon | undefined;
// An object, not a boolean: the handler sets it while the start is awaited.
const signals = { received: false };
const startStop = new AbortController();
const stop = (running: Daemon): void => {
  running.stop().then(
    () => process.exit(0),
    (error: unknown) => {
      logger.error({ err: error }, 'stop failed');
      process.exit(1);
    },
  );
};
const onSignal = (signal: NodeJS.Signals): void => {
  if (signals.received) {
    logger.warn({ signal }, 'second signal: exiting now');
    process.exit(1);
  }
  signals.received = true;
  const force = setTimeout(() => {
    logger.error({}, 'stop overran its bound: exiting now');
    process.exit(1);
  }, shutdownBoundMs + STOP_MARGIN_MS);
  force.unref();
  if (daemon === undefined) {
    logger.info(
      { signal },
      'stopping: the journal check or upgrade, if one runs, ends now; past them, once the start has finished',
    );
    startStop.abort();
    return;
  }
  logger.info({ signal }, 'stopping');
  stop(daemon);
};
process.on('SIGTERM', onSignal);
process.on('SIGINT', onSignal);
// SIGHUP reloads the TLS files (`systemctl reload sluiced`; daemon/tls-reload.ts), never the
// configuration file. Without a handler Node's default action ends the process at once. One
// asked for while the daemon starts is made once the start has finished: the files read
// then are the newest, whichever the start read.
const reload = { asked: false };
const onHangup = (): void => {
  if (signals.received) {
    logger.warn({ signal: 'SIGHUP' }, 'reload (SIGHUP) ignored: sluiced is stopping');
    return;
  }
  if (daemon === undefined) {
    reload.asked = true;
    logger.info(
      { signal: 'SIGHUP' },
      'reload (SIGHUP) asked for while starting: the TLS files are read again once the start has finished',
    );
    return;
  }
  daemon.reloadTlsFiles();
};
process.on('SIGHUP', onHangup);
// Those that came while the process loaded and read its configuration (cli.ts held them), as
// one: a reload reads the newest files, however many were asked for.
if (handOverHangups() > 0) onHangup();

logger.info({ config: configPath, pid: process.pid }, 'sluiced starting');
try {
  // Loaded only now: validating a configuration (--check, errors) needs no protocol stacks.
  const { Daemon } = await import('./daemon.js');
  daemon = await Daemon.start(config, {
    logger,
    shutdownBoundMs,
    stopSignal: startStop.signal,
    // Only with an OPC UA PLC, and only once the journal is found usable: loading node-opcua
    // takes seconds, and a start the journal refuses (read-only, in use, damaged) said so only
    // after it. Its own messages go to the JSON log rather than raw onto stdout; routed before
    // the drivers load it for use.
    beforeDrivers: async () => {
      if (Object.values(config.plcs).some((plc) => plc.protocol === 'opcua')) {
        const { routeOpcuaMessages } = await import('./opcua-messages.js');
        routeOpcuaMessages(logger);
      }
    },
  });
} catch (error) {
  if (error instanceof ConfigError) {
    process.stderr.write(`sluiced: ${error.message}\n`);
    process.exit(2);
  }
  if (error instanceof StartStoppedError) {
    logger.info({ reason: error.message }, 'sluiced stopped during its start');
    process.exit(0);
  }
  // A journal damaged, unreadable (the disk fails reads of it), not a journal, or of a newer
  // Sluice stays so: exit 3, which the unit does not restart on (each start read the whole file
  // again, every 2 s, for ever: a start takes longer than the unit's burst window, so systemd's
  // start limit never stopped it).
  const lasting = error instanceof JournalDamagedError || error instanceof JournalVersionError;
  logger.fatal(
    { err: error },
    lasting
      ? 'sluiced could not start, and a restart cannot mend it: an operator must act'
      : 'sluiced could not start',
  );
  process.exit(lasting ? 3 : 1);
}
if (signals.received) stop(daemon);
else if (reload.asked) daemon.reloadTlsFiles();
