import { spawn } from 'node:child_process';
import { availableParallelism } from 'node:os';
import { expect } from 'vitest';
import type { CommandRecord, NewCommand, Observation } from '../../src/core/journal.js';
import type { Daemon } from '../../src/daemon/daemon.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { main } from '../../src/cli/main.js';
import { nodeArgs } from '../helpers/entry.js';
import { until } from '../helpers/mosquitto.js';

/** A run of sluicectl (a process, or its main in this process): exit code, stdout and stderr. */
export interface CliRun {
  readonly code: number | null;
  readonly stdout: string;
  readonly stderr: string;
  /** stdout parsed as JSON (for --json runs); the caller names the shape it expects. */
  // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- a typed parse
  json<T = Record<string, unknown>>(): T;
}

/** Every subcommand of sluicectl. */
export const SUBCOMMANDS = [
  'stuck',
  'list',
  'show',
  'devices',
  'clock',
  'health',
  'reverify',
  'resolve',
  'send',
] as const;

/**
 * Runs `tasks` at most `width` at a time, results in order. Each sluicectl is a Node process
 * compiling TypeScript at start: sixteen at once on a two-core runner share it sixteen ways, and
 * each one's own timeout would run out while it waits for the CPU, not for anything it does.
 */
export async function inTurns<T>(
  tasks: readonly (() => Promise<T>)[],
  width = availableParallelism(),
): Promise<T[]> {
  const results: T[] = new Array<T>(tasks.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < tasks.length) {
      const i = next++;
      results[i] = await tasks[i]!();
    }
  };
  await Promise.all(Array.from({ length: Math.max(1, width) }, worker));
  return results;
}

interface RunOptions {
  readonly env?: Record<string, string | undefined>;
  readonly timeoutMs?: number;
  /**
   * The gateway's wall clock for a run in this process (sluicectlInProcess; default Date.now):
   * a verdict that depends on the time since seeding is judged at a time the test sets, not at
   * whatever time a loaded machine reaches the run. A process reads its own clock.
   */
  readonly now?: () => number;
}

/** The environment a run gets: the test's, without the configuration and colour it decides. */
function runEnv(options: RunOptions): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries({ ...process.env, ...options.env })) {
    // Tests decide the configuration and colour themselves.
    if (v !== undefined && k !== 'SLUICE_CONFIG' && k !== 'NO_COLOR') env[k] = v;
  }
  if (options.env?.SLUICE_CONFIG !== undefined) env.SLUICE_CONFIG = options.env.SLUICE_CONFIG;
  // The journal's damage check has 2 s by default (an operator's wait): on a runner busy with
  // other test files a check of a small journal, its process's start included, can take longer,
  // and its "not checked in full" line would land in stderrs the tests compare whole. Tests of
  // the budget set their own.
  if (!('SLUICECTL_CHECK_WITHIN' in env)) env.SLUICECTL_CHECK_WITHIN = '60s';
  return env;
}

function finished(
  args: readonly string[],
  code: number | null,
  stdout: string,
  stderr: string,
): CliRun {
  // SLUICECTL_TEST_ECHO=1 prints what the operator would see (for reading the output).
  if (process.env.SLUICECTL_TEST_ECHO === '1') {
    process.stdout.write(
      `$ sluicectl ${args.join(' ')}  [exit ${String(code)}]\n${stdout}${stderr}\n`,
    );
  }
  return {
    code,
    stdout,
    stderr,
    // eslint-disable-next-line @typescript-eslint/no-unnecessary-type-parameters -- as above
    json: <T>() => {
      try {
        return JSON.parse(stdout) as T;
      } catch (error) {
        throw new Error(`not JSON (${String(error)}): ${stdout}\nstderr: ${stderr}`, {
          cause: error,
        });
      }
    },
  };
}

/**
 * sluicectl as a process, the binary an operator runs (stdout and stderr are pipes). For what
 * depends on the process itself: its exit code as the shell sees it, pipe detection (no
 * colour), the modules it loads, that it exits once its work is done (nothing left open).
 */
export function sluicectl(args: readonly string[], options: RunOptions = {}): Promise<CliRun> {
  const child = spawn(process.execPath, [...nodeArgs('src/cli/sluicectl.ts'), ...args], {
    env: runEnv(options),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c.toString('utf8')));
  child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new Error(
          `sluicectl ${args.join(' ')} did not exit within ${options.timeoutMs ?? 30_000} ms\n${stdout}\n${stderr}`,
        ),
      );
    }, options.timeoutMs ?? 30_000);
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      resolve(finished(args, code, stdout, stderr));
    });
  });
}

