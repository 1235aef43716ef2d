import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pino } from 'pino';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import type { Plant } from '../../simulators/plant.js';
import { seedOrphan, startModbusPlant, writeDaemonSite } from '../helpers/daemon-site.js';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import { SUBCOMMANDS, sluicectl } from './helpers.js';

/**
 * Every example sluicectl prints in a subcommand's --help, run verbatim by a shell (sluicectl on
 * the PATH, as an install puts it, the configuration from SLUICE_CONFIG) against a running
 * daemon and its journal, with its effect checked: what an operator who copies it sees, and
 * for `resolve` the journal itself. The examples name a command key and a device; the journal
 * holds that command (on a valve since removed from the configuration, so that it is stuck and
 * only an operator can settle it), and the plant another valve. `send` is left out: its examples
 * reach an intake with a token (test/cli/sluicectl-daemon.test.ts runs send).
 */

const EXAMPLE_KEY = '5f0c6f5e-1d2a-4d0e-9a57-0c1f3a7e2b10';

let plant: Plant;
let daemon: Daemon;
let dir: string;
let cleanup: () => void;
let configPath: string;
let journalPath: string;
let bin: string;

interface ShellRun {
  readonly code: number;
  readonly stdout: string;
  readonly stderr: string;
}

/** One example as a shell runs it, pasted from --help (an operator on the gateway, via sudo). */
function shell(example: string): Promise<ShellRun> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: `${bin}:${process.env.PATH ?? ''}`,
    SLUICE_CONFIG: configPath,
    SUDO_USER: 'alice',
    USER: 'root',
  };
  delete env.NO_COLOR;
  return new Promise((resolve) => {
    execFile('bash', ['-c', example], { env, timeout: 30_000 }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
      resolve({ code, stdout, stderr });
    });
  });
}

beforeAll(async () => {
  ({ dir, cleanup } = tempDir('sluice-examples-'));
  plant = await startModbusPlant({ 'outlet-valve': { profile: 'valve', base: 0, travelMs: 0 } });
  configPath = await writeDaemonSite(dir, plant, 'examples');
  journalPath = join(dir, 'state', 'journal.db');
  // The examples' command: accepted ten minutes ago for inlet-valve, a valve no longer in the
  // configuration: no worker can take it up, it is stuck until an operator settles it.
  mkdirSync(join(dir, 'state'), { recursive: true });
  seedOrphan(journalPath, Date.now(), {
    scope: 'plant',
    key: EXAMPLE_KEY,
    device: 'inlet-valve',
    intake: 'https',
  });
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
  });
  bin = join(dir, 'bin');
  mkdirSync(bin);
  writeFileSync(
    join(bin, 'sluicectl'),
    `#!/bin/sh\nexec ${[process.execPath, ...nodeArgs('src/cli/sluicectl.ts')].map((a) => `'${a}'`).join(' ')} "$@"\n`,
  );
  chmodSync(join(bin, 'sluicectl'), 0o755);
}, 60_000);

afterAll(async () => {
  await daemon.stop();
  await plant.stop();
  cleanup();
});

/** The examples of every subcommand's --help, as printed (`$ ` and a leading sudo dropped). */
async function examples(): Promise<string[]> {
  const subcommands = SUBCOMMANDS.filter((s) => s !== 'send');
  const helps = await Promise.all(subcommands.map((s) => sluicectl([s, '--help'])));
  return helps.flatMap((h) =>
    h.stdout
      .split('\n')
      .filter((l) => l.startsWith('  $ '))
      .map((l) => l.slice(4).replace(/^sudo /, '')),
  );
}

/** The example that starts with `start`; exactly one. */
function one(all: readonly string[], start: string): string {
  const found = all.filter((e) => e.startsWith(start));
  expect(found, start).toHaveLength(1);
  return found[0]!;
}

