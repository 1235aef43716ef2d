import { dirname, isAbsolute, join, resolve } from 'node:path';
import { ConfigError, loadConfig, type SluiceConfig } from '../config/config.js';
import { UNREACHABLE_GRACE_MS, type DeviceTiming } from '../core/open-commands.js';
import type { DeviceProfile } from '../core/profile.js';
import { packageRoot } from '../package-root.js';
import { loadProfiles } from '../profiles/load.js';
import { daemonListening } from './admin-client.js';
import { parseDuration } from './durations.js';
import { CliError, UsageError, messageOf } from './errors.js';
import { DEFAULT_CHECK_BUDGET_MS } from './journal-check.js';
import { journalLockHeld } from './journal-holder.js';
import { lookUp } from './paths.js';
import { Style } from './table.js';
import { UNIT_FOLDERS, unitEnvironment, type UnitFolder } from './unit-environment.js';

/**
 * What every subcommand shares: the configuration (read once, only when a subcommand needs
 * it), where the journal and the admin endpoint are, and how to print. Built from the global
 * options; nothing here is a global singleton.
 */

export const DEFAULT_CONFIG = '/etc/sluice/sluice.yaml';

export interface GlobalOptions {
  readonly config?: string;
  readonly journal?: string;
  readonly json?: boolean;
  /** commander's `--no-color`: false when given. */
  readonly color?: boolean;
  /** `--check-within`: how long the check of the whole journal file may take (ms). */
  readonly checkWithin?: number;
}

export interface Io {
  readonly stdout: { write(text: string): unknown; isTTY?: boolean };
  readonly stderr: { write(text: string): unknown };
  readonly env: NodeJS.ProcessEnv;
  readonly now: () => number;
  /**
   * Calls `say` when the operator interrupts the run (Ctrl-C, SIGTERM) before it ends, then
   * ends the process (exit 128 + the signal's number); the returned function stops listening.
   * The binary's; absent where there is no process to interrupt (main called in a test).
   */
  readonly onInterrupt?: (say: () => void) => () => void;
}

/** The `admin` section docs/admin-api.md adds; read structurally so older configs still load. */
interface AdminSection {
  readonly enabled?: boolean;
  readonly socket?: string;
  readonly tokenFile?: string;
}

export class CliContext {
  readonly io: Io;
  readonly json: boolean;
  readonly style: Style;
  readonly configPath: string;
  /** Given with --config or SLUICE_CONFIG (a missing file is then an error, not a fallback). */
  readonly configExplicit: boolean;
  private readonly journalOverride: string | undefined;
  private readonly checkWithin: number | undefined;
  private loaded: SluiceConfig | null | undefined;
  /** The unit's folders the configuration's paths were taken under, their variables unset here. */
  private readonly taken = new Map<string, UnitFolder>();

  constructor(options: GlobalOptions, io: Io) {
    this.io = io;
    this.json = options.json === true;
    this.style = Style.for(io.stdout, options.color === false, io.env);
    const fromEnv = io.env.SLUICE_CONFIG;
    this.configExplicit = options.config !== undefined || (fromEnv !== undefined && fromEnv !== '');
    this.configPath =
      options.config ?? (fromEnv === undefined || fromEnv === '' ? DEFAULT_CONFIG : fromEnv);
    this.journalOverride = options.journal;
    this.checkWithin = options.checkWithin;
  }

  /**
   * How long `list`, `stuck` and a `show` that finds nothing may spend checking the whole
   * journal file for damaged pages: --check-within, else SLUICECTL_CHECK_WITHIN, else 2 s.
   */
  checkBudgetMs(): number {
    if (this.checkWithin !== undefined) return this.checkWithin;
    const fromEnv = this.io.env.SLUICECTL_CHECK_WITHIN;
    if (fromEnv === undefined || fromEnv === '') return DEFAULT_CHECK_BUDGET_MS;
    try {
      return parseDuration(fromEnv);
    } catch (error) {
      throw new UsageError(`SLUICECTL_CHECK_WITHIN: ${messageOf(error)}`);
    }
  }

  now(): number {
    return this.io.now();
  }

  out(text: string): void {
    this.io.stdout.write(text);
  }

