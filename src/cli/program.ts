import { Argument, Command, InvalidArgumentError, Option } from 'commander';
import { ACTIONS, COMMAND_STATES } from '../core/command.js';
import { CliContext, DEFAULT_CONFIG, type GlobalOptions, type Io } from './context.js';
import { runClock, runDevices, runHealth } from './daemon-views.js';
import { parseDuration } from './durations.js';
import { CliError, type ExitCode } from './errors.js';
import { runList } from './list.js';
import { runReverify, runResolve } from './operator.js';
import { runSend } from './send.js';
import { runShow } from './show.js';
import { runStuck } from './stuck.js';

/** The command line of sluicectl: every subcommand, its options, help and examples. */

const EXIT_CODES = `
Exit codes:
  0  fine
  1  error: journal or daemon unreachable, refused, not ready, command not confirmed (send)
  2  usage: unknown option or subcommand, bad value, missing --reason, ambiguous key
  3  stuck: 'stuck' listed open commands
  130, 143  send interrupted (Ctrl-C, SIGTERM): its key and a safe retry on stderr`;

const FILES = `
Files and environment:
  --config FILE, SLUICE_CONFIG   the daemon's configuration (default ${DEFAULT_CONFIG})
  --journal PATH                 the journal, read-only (default: journal.path, {stateDir}/journal.db)
  admin.socket, admin.tokenFile  the admin endpoint (default {stateDir}/admin.sock, admin.token)
  NO_COLOR, --no-color           no colour (colour is only used on a terminal anyway)
  --check-within DURATION,       time list, stuck and show may check the journal for damaged
    SLUICECTL_CHECK_WITHIN       pages (default 2s; past it the check is stopped and said so)
  SLUICE_TOKEN                   bearer token for 'send --via https'
Manual: docs/sluicectl.md`;

function example(...lines: string[]): string {
  return `\nExample:\n${lines.map((l) => `  $ ${l}`).join('\n')}\n`;
}

function duration(value: string): number {
  return parseDuration(value);
}

/** The longest --wait: a command lives at most a day (ttlMs), so a longer wait waits for nothing. */
const MAX_WAIT_MS = 86_400_000;

function waitDuration(value: string): number {
  const ms = parseDuration(value);
  // Past 2^31-1 ms Node's timers fire at once (TimeoutOverflowWarning): the run would give up
  // as it began.
  if (ms > MAX_WAIT_MS) {
    throw new InvalidArgumentError(`"${value}" is longer than a day, the longest a command lives`);
  }
  return ms;
}

function positiveInt(value: string): number {
  if (!/^\d+$/.test(value) || Number(value) < 1) {
    throw new InvalidArgumentError(`"${value}" is not a positive whole number`);
  }
  // Past 2^53 a number is no longer whole in JavaScript, and SQLite refused the LIMIT it made
  // ("cannot read the journal: datatype mismatch", as though the journal were at fault).
  if (!Number.isSafeInteger(Number(value) + 1)) {
    throw new InvalidArgumentError(
      `"${value}" is too large (at most ${Number.MAX_SAFE_INTEGER - 1})`,
    );
  }
  return Number(value);
}

function percent(value: string): number {
  const n = Number(value);
  if (value.trim() === '' || !Number.isFinite(n) || n < 0 || n > 100) {
    throw new InvalidArgumentError(`"${value}" is not a position from 0 to 100 (percent)`);
  }
  return n;
}

