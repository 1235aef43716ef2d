import { Command, CommanderError, Option } from 'commander';
import { ConfigError, loadConfig, type SluiceConfig } from '../config/config.js';
import { preflight, type Preflight } from '../config/preflight.js';
import { join } from 'node:path';
import { journalOutlook } from '../journal/upgrade-room.js';
import { checkRenames } from './check-renames.js';
import { checkSummary } from './check-summary.js';
import { RENAMED_DEVICES_HEADING } from './renamed-devices.js';

/**
 * The part of `sluiced` (cli.ts) before the daemon: the command line, the configuration and
 * every start-up check. It ends the run (`--check`, `--help`, a usage error, a configuration
 * the start would refuse: `exit`), or gives the start what it needs; it starts nothing and
 * creates nothing. The binary is this with the process's streams and environment, then the
 * start; kept apart from it so that it can be called without the binary's side effects.
 */

/** A stop gets this long past its bound before the process exits regardless (cli.ts). */
export const STOP_MARGIN_MS = 10_000;

export interface SluicedIo {
  readonly stdout: { write(text: string): unknown };
  readonly stderr: { write(text: string): unknown };
  readonly env: NodeJS.ProcessEnv;
}

export interface StartPlan {
  readonly exit?: undefined;
  readonly configPath: string;
  readonly config: SluiceConfig;
  readonly shutdownBoundMs: number;
}

export type Prepared = { readonly exit: number } | StartPlan;

export function prepare(argv: readonly string[], io: SluicedIo): Prepared {
  const program = new Command()
    .name('sluiced')
    .description('Sluice: keyed valve commands from MQTT and HTTPS to PLCs, confirmed by readback')
    .requiredOption('-c, --config <file>', 'configuration file (YAML)')
    .addOption(
      new Option('--log-level <level>', 'overrides log.level').choices([
        'fatal',
        'error',
        'warn',
        'info',
        'debug',
        'trace',
      ]),
    )
    .option('--check', 'run every start-up check, create nothing, print what would run, and exit')
    .option('--shutdown-bound <ms>', 'time in-flight commands get to settle at SIGTERM', '10000')
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      // Said as the configuration's errors are: one line starting "sluiced:", not "error:".
      outputError: (s, write) => {
        write(s.replace(/^error: /, 'sluiced: '));
      },
    })
    // commander's own exit (--help, a usage error), made by the caller.
    .exitOverride();
  try {
    program.parse(argv, { from: 'user' });
  } catch (error) {
    // A command line commander refuses (an unknown flag, a --log-level not among its choices,
    // no --config) is an invalid configuration, exit 2, as SLUICE_LOG_LEVEL=verbose is: with
    // commander's own 1, a typo in a drop-in's ExecStart= had the unit start it again every
    // 2 s for ever (RestartPreventExitStatus=2 3). --help and --version exit 0.
    if (error instanceof CommanderError) return { exit: error.exitCode === 0 ? 0 : 2 };
    throw error;
  }
  const opts = program.opts<{
    config: string;
    logLevel?: string;
    check?: boolean;
    shutdownBound: string;
  }>();

  // Whole milliseconds, checked before anything else (exit 2: the unit does not restart on it).
  // A value such as `10s` or `abc` was taken as NaN, and so was the force timer's delay, which
  // Node fires at once: every SIGTERM then ended the process with exit 1 ("stop overran its
  // bound") before any in-flight command could settle or have its result published. A bound
  // past a timer's range (2^31 - 1 ms with the margin) fires at once the same way.
  const shutdownBoundMs = /^\d+$/.test(opts.shutdownBound) ? Number(opts.shutdownBound) : NaN;
  if (!(shutdownBoundMs <= 2 ** 31 - 1 - STOP_MARGIN_MS)) {
    io.stderr.write(
      `sluiced: --shutdown-bound ${JSON.stringify(opts.shutdownBound)}: expected whole milliseconds from 0 to ${2 ** 31 - 1 - STOP_MARGIN_MS} (e.g. 10000 for 10 s)\n`,
    );
    return { exit: 2 };
  }

  let config: SluiceConfig;
  let checked: Preflight;
  try {
    config = loadConfig(opts.config, {
      env: io.env,
      overrides: opts.logLevel === undefined ? {} : { log: { level: opts.logLevel } },
    });
    checked = preflight(config, opts.config);
  } catch (error) {
    if (error instanceof ConfigError) {
      io.stderr.write(`sluiced: ${error.message}\n`);
      return { exit: 2 };
    }
    throw error;
  }
  if (opts.check === true) {
    // What the start will make of the journal: an upgrade it has no room for, or a journal of
    // a newer Sluice, fails the start (exit 1, exit 3) as surely as a bad configuration, so
    // the check fails on them too: an operator checks before restarting on a new version.
    const journalPath = config.journal.path ?? join(config.stateDir, 'journal.db');
    const journal = journalOutlook(journalPath);
    if (journal.kind === 'upgrade' && journal.refusal !== null) {
      io.stderr.write(`sluiced: ${journal.refusal}: the start would refuse it (exit 1)\n`);
      return { exit: 1 };
    }
    if (journal.kind === 'newer') {
      io.stderr.write(
        `sluiced: the journal ${journalPath} is of schema version ${journal.version}, written by a newer Sluice: this one cannot read it, and the start would refuse it (exit 3)\n`,
      );
      return { exit: 3 };
    }
    // The start's checks against the journal's records: a device renamed with open commands
    // of its former id is refused (exit 2) as at start; an identity renamed is warned of.
    const renames = checkRenames(config, journalPath);
    if (renames.errors.length > 0) {
      const refusal = new ConfigError(RENAMED_DEVICES_HEADING, renames.errors);
      io.stderr.write(
        [`sluiced: ${refusal.message}`, ...renames.lines.map((l) => `  ${l}`), ''].join('\n'),
      );
      return { exit: 2 };
    }
    io.stdout.write(
      [
        `sluiced: ${opts.config}: configuration is valid (nothing was created)`,
        '',
        ...checkSummary(config, checked, new Date(), journal),
        ...renames.lines.map((text, i) => `  ${(i === 0 ? 'renames' : '').padEnd(9)} ${text}`),
        '',
      ].join('\n'),
    );
    return { exit: 0 };
  }
  return { configPath: opts.config, config, shutdownBoundMs };
}
