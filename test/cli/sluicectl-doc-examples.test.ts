import { execFile } from 'node:child_process';
import { chmodSync, mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { pino } from 'pino';
import { parse, stringify } from 'yaml';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/config.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { startPlant, type Plant } from '../../simulators/plant.js';
import { seedOrphan } from '../helpers/daemon-site.js';
import { nodeArgs } from '../helpers/entry.js';
import { loopbackCertificate } from '../helpers/loopback-https.js';
import { ROOT, tempDir } from '../helpers/fixtures.js';
import {
  freePort,
  mosquittoAvailable,
  startMosquitto,
  until,
  type Mosquitto,
} from '../helpers/mosquitto.js';
import { inventoryFor } from '../helpers/plant-inventory.js';
import { untilFirstReadbacks } from './helpers.js';

/**
 * Every sluicectl command line of docs/sluicectl.md (its `$ ` lines, a continued line included)
 * and of the README's sluicectl block, run verbatim by a shell against a running daemon, with
 * sluice-sim, Mosquitto and the journal for ground truth (test/cli/sluicectl-examples.test.ts
 * does the same for the examples of --help). The site has what the examples name: the valves
 * inlet-valve and held-valve and the actuator dosing-actuator, an identity with a tokenFile
 * (`send` finds its token so), the commands k-confirmed and 5f0c6f5e-… sent before, held-1 held
 * by a valve stuck in travel, and orphan-1 and KEY on a valve since removed from the
 * configuration (the README's `resolve KEY` runs verbatim).
 */

const real = mosquittoAvailable();
const TOKEN = 'doc-examples-token';
const README_SHOW_KEY = '5f0c6f5e-1d2a-4d0e-9a57-0c1f3a7e2b10';
/**
 * held-1 stays open (dispatched, its valve stuck in travel) until the test frees the valve at
 * its reverify: neither its confirm timeout nor the simulated travel fault may end it first, so
 * both are longer than the set-up and the case may take (90 s and 180 s). With 45 s, under
 * load, the examples before the reverify (about 7 s each as processes, at a load of ~15) took
 * 57 s, held-1 had failed READBACK_TIMEOUT, and the reverify found it settled.
 */
const HELD_MS = 600_000;

let plant: Plant;
let broker: Mosquitto;
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

/**
 * A command line as a shell runs it: sluicectl on the PATH, the site from SLUICE_CONFIG, as
 * alice through sudo (a leading `sudo` is dropped: the test already runs as the daemon's user).
 */
function shell(line: string): Promise<ShellRun> {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    PATH: `${bin}:${process.env.PATH ?? ''}`,
    SLUICE_CONFIG: configPath,
    SUDO_USER: 'alice',
    USER: 'root',
  };
  delete env.NO_COLOR;
  delete env.SLUICE_TOKEN;
  return new Promise((resolve) => {
    execFile(
      'bash',
      ['-c', line.replace(/^sudo /, '')],
      { env, timeout: 60_000 },
      (error, stdout, stderr) => {
        const code = error === null ? 0 : typeof error.code === 'number' ? error.code : -1;
        resolve({ code, stdout, stderr });
      },
    );
  });
}

/** The `$ ` lines of the manual's code blocks, a line ending in `\` joined with the next. */
function manualExamples(): string[] {
  const lines = readFileSync(join(ROOT, 'docs', 'sluicectl.md'), 'utf8').split('\n');
  const found: string[] = [];
  let inBlock = false;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (line.startsWith('```')) {
      inBlock = !inBlock;
      continue;
    }
    if (!inBlock || !line.startsWith('$ ')) continue;
    let example = line.slice(2);
    while (example.endsWith('\\') && i + 1 < lines.length) example += `\n${lines[++i]!}`;
    found.push(example);
  }
  return found;
}