/**
 * sluicectl run in this process: the function the binary calls (src/cli/main.ts), with
 * stdout and stderr captured as a pipe would (no TTY: no colour), and the exit code it
 * returns, which the binary makes the process's. A process start costs most of a second of
 * CPU (loading the TypeScript sources, zod, yaml, SQLite); the output, filters and exit codes
 * are tested here, and each subcommand also as a process (sluicectl() above).
 * SLUICECTL_TEST_SPAWN=1 runs these as processes too.
 */
export async function sluicectlInProcess(
  args: readonly string[],
  options: RunOptions = {},
): Promise<CliRun> {
  if (process.env.SLUICECTL_TEST_SPAWN === '1') return sluicectl(args, options);
  let stdout = '';
  let stderr = '';
  const run = main(args, {
    stdout: { write: (text: string) => (stdout += text) },
    stderr: { write: (text: string) => (stderr += text) },
    env: runEnv(options),
    now: options.now ?? (() => Date.now()),
  });
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      reject(
        new Error(
          `sluicectl ${args.join(' ')} did not end within ${options.timeoutMs ?? 30_000} ms\n${stdout}\n${stderr}`,
        ),
      );
    }, options.timeoutMs ?? 30_000);
  });
  try {
    const code = await Promise.race([run, timeout]);
    return finished(args, code, stdout, stderr);
  } finally {
    clearTimeout(timer);
  }
}