  /** Machine output: one JSON document, the same fields as the table. */
  outJson(value: unknown): void {
    // JSON.stringify escapes C0 but leaves DEL and C1 raw (0x9b is a CSI on some terminals):
    // escaped here the JSON way, which the stream's guard (terminal-text.ts) then leaves alone.
    const json = JSON.stringify(value, null, 2).replace(
      /[\x7f-\x9f]/g,
      (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
    );
    this.io.stdout.write(`${json}\n`);
  }

  warn(text: string): void {
    this.io.stderr.write(`sluicectl: ${text}\n`);
  }

  /** The configuration; an error (exit 1) when it cannot be read or is invalid. */
  config(): SluiceConfig {
    const config = this.loadConfig(true);
    if (config === null) throw new CliError(`no configuration at ${this.configPath}`);
    return config;
  }

  /**
   * The configuration when there is one. With `--journal` and no explicit configuration, a
   * missing default file is not an error: the journal commands work from the journal alone.
   */
  optionalConfig(): SluiceConfig | null {
    return this.loadConfig(this.configExplicit || this.journalOverride === undefined);
  }

  private loadConfig(required: boolean): SluiceConfig | null {
    if (this.loaded !== undefined) return this.loaded;
    const found = lookUp(this.configPath);
    if (found.kind === 'denied' && required) {
      throw new CliError(
        `cannot read the configuration ${this.configPath}: permission denied (its folder is closed to this user); run as root or the daemon's user (sudo)`,
      );
    }
    if (found.kind === 'missing' || found.kind === 'denied') {
      if (!required) {
        this.loaded = null;
        return null;
      }
      throw new CliError(
        `no configuration at ${this.configPath}: give --config FILE or set SLUICE_CONFIG` +
          (this.journalOverride === undefined
            ? ' (or read a journal directly with --journal PATH)'
            : ''),
      );
    }
    try {
      // The site file of a systemd install names its secrets under ${CREDENTIALS_DIRECTORY},
      // which only the unit has: sluicectl reads none of them. It may name its state folder
      // and admin socket under ${STATE_DIRECTORY} and ${RUNTIME_DIRECTORY}: unset here, they are
      // taken for the folders the shipped unit gives the daemon. The unit's environment file
      // overrides the site file for the daemon, and so for sluicectl; a SLUICE_* variable the
      // operator sets is theirs and overrides it in turn.
      this.loaded = loadConfig(this.configPath, {
        env: { ...unitEnvironment(this.configPath), ...this.io.env },
        unitDirectories: 'optional',
        unsetUnitDirectory: (name) => {
          const unit = UNIT_FOLDERS.find((u) => u.variable === name);
          if (unit !== undefined) this.taken.set(name, unit);
          return unit?.folder;
        },
      });
    } catch (error) {
      if (error instanceof ConfigError) {
        const hint = this.configExplicit ? '' : ' (give --config FILE or SLUICE_CONFIG)';
        throw new CliError(`${error.message}${hint}`);
      }
      throw new CliError(`cannot read the configuration ${this.configPath}: ${messageOf(error)}`);
    }
    return this.loaded;
  }

  /** --journal, else the configuration's journal.path (default {stateDir}/journal.db). */
  journalPath(): string {
    if (this.journalOverride !== undefined) return resolve(this.journalOverride);
    const config = this.config();
    return expanded(
      config.journal.path ?? join(config.stateDir, 'journal.db'),
      'the journal',
      ' (or give --journal PATH)',
    );
  }

  /** The admin endpoint's socket and token file (docs/admin-api.md), from the configuration. */
  adminEndpoint(): { socket: string; tokenFile: string } {
    const config = this.config();
    const admin = (config as { admin?: AdminSection }).admin;
    if (admin?.enabled === false) {
      throw new CliError(
        `the daemon's admin endpoint is turned off (admin.enabled: false in ${this.configPath})`,
      );
    }
    const base = dirname(resolve(this.configPath));
    const abs = (p: string): string => (isAbsolute(p) ? p : resolve(base, p));
    return {
      socket: abs(
        expanded(
          admin?.socket === undefined ? join(config.stateDir, 'admin.sock') : admin.socket,
          'the admin socket',
        ),
      ),
      tokenFile: abs(
        expanded(
          admin?.tokenFile === undefined ? join(config.stateDir, 'admin.token') : admin.tokenFile,
          'the admin token',
        ),
      ),
    };
  }

  /**
   * `text` (an error or a warning naming a path) with the folders sluicectl took for the
   * unit's in it, their variables unset here: "no journal at /var/lib/sluice/journal.db" read
   * alone of a site whose stateDir is ${STATE_DIRECTORY} does not say where the folder came
   * from, nor what to set when the daemon's unit has another.
   */
  explained(text: string): string {
    const notes = [...this.taken.values()]
      .filter((unit) => text.includes(unit.folder))
      .map(
        (unit) =>
          `${unit.variable} is not set here: sluicectl took \${${unit.variable}} for ${unit.folder}, the folder of the shipped unit's ${unit.setting}; set ${unit.variable} if the daemon's unit has another`,
      );
    return notes.length === 0 ? text : `${text} (${notes.join('; ')})`;
  }

  /**
   * Said beside open commands read from the journal when no daemon runs with this
   * configuration: they read as being settled (`no` in STUCK, "not settled yet") while nothing
   * settles them, and the `reverify` and `resolve` the output suggests would fail. Silent when
   * the daemon answers, when that cannot be told, without a configuration (no socket known),
   * and for a journal named by --journal (perhaps not the daemon's).
   */
  async warnIfDaemonAbsent(): Promise<void> {
    if (this.journalOverride !== undefined || this.optionalConfig() === null) return;
    let socket: string;
    try {
      socket = this.adminEndpoint().socket;
    } catch {
      return;
    }
    if ((await daemonListening(socket)) !== 'absent') return;
    if (journalLockHeld(this.journalPath()) === true) {
      // A daemon holds the journal: starting (its endpoint not open yet while it takes up the
      // commands its journal held open) or stopping (its endpoint closed while the commands in
      // flight settle). "Not running: nothing is being settled" would be false of both.
      this.warn(
        this.explained(
          `sluiced holds the journal but nothing listens at ${socket} yet or any more: it is starting ` +
            'or stopping, and settles the open commands itself, by reading their devices. ' +
            'reverify and resolve need its admin endpoint: try again in a moment (systemctl status sluiced)',
        ),
      );
      return;
    }
    this.warn(
      this.explained(
        `sluiced is not running (nothing listens at ${socket}): no open command is being settled; ` +
          'when it starts it takes each one up by reading its device, never by writing it again. ' +
          'reverify and resolve need it running (systemctl status sluiced)',
      ),
    );
  }

  /** The profile the configuration gives `device`; null without a configuration or device. */
  deviceProfile(device: string): DeviceProfile | null {
    const config = this.optionalConfig();
    const named = config?.devices[device]?.profile;
    if (config === null || named === undefined) return null;
    const profiles = loadProfiles(profilesFolder(config));
    return profiles.get(named) ?? null;
  }

  /**
   * Each configured device's confirm timeout (its profile's) and unreachable grace (its PLC's,
   * else UNREACHABLE_GRACE_MS), for the stuck rule: open past its deadline plus the confirm
   * timeout (SPEC §2), or past the window of a take-up, which reads for at least the grace —
   * the lengths the daemon's workers use, so that both judge alike. Null without a
   * configuration: every command is then judged from its deadline alone, as the daemon judges
   * a device it no longer has.
   */
  deviceTimings(): ReadonlyMap<string, DeviceTiming> | null {
    const config = this.optionalConfig();
    if (config === null) return null;
    const profiles = loadProfiles(profilesFolder(config));
    const timings = new Map<string, DeviceTiming>();
    for (const [id, device] of Object.entries(config.devices)) {
      const profile = profiles.get(device.profile);
      if (profile === undefined) continue;
      timings.set(id, {
        confirmTimeoutMs: profile.timing.confirmTimeoutMs,
        unreachableGraceMs: config.plcs[device.plc]?.unreachableGraceMs ?? UNREACHABLE_GRACE_MS,
        plc: device.plc,
      });
    }
    return timings;
  }
}

/** profilesDir, else the bundled profiles. */
function profilesFolder(config: SluiceConfig): string {
  return config.profilesDir === undefined
    ? join(packageRoot(), 'devices', 'profiles')
    : expanded(config.profilesDir, 'profilesDir');
}

/**
 * A path sluicectl opens, from the configuration. One that still starts with `${NAME}` names a
 * folder of the daemon's unit that is not set here and that the shipped unit does not make
 * (UNIT_FOLDERS): refused, naming the variable, never taken for a folder of that name under
 * the working directory.
 */
function expanded(path: string, what: string, hint = ''): string {
  const name = /^\$\{([A-Z_]+)\}/.exec(path)?.[1];
  if (name === undefined) return path;
  throw new CliError(
    `${what} ${path}: ${name} is not set here, and the shipped unit (systemd/sluiced.service) makes no such folder: set ${name} to the folder the daemon's unit has${hint}`,
  );
}