/** The sluicectl lines of the README's block that introduces the CLI. */
function readmeExamples(): string[] {
  const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
  const block = /The operator CLI `sluicectl`[\s\S]*?```sh\n([\s\S]*?)```/.exec(readme)?.[1];
  expect(block, 'the README block on sluicectl').toBeDefined();
  return block!.split('\n').filter((l) => /^(sudo )?sluicectl /.test(l));
}

function onFile(key: string): { state: string; code: string | null; detail: string | null } {
  const journal = SqliteJournal.open({ path: journalPath, readonly: true });
  try {
    const record = journal.get({ scope: 'plant', key });
    if (record === undefined) throw new Error(`no command ${key} in the journal`);
    return { state: record.state, code: record.code, detail: record.detail };
  } finally {
    journal.close();
  }
}

function historyOf(key: string): string[] {
  const journal = SqliteJournal.open({ path: journalPath, readonly: true });
  try {
    return journal.history({ scope: 'plant', key }).map((e) => e.detail);
  } finally {
    journal.close();
  }
}

beforeAll(async () => {
  if (!real) return;
  ({ dir, cleanup } = tempDir('sluice-doc-examples-'));
  plant = await startPlant(
    {
      control: { host: '127.0.0.1', port: 0 },
      plcs: {
        mb: {
          protocol: 'modbus',
          host: '127.0.0.1',
          port: 0,
          scanMs: 5,
          devices: {
            'inlet-valve': { profile: 'valve', base: 0, travelMs: 200 },
            // Stuck in travel while the examples look at held-1: no travel fault meanwhile (see
            // HELD_MS).
            'held-valve': { profile: 'valve', base: 100, travelMs: 200, travelTimeoutMs: HELD_MS },
            'dosing-actuator': { profile: 'actuator', base: 200, travelMs: 200 },
          },
        },
      },
    },
    { ephemeralPorts: true, control: false },
  );
  broker = await startMosquitto();
  await loopbackCertificate(dir);
  writeFileSync(join(dir, 'token'), `${TOKEN}\n`, { mode: 0o600 });
  // The shipped profiles, with a confirm timeout that leaves held-1 open while it is looked at
  // (HELD_MS).
  const profilesDir = join(dir, 'profiles');
  mkdirSync(profilesDir);
  const shipped = join(ROOT, 'devices', 'profiles');
  for (const file of readdirSync(shipped).filter((f) => f.endsWith('.yaml'))) {
    const profile = parse(readFileSync(join(shipped, file), 'utf8')) as {
      timing: Record<string, number>;
    };
    profile.timing = { ...profile.timing, confirmTimeoutMs: HELD_MS, pollIntervalMs: 50 };
    writeFileSync(join(profilesDir, file), stringify(profile));
  }
  const inventory = inventoryFor(plant);
  configPath = join(dir, 'sluice.yaml');
  writeFileSync(
    configPath,
    stringify({
      gatewayId: 'docs',
      stateDir: 'state',
      profilesDir: 'profiles',
      https: {
        host: '127.0.0.1',
        port: await freePort(),
        certFile: 'cert.pem',
        keyFile: 'key.pem',
      },
      mqtt: { url: broker.url, identity: 'plant', clientId: 'sluice-doc-examples' },
      identities: { plant: { tokenFile: join(dir, 'token'), devices: ['*'] } },
      plcs: inventory.plcs,
      devices: inventory.devices,
    }),
  );
  journalPath = join(dir, 'state', 'journal.db');
  mkdirSync(join(dir, 'state'), { recursive: true });
  for (const key of ['orphan-1', 'KEY']) {
    seedOrphan(journalPath, Date.now(), {
      scope: 'plant',
      key,
      device: 'removed-valve',
      intake: 'mqtt',
    });
  }
  daemon = await Daemon.start(loadConfig(configPath, { env: {} }), {
    logger: pino({ level: 'silent' }),
    monitorIntervalMs: 200,
  });
  bin = join(dir, 'bin');
  mkdirSync(bin);
  writeFileSync(
    join(bin, 'sluicectl'),
    `#!/bin/sh\nexec ${[process.execPath, ...nodeArgs('src/cli/sluicectl.ts')].map((a) => `'${a}'`).join(' ')} "$@"\n`,
  );
  chmodSync(join(bin, 'sluicectl'), 0o755);
  await untilFirstReadbacks(daemon, ['mqtt']);
  // The commands the examples show, sent as an issuer would before them.
  for (const [key, line] of [
    ['k-confirmed', 'sluicectl send inlet-valve open --key k-confirmed'],
    [README_SHOW_KEY, `sluicectl send inlet-valve close --key ${README_SHOW_KEY}`],
  ] as const) {
    const sent = await shell(line);
    expect({ key, code: sent.code, stderr: sent.stderr }).toEqual({ key, code: 0, stderr: '' });
  }
  plant.device('held-valve').setFault({ kind: 'stuck-travel' });
  const held = await shell('sluicectl send held-valve open --key held-1 --wait 1s');
  expect(held.code).toBe(1);
  expect(held.stdout).toMatch(/^NOT SETTLED/);
}, 90_000);