/** The retry line a run of `send` printed on stdout, as the arguments sluicectl takes (after "sluicectl"). */
export function retryArgs(run: CliRun): string[] {
  const line = /send it again with the same key [^:]*: sluicectl (.*)$/m.exec(run.stdout)?.[1];
  if (line === undefined) throw new Error(`no retry line in:\n${run.stdout}\n${run.stderr}`);
  // The test's paths and keys need no shell quoting: split as a shell would split them.
  expect(line).not.toMatch(/['"\\]/);
  return line.split(' ');
}

/**
 * Waits (20 s at most) until the daemon has read each of its devices back once, and each other
 * readiness check named in `also` (`mqtt`: the MQTT intake connected) is ok.
 */
export async function untilFirstReadbacks(
  daemon: Pick<Daemon, 'readiness'>,
  also: readonly string[] = [],
): Promise<void> {
  await until(
    () =>
      Object.entries(daemon.readiness().checks).every(
        ([k, c]) => !(k.startsWith('device:') || also.includes(k)) || c.ok,
      )
        ? true
        : undefined,
    20_000,
    [...also, 'first readbacks'].join(', '),
  );
}

const seconds = 1_000;
const minutes = 60 * seconds;
const hours = 60 * minutes;

function observation(state: string, position: number, seq: number, at: number): Observation {
  return {
    state,
    position,
    seq,
    faultCode: null,
    sourceTime: new Date(at).toISOString(),
    readAt: new Date(at).toISOString(),
  };
}

interface Seed {
  readonly key: string;
  readonly scope?: string;
  readonly device: string;
  readonly action?: NewCommand['action'];
  readonly position?: number | null;
  readonly acceptedAgoMs: number;
  readonly ttlMs?: number;
  readonly issuedAtSource?: 'issuer' | 'gateway';
  readonly intake?: string;
  readonly fingerprint?: string;
}

function claim(journal: SqliteJournal, now: number, s: Seed): CommandRecord {
  const acceptedAt = now - s.acceptedAgoMs;
  const ttlMs = s.ttlMs ?? 30_000;
  const claimed = journal.claim({
    scope: s.scope ?? 'plant',
    key: s.key,
    fingerprint: s.fingerprint ?? `fp-${s.key}`,
    device: s.device,
    action: s.action ?? 'open',
    position: s.position ?? null,
    issuedAt: acceptedAt - 40,
    issuedAtSource: s.issuedAtSource ?? 'issuer',
    ttlMs,
    deadline: acceptedAt - 40 + ttlMs,
    intake: s.intake ?? 'https',
    acceptedAt,
  });
  return claimed.record;
}

function dispatch(
  journal: SqliteJournal,
  r: CommandRecord,
  at: number,
  seq: number,
): CommandRecord {
  return journal.markDispatched(
    r,
    at,
    observation('CLOSED', 0, seq - 1, at - 5),
    'pipeline',
    () => seq,
    'gateway clock LOCKED (ptp); controller skew +3 ms ± 1 ms',
  );
}

/**
 * A journal holding commands in every state, relative to `now`: confirmed (with duplicates on
 * both intakes and a refused key reuse), rejected (0x88 and STALE_COMMAND), failed
 * (DEVICE_FAULT 0x81), accepted and dispatched ones still open and young, one dispatched past
 * its deadline but within its confirm timeout, one SPEC-stuck (past deadline + confirm
 * timeout), a move, an old one, and one key used by two identities.
 */
export function seedJournal(path: string, now: number): void {
  const journal = SqliteJournal.open({ path });
  try {
    // confirmed, 3 minutes ago; duplicates over MQTT and HTTPS (three), then a key reuse.
    const ok = claim(journal, now, {
      key: 'k-confirmed',
      device: 'inlet-valve',
      acceptedAgoMs: 3 * minutes,
    });
    const okD = dispatch(journal, ok, ok.acceptedAt + 8, 7);
    journal.settle(okD, 'dispatched', {
      to: 'confirmed',
      code: 'OK',
      faultCode: null,
      observed: observation('OPEN', 100, 7, ok.acceptedAt + 1600),
      detail: 'readback after the write shows OPEN',
      at: ok.acceptedAt + 1600,
      intake: 'pipeline',
    });
    claim(journal, now, {
      key: 'k-confirmed',
      device: 'inlet-valve',
      acceptedAgoMs: 2 * minutes,
      intake: 'mqtt',
    });
    // A client retrying over HTTPS: its three hits are one event in the history.
    for (const ago of [60, 50, 40])
      claim(journal, now, {
        key: 'k-confirmed',
        device: 'inlet-valve',
        acceptedAgoMs: ago * seconds,
      });
    claim(journal, now, {
      key: 'k-confirmed',
      device: 'inlet-valve',
      acceptedAgoMs: 30 * seconds,
      fingerprint: 'another-command',
    });

    // rejected by the mirror: 0x88, never written.
    const bad = claim(journal, now, {
      key: 'k-rejected',
      device: 'outlet-valve',
      action: 'close',
      acceptedAgoMs: 10 * minutes,
    });
    journal.settle(bad, 'accepted', {
      to: 'rejected',
      code: 'ILLEGAL_TRANSITION',
      faultCode: '0x88',
      observed: observation('OPENING', 40, 3, bad.acceptedAt + 5),
      detail: 'close is not a legal transition from OPENING; nothing was written',
      at: bad.acceptedAt + 6,
      intake: 'pipeline',
    });

    // rejected stale: its deadline passed before it was taken.
    const stale = claim(journal, now, {
      key: 'k-stale',
      device: 'inlet-valve',
      acceptedAgoMs: 20 * minutes,
      ttlMs: 10,
    });
    journal.settle(stale, 'accepted', {
      to: 'rejected',
      code: 'STALE_COMMAND',
      faultCode: null,
      observed: null,
      detail: `deadline ${new Date(stale.deadline).toISOString()} passed 30 ms ago; nothing was written`,
      at: stale.acceptedAt,
      intake: 'mqtt',
    });

    // failed: the controller took it and went to FAULT 0x81.
    const fault = claim(journal, now, {
      key: 'k-failed',
      device: 'outlet-valve',
      acceptedAgoMs: 5 * minutes,
      intake: 'mqtt',
    });
    const faultD = dispatch(journal, fault, fault.acceptedAt + 10, 4);
    journal.settle(faultD, 'dispatched', {
      to: 'failed',
      code: 'DEVICE_FAULT',
      faultCode: '0x81',
      observed: { ...observation('FAULT', 37, 4, fault.acceptedAt + 3200), faultCode: '0x81' },
      detail: 'the controller took the command and went to FAULT (fault 0x81)',
      at: fault.acceptedAt + 3200,
      intake: 'pipeline',
    });

    // a move, confirmed.
    const move = claim(journal, now, {
      key: 'k-move',
      device: 'dosing-actuator',
      action: 'move',
      position: 40,
      acceptedAgoMs: 4 * minutes,
    });
    const moveD = dispatch(journal, move, move.acceptedAt + 5, 2);
    journal.settle(moveD, 'dispatched', {
      to: 'confirmed',
      code: 'OK',
      faultCode: null,
      observed: observation('IDLE', 40, 2, move.acceptedAt + 900),
      detail: 'readback after the write shows IDLE',
      at: move.acceptedAt + 900,
      intake: 'pipeline',
    });

    // old: 3 hours ago (outside --since 1h).
    const old = claim(journal, now, {
      key: 'k-old',
      device: 'drain-valve',
      acceptedAgoMs: 3 * hours,
    });
    journal.settle(dispatch(journal, old, old.acceptedAt + 5, 1), 'dispatched', {
      to: 'confirmed',
      code: 'OK',
      faultCode: null,
      observed: observation('OPEN', 100, 1, old.acceptedAt + 1500),
      detail: 'readback after the write shows OPEN',
      at: old.acceptedAt + 1500,
      intake: 'pipeline',
    });

    // open and young: accepted 2 s ago, dispatched 1 s ago.
    claim(journal, now, {
      key: 'k-accepted',
      device: 'drain-valve',
      acceptedAgoMs: 2 * seconds,
      ttlMs: 60_000,
    });
    const young = claim(journal, now, {
      key: 'k-dispatched',
      device: 'outlet-valve',
      acceptedAgoMs: 1 * seconds,
    });
    dispatch(journal, young, young.acceptedAt + 5, 5);

    // Open 40 s and 1 s past its deadline, but within the valve's 8 s confirm timeout: late,
    // not stuck (for about 7 s after seeding).
    const late = claim(journal, now, {
      key: 'k-late',
      device: 'inlet-valve',
      acceptedAgoMs: 40 * seconds,
      ttlMs: 39_000,
    });
    dispatch(journal, late, late.acceptedAt + 5, 8);

    // SPEC-stuck: dispatched 10 minutes ago, deadline + confirm timeout long past.
    const stuck = claim(journal, now, {
      key: 'k-stuck',
      device: 'outlet-valve',
      acceptedAgoMs: 10 * minutes,
      intake: 'mqtt',
    });
    dispatch(journal, stuck, stuck.acceptedAt + 12, 6);
    journal.note(
      stuck,
      stuck.acceptedAt + 5_000,
      'taken up again: sequence number 6 (write outcome unknown); settling by readback',
      'recovery',
    );

    // One key, two identities: ambiguous without --scope.
    const shared = claim(journal, now, {
      key: 'k-shared',
      scope: 'plant',
      device: 'inlet-valve',
      acceptedAgoMs: 6 * minutes,
    });
    journal.settle(shared, 'accepted', {
      to: 'confirmed',
      code: 'OK',
      faultCode: null,
      observed: observation('OPEN', 100, 7, shared.acceptedAt + 10),
      detail: 'no-op: the controller shows OPEN; nothing was written',
      at: shared.acceptedAt + 10,
      intake: 'pipeline',
    });
    const other = claim(journal, now, {
      key: 'k-shared',
      scope: 'scada',
      device: 'drain-valve',
      action: 'close',
      acceptedAgoMs: 7 * minutes,
    });
    journal.settle(other, 'accepted', {
      to: 'failed',
      code: 'READBACK_TIMEOUT',
      faultCode: null,
      observed: null,
      detail: 'no readback showed CLOSED within 8000 ms; nothing was written',
      at: other.acceptedAt + 8_000,
      intake: 'pipeline',
    });
  } finally {
    journal.close();
  }
}

/** A configuration naming the seeded devices (valve and actuator profiles: 8 s confirm timeout). */
export function configYaml(stateDir: string, journalPath?: string): string {
  return [
    'gatewayId: cli-test',
    `stateDir: ${stateDir}`,
    ...(journalPath === undefined ? [] : ['journal:', `  path: ${journalPath}`]),
    'https:',
    '  host: 127.0.0.1',
    '  port: 8443',
    '  certFile: cert.pem',
    '  keyFile: key.pem',
    'identities:',
    '  plant:',
    `    tokenSha256: ${'a'.repeat(64)}`,
    "    devices: ['*']",
    'plcs:',
    '  mb: { protocol: modbus, host: 127.0.0.1, port: 5020 }',
    'devices:',
    '  inlet-valve: { plc: mb, profile: valve, base: 0 }',
    '  outlet-valve: { plc: mb, profile: valve, base: 100 }',
    '  drain-valve: { plc: mb, profile: valve, base: 200 }',
    '  dosing-actuator: { plc: mb, profile: actuator, base: 300 }',
    '',
  ].join('\n');
}