describe('the examples in sluicectl --help', () => {
  it('each runs verbatim against a running daemon and does what it shows', async () => {
    const all = await examples();
    const covered = new Set<string>();
    const run = async (example: string): Promise<ShellRun> => {
      covered.add(example);
      return shell(example);
    };

    // Found stuck: listed, and exit 3 for monitoring.
    const plain = all.find((e) => e === 'sluicectl stuck');
    expect(plain, 'sluicectl stuck').toBeDefined();
    const stuckRun = await run(plain!);
    expect(stuckRun.code, stuckRun.stderr).toBe(3);
    expect(stuckRun.stdout).toMatch(
      new RegExp(`^${EXAMPLE_KEY}\\s+plant\\s+inlet-valve\\s+close\\s+accepted`, 'm'),
    );
    const monitoring = await run(one(all, 'sluicectl stuck --older-than'));
    expect(monitoring.code, monitoring.stderr).toBe(3);
    const stuckJson = JSON.parse(monitoring.stdout) as {
      commands: { key: string; stuck: boolean }[];
    };
    expect(stuckJson.commands.map((c) => [c.key, c.stuck])).toEqual([[EXAMPLE_KEY, true]]);

    // A device's commands of the last hour.
    const byDevice = await run(one(all, 'sluicectl list --device'));
    expect(byDevice.code, byDevice.stderr).toBe(0);
    expect(byDevice.stdout).toMatch(new RegExp(`^${EXAMPLE_KEY}\\s`, 'm'));

    // One command, in full.
    const show = await run(one(all, 'sluicectl show'));
    expect(show.code, show.stderr).toBe(0);
    expect(show.stdout).toContain(EXAMPLE_KEY);
    expect(show.stdout).toMatch(/state\s+accepted/);

    // The devices and the clocks, from the admin endpoint.
    const devices = await run(all.find((e) => e === 'sluicectl devices')!);
    expect(devices.code, devices.stderr).toBe(0);
    expect(devices.stdout).toMatch(/^outlet-valve\s/m);
    const devicesJson = await run(one(all, 'sluicectl devices --json'));
    expect(devicesJson.code, devicesJson.stderr).toBe(0);
    expect(JSON.stringify(JSON.parse(devicesJson.stdout))).toContain('"outlet-valve"');
    const clock = await run(one(all, 'sluicectl clock'));
    expect(clock.code, clock.stderr).toBe(0);
    expect(clock.stdout).toContain('outlet-valve');

    // Not ready while a command is stuck: the shell's `&& echo ready` does not run.
    const health = one(all, 'sluicectl health');
    const notReady = await run(health);
    expect(notReady.code).toBe(1);
    expect(notReady.stdout).toMatch(/^commands\s+FAIL\s+1 open/m);
    expect(notReady.stdout).toMatch(/\nNOT READY \(1 check failing\)\n$/);

    // Its device is gone: a fresh readback cannot settle it, and reverify says so.
    const reverify = await run(one(all, 'sluicectl reverify'));
    expect(reverify.code, reverify.stderr).toBe(0);
    expect(reverify.stdout).toMatch(
      /^NOT SETTLED: the command stays accepted; its device "inlet-valve" is not in the configuration/,
    );

    // The operator settles it, with the reason the example gives.
    const resolveExample = one(all, 'sluicectl resolve');
    const reason = /--reason "([^"]+)"/.exec(resolveExample)?.[1];
    expect(reason, resolveExample).toBeDefined();
    const resolved = await run(resolveExample);
    expect(resolved.code, resolved.stderr).toBe(0);
    expect(resolved.stdout).toMatch(/^RESOLVED by alice@\S+: failed RESOLVED_BY_OPERATOR/);
    // Ground truth: the journal.
    const journal = SqliteJournal.open({ path: journalPath, readonly: true });
    try {
      const record = journal.get({ scope: 'plant', key: EXAMPLE_KEY });
      expect(record).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
      const history = journal.history({ scope: 'plant', key: EXAMPLE_KEY });
      expect(history.at(-1)?.detail).toContain(reason);
    } finally {
      journal.close();
    }

    // Now among the failed commands, and the gateway is ready: the shell echoes "ready".
    const failed = await run(one(all, 'sluicectl list --state failed'));
    expect(failed.code, failed.stderr).toBe(0);
    expect(failed.stdout).toMatch(new RegExp(`^${EXAMPLE_KEY}\\s.*failed`, 'm'));
    const ready = await run(health);
    expect(ready.code, ready.stderr).toBe(0);
    // sluicectl's own verdict, then the shell's echo.
    expect(ready.stdout).toMatch(/\nready\nready\n$/);

    // Every example printed was run here, and checked.
    expect(all.filter((e) => !covered.has(e))).toEqual([]);
  }, 120_000);
});