export function buildProgram(io: Io, result: { code: number }): Command {
  const program = new Command()
    .name('sluicectl')
    .description(
      'Sluice operator CLI: find, explain and settle stuck commands (SPEC §7). ' +
        'Reads the journal read-only beside the running daemon; reverify and resolve go through ' +
        "the daemon's admin endpoint, so the daemon stays the journal's only writer.",
    )
    .option(
      '--config <file>',
      `configuration file (default: SLUICE_CONFIG, else ${DEFAULT_CONFIG})`,
    )
    .option('--journal <path>', 'journal file to read (default: from the configuration)')
    .option('--json', 'machine output: one JSON document with the same fields as the table')
    .addOption(
      new Option(
        '--check-within <duration>',
        'how long list, stuck and a show that finds nothing may check the whole journal file for damaged pages (default: SLUICECTL_CHECK_WITHIN, else 2s)',
      ).argParser(duration),
    )
    .option('--no-color', 'no colour (also NO_COLOR; colour is only used on a terminal)')
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      // Usage errors are said as every other error is (docs/sluicectl.md): one line starting
      // "sluicectl:", which a script can look for; commander's own begin "error:".
      outputError: (s, write) => {
        write(s.replace(/^error: /, 'sluicectl: '));
      },
    })
    .showHelpAfterError("(see 'sluicectl --help')")
    .exitOverride()
    .addHelpText('after', `${EXIT_CODES}\n${FILES}\n`);

  const run =
    <A extends unknown[]>(fn: (ctx: CliContext, ...args: A) => ExitCode | Promise<ExitCode>) =>
    async (...args: A): Promise<void> => {
      const ctx = new CliContext(program.opts<GlobalOptions>(), io);
      try {
        result.code = await fn(ctx, ...args);
      } catch (error) {
        // A path it names may be under a folder taken for the unit's (CliContext.explained).
        if (error instanceof CliError) error.message = ctx.explained(error.message);
        throw error;
      }
    };

  program
    .command('stuck')
    .description(
      'open commands older than --older-than, oldest first; those past their deadline plus ' +
        "their device's confirm timeout (or a recovery take-up's or a stop pause's end) are marked STUCK, with that bound (SPEC §2). Exit 3 when any is listed.",
    )
    .addOption(
      new Option('--older-than <duration>', 'only commands accepted at least this long ago')
        .argParser(duration)
        .default(30_000, '30s'),
    )
    .addHelpText(
      'after',
      example(
        'sluicectl stuck',
        'sluicectl stuck --older-than 5m --json   # for monitoring: exit 3 when any',
      ),
    )
    .action(run((ctx, opts: { olderThan: number }) => runStuck(ctx, opts.olderThan)));

  program
    .command('list')
    .description('commands in the journal, newest first')
    .option('--device <id>', 'only this device')
    .addOption(new Option('--state <state>', 'only this state').choices([...COMMAND_STATES]))
    .option('--since <duration>', 'only commands accepted within this long (e.g. 1h)', duration)
    .option('--limit <n>', 'at most this many', positiveInt, 100)
    .addHelpText(
      'after',
      example(
        'sluicectl list --device inlet-valve --since 1h',
        'sluicectl list --state failed --limit 20',
      ),
    )
    .action(
      run((ctx, opts: { device?: string; state?: string; since?: number; limit: number }) =>
        runList(ctx, opts),
      ),
    );

  program
    .command('show')
    .description(
      'the whole story of one command: received (intake, identity), duplicates, freshness and ' +
        'clock checks, dispatch with its sequence number, readbacks, operator actions, outcome, ' +
        'the full history and the stored result',
    )
    .argument('<key>', 'the Idempotency-Key')
    .option('--scope <identity>', 'the identity the key belongs to, when several used it')
    .addHelpText('after', example('sluicectl show 5f0c6f5e-1d2a-4d0e-9a57-0c1f3a7e2b10'))
    .action(run((ctx, key: string, opts: { scope?: string }) => runShow(ctx, key, opts.scope)));

  program
    .command('devices')
    .description(
      'every device as the daemon mirrors it: state, position, readback age, controller ' +
        'clock skew, connectivity, queue (admin endpoint)',
    )
    .addHelpText('after', example('sluicectl devices', 'sluicectl devices --json'))
    .action(run((ctx) => runDevices(ctx)));

  program
    .command('clock')
    .description(
      "the gateway clock's sync (PTP/chrony), the clock policy and each controller's skew",
    )
    .addHelpText('after', example('sluicectl clock'))
    .action(run((ctx) => runClock(ctx)));

  program
    .command('health')
    .description("the daemon's readiness, check by check (as /readyz). Exit 1 when not ready.")
    .addHelpText('after', example('sluicectl health && echo ready'))
    .action(run((ctx) => runHealth(ctx)));

  program
    .command('reverify')
    .description(
      'a fresh readback of the device, judged against the open command (never a write); ' +
        'settles it when the readback proves the outcome, else it stays open',
    )
    .argument('<key>', 'the Idempotency-Key')
    .option('--scope <identity>', 'the identity the key belongs to, when several used it')
    .addHelpText('after', example('sluicectl reverify 5f0c6f5e-1d2a-4d0e-9a57-0c1f3a7e2b10'))
    .action(run((ctx, key: string, opts: { scope?: string }) => runReverify(ctx, key, opts.scope)));

  program
    .command('resolve')
    .description(
      'end an open command failed RESOLVED_BY_OPERATOR, with your reason, recorded with who ' +
        'you are (SUDO_USER or USER @ host) in its history. Nothing is written to the controller.',
    )
    .argument('<key>', 'the Idempotency-Key')
    .addOption(
      new Option('--as <state>', 'the terminal state').choices(['failed']).makeOptionMandatory(),
    )
    .option('--reason <text>', 'why (required, 1-500 characters)')
    .option('--scope <identity>', 'the identity the key belongs to, when several used it')
    .addHelpText(
      'after',
      example(
        // One line: an example is copied into a shell as printed.
        'sudo sluicectl resolve 5f0c6f5e-1d2a-4d0e-9a57-0c1f3a7e2b10 --as failed ' +
          '--reason "valve checked by hand: closed, actuator replaced (WO 4711)"',
      ),
    )
    .action(
      run((ctx, key: string, opts: { as: string; reason?: string; scope?: string }) =>
        runResolve(ctx, key, opts),
      ),
    );

  program
    .command('send')
    .description(
      'send a command by hand over HTTPS or MQTT with an Idempotency-Key (a new UUID unless ' +
        '--key), wait for its result and print it. Rerun with the same --key: the stored result ' +
        'comes back marked REPLAYED and nothing moves. Exit 0 when confirmed, 1 otherwise.',
    )
    .argument('<device>', 'device id')
    .addArgument(new Argument('<action>', 'what to do').choices([...ACTIONS]))
    .option('--position <percent>', 'setpoint for move, 0-100', percent)
    .option('--key <key>', 'the Idempotency-Key (default: a new UUID)')
    .addOption(
      new Option('--via <intake>', 'which intake carries it')
        .choices(['https', 'mqtt'])
        .default('https'),
    )
    .addOption(
      new Option('--wait <duration>', 'how long to wait for the result (at most 1d)')
        .argParser(waitDuration)
        .default(10_000, '10s'),
    )
    .option(
      '--issued-at <time>',
      '"now" or RFC 3339 (default: the original on a rerun; now over MQTT; none over HTTPS)',
    )
    .option('--ttl <duration>', "time to live (default: the device profile's)", duration)
    .option('--token-file <file>', 'HTTPS bearer token file (or SLUICE_TOKEN)')
    .option('--ca <file>', "CA to trust for HTTPS (default: the configuration's https.certFile)")
    .option('--mqtt-username <name>', 'MQTT username')
    .option('--mqtt-password-file <file>', 'MQTT password file')
    .option(
      '--mqtt-cert <file>',
      'MQTT client certificate, for a broker that wants one (with --mqtt-key)',
    )
    .option('--mqtt-key <file>', "the client certificate's private key (with --mqtt-cert)")
    .addHelpText(
      'after',
      example(
        'sluicectl send inlet-valve open',
        'sluicectl send dosing-actuator move --position 40 --via mqtt --wait 30s',
        'sluicectl send inlet-valve close --key maint-42   # run it twice: the second is REPLAYED',
      ),
    )
    .action(
      run(
        (
          ctx,
          device: string,
          action: string,
          opts: {
            position?: number;
            key?: string;
            via: 'https' | 'mqtt';
            wait: number;
            issuedAt?: string;
            ttl?: number;
            tokenFile?: string;
            ca?: string;
            mqttUsername?: string;
            mqttPasswordFile?: string;
            mqttCert?: string;
            mqttKey?: string;
          },
        ) =>
          runSend(ctx, device, action, {
            via: opts.via,
            waitMs: opts.wait,
            ...(opts.position === undefined ? {} : { position: opts.position }),
            ...(opts.key === undefined ? {} : { key: opts.key }),
            ...(opts.issuedAt === undefined ? {} : { issuedAt: opts.issuedAt }),
            ...(opts.ttl === undefined ? {} : { ttlMs: opts.ttl }),
            ...(opts.tokenFile === undefined ? {} : { tokenFile: opts.tokenFile }),
            ...(opts.ca === undefined ? {} : { ca: opts.ca }),
            ...(opts.mqttUsername === undefined ? {} : { mqttUsername: opts.mqttUsername }),
            ...(opts.mqttPasswordFile === undefined
              ? {}
              : { mqttPasswordFile: opts.mqttPasswordFile }),
            ...(opts.mqttCert === undefined ? {} : { mqttCert: opts.mqttCert }),
            ...(opts.mqttKey === undefined ? {} : { mqttKey: opts.mqttKey }),
          }),
      ),
    );

  // docs/sluicectl.md promises the exit codes in `sluicectl COMMAND --help` too: a script's
  // author reads the subcommand's help, and 3 (stuck) and 1 (health not ready) are what it
  // tests.
  for (const command of program.commands)
    command.addHelpText('after', `${EXIT_CODES.trimStart()}\n`);
  return program;
}