afterAll(async () => {
  if (!real) return;
  await daemon.stop();
  await broker.close();
  await plant.stop();
  cleanup();
});

describe.runIf(real)('the sluicectl examples of docs/sluicectl.md and the README', () => {
  it('each runs verbatim against a running daemon and does what the text says', async () => {
    const manual = manualExamples();
    const readme = readmeExamples();
    const all = [...manual, ...readme];
    const covered = new Set<string>();
    const one = (start: string, from: readonly string[] = all): string[] => {
      const found = from.filter((e) => e.startsWith(start));
      expect(found.length, start).toBeGreaterThan(0);
      return found;
    };
    const run = async (example: string): Promise<ShellRun> => {
      covered.add(example);
      return shell(example);
    };

    // Monitoring (README): the orphans are older than 5 min, exit 3.
    for (const e of one('sluicectl stuck --older-than 5m', readme)) {
      const stuck = await run(e);
      expect(stuck.code, stuck.stderr).toBe(3);
      expect(stuck.stdout).toMatch(/^orphan-1\s+plant\s+removed-valve\s.*STUCK/m);
    }
    const stuck = await run(one('sluicectl stuck --older-than 1s', manual)[0]!);
    expect(stuck.code, stuck.stderr).toBe(3);
    expect(stuck.stdout).toMatch(/^orphan-1\s+plant\s+removed-valve\s+close\s+accepted\s.*STUCK/m);
    expect(stuck.stdout).toMatch(/^held-1\s+plant\s+held-valve\s+open\s+dispatched\s.*\sno\s/m);

    const list = await run(one('sluicectl list --device inlet-valve --since 1h')[0]!);
    expect(list.code, list.stderr).toBe(0);
    expect(list.stdout).toMatch(/^k-confirmed\s+plant\s+inlet-valve\s+open\s+confirmed\s+OK/m);
    const show = await run(one('sluicectl show k-confirmed')[0]!);
    expect(show.code, show.stderr).toBe(0);
    expect(show.stdout).toMatch(/^Command k-confirmed {2}\(scope plant\)\n/);
    expect(show.stdout).toMatch(/state\s+confirmed OK/);
    for (const e of one(`sluicectl show ${README_SHOW_KEY}`, readme)) {
      const story = await run(e);
      expect(story.code, story.stderr).toBe(0);
      expect(story.stdout).toMatch(/state\s+confirmed OK/);
    }

    const devices = await run(one('sluicectl devices')[0]!);
    expect(devices.code, devices.stderr).toBe(0);
    expect(devices.stdout).toMatch(/^held-valve\s+valve\s/m);
    const clock = await run(one('sluicectl clock')[0]!);
    expect(clock.code, clock.stderr).toBe(0);
    expect(clock.stdout).toMatch(/^Gateway clock\n/);
    const health = await run(one('sluicectl health')[0]!);
    expect(health.code).toBe(1);
    expect(health.stdout).toMatch(/^commands\s+FAIL\s.*orphan-1 on removed-valve/m);

    // reverify while the valve is still stuck; it comes free while the daemon judges it.
    let reverifyEnded: ShellRun | undefined;
    const reverifying = run(one('sluicectl reverify held-1')[0]!).then((r) => {
      reverifyEnded = r;
      return r;
    });
    // Its request in the history, or its end first (then it failed, said why, and the case
    // ends at once with it): no time of its own, as its process's start takes what the
    // machine's load makes it (up to the shell's 60 s). Its end is looked at before the
    // history: the daemon notes the request before it answers.
    await until(
      () => {
        const ended = reverifyEnded;
        if (historyOf('held-1').includes(`reverify requested by alice@${hostname()}`)) return true;
        if (ended !== undefined) {
          throw new Error(
            `sluicectl reverify held-1 ended (exit ${ended.code}) before its request was in the history (held-1: ${JSON.stringify(onFile('held-1'))}):\n${ended.stdout}${ended.stderr}`,
          );
        }
        return undefined;
      },
      90_000,
      'the reverify request in the history',
    );
    const held = plant.device('held-valve');
    held.clearFault('stuck-travel');
    const reverified = await reverifying;
    expect(reverified.code, reverified.stderr).toBe(0);
    expect(reverified.stdout).toMatch(/^SETTLED by a fresh readback: confirmed OK/);
    expect(held.counters.writesReceived).toBe(1);

    // The two resolves: the manual's, continued on a second line, and the README's.
    for (const [start, key] of [
      ['sudo sluicectl resolve orphan-1', 'orphan-1'],
      ['sudo sluicectl resolve KEY', 'KEY'],
    ] as const) {
      const example = one(start)[0]!;
      const reason = /--reason "([^"]+)"/.exec(example)?.[1];
      expect(reason, example).toBeDefined();
      const resolved = await run(example);
      expect(resolved.code, resolved.stderr).toBe(0);
      expect(resolved.stdout).toMatch(
        /^RESOLVED by alice@\S+: failed RESOLVED_BY_OPERATOR; nothing was written/,
      );
      expect(onFile(key)).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
      expect(onFile(key).detail).toContain(reason);
    }

    // send: the manual's maint-42, then the README's same line again — a replay, one write.
    const inlet = plant.device('inlet-valve');
    const writes = inlet.counters.writesReceived;
    const [maint] = one('sluicectl send inlet-valve open --key maint-42', manual);
    const sent = await run(maint!);
    expect(sent.code, sent.stderr).toBe(0);
    expect(sent.stdout).toMatch(/^CONFIRMED over https \(HTTP 200\)\n/);
    for (const e of one('sluicectl send inlet-valve open --key maint-42', readme)) {
      const again = await run(e);
      expect(again.code, again.stderr).toBe(0);
      expect(again.stdout).toMatch(
        /^REPLAYED: key maint-42 was already settled; this is its stored result over https \(HTTP 200\)\. Nothing was sent to the controller again\./,
      );
    }
    expect(inlet.counters.writesReceived).toBe(writes + 1);
    const actuator = plant.device('dosing-actuator');
    const moved = await run(
      one('sluicectl send dosing-actuator move --position 40 --via mqtt')[0]!,
    );
    expect(moved.code, moved.stderr).toBe(0);
    expect(moved.stdout).toMatch(/^CONFIRMED over mqtt\n/);
    expect(actuator.counters.writesReceived).toBe(1);
    expect(actuator.snapshot().position).toBe(40);

    // Every example of both texts was run here, and checked.
    expect(all.filter((e) => !covered.has(e))).toEqual([]);
  }, 180_000);
});
