import { spawn, spawnSync } from 'node:child_process';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import BetterSqlite3 from 'better-sqlite3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exactDuration, formatDuration, parseDuration, relative } from '../../src/cli/durations.js';
import { Style, renderTable, type Column } from '../../src/cli/table.js';
import type { Observation } from '../../src/core/journal.js';
import { takeUpNote } from '../../src/core/open-commands.js';
import { allocateSeq } from '../../src/core/sequence.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { nodeArgs } from '../helpers/entry.js';
import { tempDir } from '../helpers/fixtures.js';
import { isRoot, realComponent } from '../helpers/real.js';
import {
  SUBCOMMANDS,
  configYaml,
  inTurns,
  seedJournal,
  sluicectl,
  sluicectlInProcess,
  type CliRun,
} from './helpers.js';

/**
 * sluicectl against a journal file: commands in every state, built with the real SqliteJournal.
 * No daemon is needed: reading is a read-only journal connection. Most runs call sluicectl's
 * main in this process (`cli`, sluicectlInProcess: the function the binary runs, stdout a
 * pipe); each subcommand read here also runs as the binary, a process with stdout piped
 * (`binary`), and so does whatever depends on the process: no colour on a pipe, the exit code
 * 3 the shell sees, a reader that goes away, --help (its width and colour follow the
 * process's terminal).
 */

let dir: string;
let cleanup: () => void;
let configPath: string;
let journalPath: string;
/** When the shared journal was seeded: the ages it holds grow from there. */
let seededAt: number;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('sluice-cli-'));
  journalPath = join(dir, 'state', 'journal.db');
  configPath = join(dir, 'sluice.yaml');
  writeFileSync(configPath, configYaml('state'));
  seededAt = Date.now();
  seedJournal(journalPath, seededAt);
});

afterAll(() => {
  cleanup();
});

const cli = (...args: string[]): Promise<CliRun> =>
  sluicectlInProcess(['--config', configPath, ...args]);
/** As `cli`, as a process: the binary an operator runs. */
const binary = (...args: string[]): Promise<CliRun> => sluicectl(['--config', configPath, ...args]);

/** A fresh journal seeded now (for tests whose verdicts depend on the time since seeding). */
function freshJournal(): { config: string; journal: string; seededAt: number } {
  const fresh = join(dir, `fresh-${Math.random().toString(16).slice(2)}`);
  const journal = join(fresh, 'journal.db');
  const at = Date.now();
  seedJournal(journal, at);
  const config = join(fresh, 'sluice.yaml');
  writeFileSync(config, configYaml('.'));
  return { config, journal, seededAt: at };
}

/**
 * How long after its seeding k-late (its deadline 1,040 ms before the seeding, its valve's
 * confirm timeout 8 s: helpers.ts, seedJournal) is late, not stuck.
 */
const LATE_FOR_MS = 8_000 - 1_040;

/** An age as formatDuration prints it: `450ms`, `12s`, `1m4s`, `3m`, `2h5m`, `3d4h`. */
const AGE = String.raw`(\d+(?:ms|s|m|h|d)(?:\d+(?:s|m|h))?)`;

/**
 * `text` matches `pattern` (a regular expression's source, each age in it an `AGE`), and each
 * age printed is the one seeded, grown by no more than the time since seeding: a `40s ago`
 * seeded can read `1m4s ago` by the time a loaded machine runs sluicectl, never `20s ago`.
 */
function expectAges(text: string, pattern: string, seededAgesMs: readonly number[]): void {
  const m = new RegExp(pattern, 'm').exec(text);
  expect(m, `${pattern} in:\n${text}`).not.toBeNull();
  const grown = Date.now() - seededAt;
  seededAgesMs.forEach((seeded, i) => {
    const printed = m![i + 1]!;
    const ms = parseDuration(printed);
    // formatDuration truncates (seconds under an hour): up to 1 s under the age it had.
    expect(ms, `age ${printed}, seeded ${formatDuration(seeded)} ago`).toBeGreaterThan(
      seeded - 1_000,
    );
    expect(ms, `age ${printed}, seeded ${formatDuration(seeded)} ago`).toBeLessThanOrEqual(
      seeded + grown,
    );
  });
}

interface Item {
  key: string;
  scope: string;
  device: string;
  state: string;
  code: string | null;
  faultCode: string | null;
  [field: string]: unknown;
}

/** Where each column starts in the header: every row must have its cells there too. */
function columnStarts(header: string): number[] {
  return [...header.matchAll(/(?:^|\s{2})(\S+(?: \S+)*)/g)].map(
    (m) => m.index + (m[0].startsWith('  ') ? 2 : 0),
  );
}

describe('list', () => {
  it('prints aligned columns, newest first, with relative ages and no colour on a pipe', async () => {
    const run = await binary('list');
    expect(run.code).toBe(0);
    expect(run.stdout).not.toContain('\x1b[');
    const lines = run.stdout.trimEnd().split('\n');
    const header = lines[0]!;
    expect(header.split(/\s{2,}/)).toEqual([
      'KEY',
      'SCOPE',
      'DEVICE',
      'ACTION',
      'STATE',
      'CODE',
      'SEQ',
      'INTAKE',
      'AGE',
      'SETTLED',
    ]);
    const starts = columnStarts(header);
    const stateAt = starts[4]!;
    const ageAt = starts[8]!;
    const row = (key: string): string => lines.find((l) => l.startsWith(`${key} `))!;
    // Aligned: every row has its state and age where the header has them.
    for (const line of lines.slice(1)) {
      expect(line[stateAt - 1]).toBe(' ');
      expect(line.slice(stateAt)).toMatch(/^(accepted|dispatched|confirmed|rejected|failed)\s/);
      expect(line.slice(ageAt)).toMatch(/^\d+(ms|s|m|h|d)\S* ago/);
    }
    expectAges(
      row('k-confirmed'),
      String.raw`inlet-valve\s+open\s+confirmed\s+OK\s+7\s+https\s+${AGE} ago`,
      [3 * 60_000],
    );
    expect(row('k-failed')).toMatch(/failed\s+DEVICE_FAULT 0x81\s+4\s+mqtt/);
    expect(row('k-rejected')).toMatch(/rejected\s+ILLEGAL_TRANSITION 0x88\s+-\s+https/);
    expect(row('k-move')).toMatch(/move 40%\s+confirmed/);
    expectAges(row('k-stuck'), String.raw`dispatched\s+-\s+6\s+mqtt\s+${AGE} ago\s+-$`, [
      10 * 60_000,
    ]);
    // Newest first.
    const keys = lines.slice(1).map((l) => l.split(/\s+/)[0]);
    expect(keys[0]).toBe('k-dispatched');
    expect(keys.at(-1)).toBe('k-old');
    expect(keys).toHaveLength(12);
  });

  it('--json gives the same fields, times in RFC 3339 and ages in ms', async () => {
    const run = await cli('list', '--json');
    expect(run.code).toBe(0);
    const { commands } = run.json<{ commands: Item[] }>();
    expect(commands).toHaveLength(12);
    const confirmed = commands.find((c) => c.key === 'k-confirmed')!;
    expect(Object.keys(confirmed).sort()).toEqual(
      [
        'acceptedAt',
        'acceptedAheadMs',
        'action',
        'ageMs',
        'code',
        'detail',
        'device',
        'faultCode',
        'intake',
        'key',
        'position',
        'scope',
        'seq',
        'settledAt',
        'state',
      ].sort(),
    );
    expect(confirmed).toMatchObject({
      scope: 'plant',
      device: 'inlet-valve',
      action: 'open',
      position: null,
      state: 'confirmed',
      code: 'OK',
      seq: 7,
      intake: 'https',
    });
    expect(confirmed.acceptedAt).toMatch(/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/);
    expect(confirmed.ageMs).toBeGreaterThanOrEqual(180_000);
    expect(confirmed.acceptedAheadMs).toBeNull();
    expect(commands.find((c) => c.key === 'k-move')).toMatchObject({
      action: 'move',
      position: 40,
    });
  });

  it('filters by device, state, age and count', async () => {
    const [device, state, since, limited, limitedJson, whole] = await Promise.all([
      cli('list', '--device', 'outlet-valve', '--json'),
      cli('list', '--state', 'failed', '--json'),
      cli('list', '--since', '1h', '--json'),
      cli('list', '--limit', '2'),
      cli('list', '--limit', '2', '--json'),
      // Exactly as many as the limit: the whole answer, no sign of more.
      cli('list', '--state', 'failed', '--limit', '2'),
    ]);
    const keys = (run: CliRun): string[] =>
      run
        .json<{ commands: Item[] }>()
        .commands.map((c) => `${c.scope}/${c.key}`)
        .sort();
    expect(keys(device)).toEqual(
      ['plant/k-dispatched', 'plant/k-failed', 'plant/k-rejected', 'plant/k-stuck'].sort(),
    );
    expect(keys(state)).toEqual(['plant/k-failed', 'scada/k-shared']);
    expect(keys(since)).not.toContain('plant/k-old');
    expect(keys(since)).toHaveLength(11);
    expect(limited.code).toBe(0);
    expect(limited.stdout.trimEnd().split('\n')).toHaveLength(3);
    expect(limited.stderr).toContain('showing the newest 2; more match: use --limit for more');
    expect(limitedJson.json<{ commands: Item[]; more: boolean }>()).toMatchObject({ more: true });
    expect(limitedJson.json<{ commands: Item[] }>().commands).toHaveLength(2);
    expect(state.json<{ more: boolean }>().more).toBe(false);
    expect(whole.stdout.trimEnd().split('\n')).toHaveLength(3);
    expect(whole.stderr).not.toContain('showing the newest');
  });
});

describe('list --device', () => {
  it('refuses a device neither the configuration nor the journal knows; one they know with nothing to show is no error', async () => {
    // The configuration without dosing-actuator: a device removed since its commands.
    const removed = join(dir, 'removed.yaml');
    writeFileSync(
      removed,
      configYaml('state')
        .split('\n')
        .filter((l) => !l.includes('dosing-actuator'))
        .join('\n'),
    );
    const [typo, none, gone, goneAny, bare] = await Promise.all([
      cli('list', '--device', 'inlet-vlave'),
      cli('list', '--device', 'drain-valve', '--state', 'rejected'),
      sluicectlInProcess([
        '--config',
        removed,
        'list',
        '--device',
        'dosing-actuator',
        '--state',
        'failed',
      ]),
      sluicectlInProcess(['--config', removed, 'list', '--device', 'dosing-actuator', '--json']),
      // Without a configuration an unknown name cannot be told from a device with no commands.
      sluicectlInProcess(['--journal', journalPath, 'list', '--device', 'inlet-vlave']),
    ]);
    expect({ code: typo.code, stdout: typo.stdout }).toEqual({ code: 2, stdout: '' });
    expect(typo.stderr).toMatch(
      /^sluicectl: --device: unknown device "inlet-vlave": not in the configuration \(configured: inlet-valve, outlet-valve, drain-valve, dosing-actuator\), and no command in the journal names it\n/,
    );
    for (const run of [none, gone, bare]) {
      expect({ code: run.code, stdout: run.stdout, stderr: run.stderr }).toEqual({
        code: 0,
        stdout: 'No commands found.\n',
        stderr: '',
      });
    }
    expect(goneAny.code).toBe(0);
    expect(goneAny.json<{ commands: Item[] }>().commands.map((c) => c.key)).toEqual(['k-move']);
  });
});

describe('show', () => {
  it('tells the whole story: received, duplicates, key reuse, freshness, clocks, dispatch, readbacks, outcome', async () => {
    const run = await binary('show', 'k-confirmed');
    expect(run.code).toBe(0);
    const out = run.stdout;
    expect(out).toMatch(/^Command k-confirmed {2}\(scope plant\)/);
    expect(out).toMatch(/state\s+confirmed OK/);
    expectAges(out, String.raw`received\s+\S+Z \(${AGE} ago\) over https, identity plant`, [
      3 * 60_000,
    ]);
    expect(out).toMatch(/issued\s+\S+Z by the issuer/);
    expect(out).toMatch(/deadline\s+\S+Z \(.+ ago\), ttl 30s/);
    expect(out).toMatch(/freshness\s+40ms old when accepted; dispatched 29s before the deadline/);
    expect(out).toMatch(/clocks\s+gateway clock LOCKED \(ptp\); controller skew \+3 ms ± 1 ms/);
    expectAges(
      out,
      String.raw`duplicates\s+4: mqtt ${AGE} ago, https ×3 \(first ${AGE} ago, last ${AGE} ago\)`,
      [2 * 60_000, 60_000, 40_000],
    );
    expect(out).toMatch(/key reuse\s+1 refused \(same key, different command\)/);
    expect(out).toMatch(/dispatch\s+\S+Z \(.+\), seq 7, 1 write/);
    expect(out).toMatch(/readback before the write\s+CLOSED 0% seq 6/);
    expect(out).toMatch(/readback at settlement\s+OPEN 100% seq 7/);
    expect(out).toMatch(/outcome\s+confirmed OK \S+Z/);
    const history = out.slice(out.indexOf('History'), out.indexOf('Result'));
    const events = history
      .trim()
      .split('\n')
      .slice(2)
      .map((l) => l.split(/\s{2,}/)[4]);
    expect(events).toEqual([
      'received',
      'dispatched',
      'settled',
      'duplicate seen',
      'duplicate seen',
      'KEY REUSE refused',
    ]);
    expect(out).toMatch(
      /Result \(stored; every replay returns these bytes\)\n {2}\{"key":"k-confirmed"/,
    );
  });

  it('--json carries the story and the stored result', async () => {
    const run = await cli('show', 'k-confirmed', '--json');
    expect(run.code).toBe(0);
    const story = run.json();
    expect(story).toMatchObject({
      key: 'k-confirmed',
      scope: 'plant',
      state: 'confirmed',
      code: 'OK',
      received: { intake: 'https', scope: 'plant' },
      duplicates: [
        { intake: 'mqtt', count: 1 },
        { intake: 'https', count: 3 },
      ],
      keyReuses: [{ intake: 'https' }],
      freshness: { issuedAtSource: 'issuer', ttlMs: 30_000, ageAtAcceptMs: 40, refused: null },
      clocks: 'gateway clock LOCKED (ptp); controller skew +3 ms ± 1 ms',
      dispatch: { seq: 7, attempts: 1 },
      readbacks: [
        { when: 'before the write', observation: { state: 'CLOSED', seq: 6 } },
        { when: 'at settlement', observation: { state: 'OPEN', seq: 7 } },
      ],
      outcome: { state: 'confirmed', code: 'OK' },
      result: { key: 'k-confirmed', state: 'confirmed', replayed: false, seq: 7 },
      open: null,
    });
    expect((story.history as { kind: string }[]).map((e) => e.kind)).toEqual([
      'received',
      'dispatched',
      'settled',
      'duplicate',
      'duplicate',
      'key-reuse',
    ]);
  });

  it('shows what was refused and never written: 0x88, a stale command', async () => {
    const [rejected, stale] = await Promise.all([
      cli('show', 'k-rejected'),
      cli('show', 'k-stale', '--json'),
    ]);
    expect(rejected.stdout).toMatch(/state\s+rejected ILLEGAL_TRANSITION 0x88/);
    expect(rejected.stdout).toMatch(/dispatch\s+never written/);
    expect(rejected.stdout).toMatch(/readback at settlement\s+OPENING 40% seq 3/);
    expect(stale.json()).toMatchObject({
      code: 'STALE_COMMAND',
      dispatch: null,
      freshness: { refused: expect.stringMatching(/^deadline .* passed 30 ms ago/) as unknown },
    });
  });

  it('names a stuck command as stuck, with what to do', async () => {
    const run = await cli('show', 'k-stuck');
    expect(run.code).toBe(0);
    // Accepted 10 min ago with a 30 s ttl and the valve's 8 s confirm timeout: 9m22s past.
    expectAges(
      run.stdout,
      String.raw`outcome\s+STUCK: still dispatched, ${AGE} past its deadline plus its 8 s confirm timeout; settle it: sluicectl --config ${configPath} reverify k-stuck`,
      [(10 * 60 - 30 - 8) * 1_000],
    );
    expect(run.stdout).toMatch(/recovery\s+note\s+dispatched\s+taken up again/);
    expect(run.stdout).toContain('none yet: the command is open');
  });

  it('prints the lines to run next as a shell reads them back, whatever the key holds', async () => {
    // Keys are printable ASCII: an issuer may put `;`, `$(…)` or a leading `-` in one. The
    // lines show prints are meant to be pasted: a real shell must read them back as sluicectl
    // with the key as one argument, nothing else run. Ground truth: the words sh passes.
    const fresh = join(dir, `typed-back-${Math.random().toString(16).slice(2)}`);
    const path = join(fresh, 'journal.db');
    const now = Date.now();
    const injected = 'k;echo${IFS}INJECTED';
    const dashed = '-k$(echo${IFS}INJECTED)';
    const journal = SqliteJournal.open({ path });
    try {
      const open = (key: string, scope: string, agoMs: number): void => {
        const acceptedAt = now - agoMs;
        const { record } = journal.claim({
          scope,
          key,
          fingerprint: `fp-${scope}-${key}`,
          device: 'outlet-valve',
          action: 'open',
          position: null,
          issuedAt: acceptedAt,
          issuedAtSource: 'issuer',
          ttlMs: 30_000,
          deadline: acceptedAt + 30_000,
          intake: 'mqtt',
          acceptedAt,
        });
        const before = {
          state: 'CLOSED',
          position: 0,
          seq: 0,
          faultCode: null,
          sourceTime: new Date(acceptedAt).toISOString(),
          readAt: new Date(acceptedAt).toISOString(),
        };
        journal.markDispatched(record, acceptedAt + 5, before, 'pipeline', (last) => last + 1);
      };
      // Stuck (10 min open): "settle it: sluicectl reverify …, or sluicectl resolve …".
      open(injected, 'plant', 600_000);
      // Young and dispatched: "Read it now: sluicectl reverify …"; in two scopes.
      open(dashed, 'plant', 1_000);
      open(dashed, 'scada', 2_000);
    } finally {
      journal.close();
    }
    const read = (...args: string[]): Promise<CliRun> =>
      sluicectlInProcess(['--config', configPath, '--journal', path, ...args]);
    const [stuck, young] = await Promise.all([
      read('show', injected),
      read('show', '--scope', 'plant', '--', dashed),
    ]);
    expect(stuck.code).toBe(0);
    expect(young.code).toBe(0);
    const settle = /settle it: (sluicectl .*?), or (sluicectl .*)$/m.exec(stuck.stdout);
    const readNow = /Read it now: (sluicectl .*)$/m.exec(young.stdout);
    expect(settle, stuck.stdout).not.toBeNull();
    expect(readNow, young.stdout).not.toBeNull();
    /** The arguments a POSIX shell gives sluicectl for `line`, one per element. */
    const words = (line: string): string[] => {
      const sh = spawnSync('sh', ['-c', `sluicectl() { printf '%s\\0' "$@"; }; ${line}`], {
        encoding: 'utf8',
      });
      return sh.stdout.split('\0').slice(0, -1);
    };
    // With the --config this run was given: the line reaches the same daemon.
    const config = ['--config', configPath];
    expect(words(settle![1]!)).toEqual([...config, 'reverify', injected]);
    expect(words(settle![2]!)).toEqual([
      ...config,
      'resolve',
      '--as',
      'failed',
      '--reason',
      '…',
      injected,
    ]);
    expect(words(readNow![1]!)).toEqual([...config, 'reverify', '--scope', 'plant', '--', dashed]);
  });

  it('needs --scope for a key two identities used; an unknown key is an error', async () => {
    const [ambiguous, scoped, unknown] = await Promise.all([
      cli('show', 'k-shared'),
      cli('show', 'k-shared', '--scope', 'scada', '--json'),
      cli('show', 'no-such-key'),
    ]);
    expect(ambiguous.code).toBe(2);
    expect(ambiguous.stderr).toContain('key "k-shared" exists in 2 scopes');
    expect(ambiguous.stderr).toContain('give --scope');
    expect(scoped.code).toBe(0);
    expect(scoped.json()).toMatchObject({
      scope: 'scada',
      device: 'drain-valve',
      code: 'READBACK_TIMEOUT',
    });
    expect(unknown.code).toBe(1);
    expect(unknown.stderr).toBe('sluicectl: no command with key "no-such-key"\n');
    expect(unknown.stdout).toBe('');
  });
});

describe('stuck', () => {
  it('lists open commands older than --older-than, marks the SPEC-stuck ones, and exits 3', async () => {
    const { config, seededAt: seeded } = freshJournal();
    // As a process: 3 is the exit code monitoring sees. It judges at its own time, somewhere
    // between its start and its end: k-late is late, not stuck, for 7 s after seeding, and a
    // process on a loaded runner can take that to start.
    const started = Date.now();
    const run = await sluicectl(['--config', config, 'stuck']);
    const ended = Date.now();
    expect(run.code).toBe(3);
    const lines = run.stdout.split('\n');
    expect(lines[0]!.split(/\s{2,}/)).toEqual([
      'KEY',
      'SCOPE',
      'DEVICE',
      'ACTION',
      'STATE',
      'AGE',
      'DEADLINE',
      'STUCK',
      'STUCK PAST',
      'LAST EVENT',
    ]);
    // Oldest first: k-stuck (10 min, SPEC-stuck), then k-late (past its deadline, within its
    // 8 s confirm timeout: late, not stuck). The young ones are under 30 s.
    expect(lines[1]).toMatch(
      /^k-stuck\s+plant\s+outlet-valve\s+open\s+dispatched\s+10m\d*s? ago\s+passed 9m\d*s? ago\s+STUCK 9m\d*s? overdue\s+its deadline plus its 8 s confirm timeout\s+taken up again/,
    );
    const late =
      /^k-late\s+plant\s+inlet-valve\s+open\s+dispatched\s+(\d+)s ago\s+passed \S+ ago\s+(no\s+-|STUCK \S+ overdue\s+its deadline plus its 8 s confirm timeout)\s+seq 8;/;
    expect(lines[2]).toMatch(late);
    const [, age, verdict] = late.exec(lines[2]!)!;
    // Accepted 40 s before the seeding, and judged between the run's start and its end.
    expect(Number(age)).toBeGreaterThanOrEqual(Math.floor((started - seeded + 40_000) / 1_000));
    expect(Number(age)).toBeLessThanOrEqual(Math.floor((ended - seeded + 40_000) / 1_000));
    const lateStuck = verdict!.startsWith('STUCK');
    // Late, not stuck, when the run ended within its 7 s; stuck when it began after them.
    if (ended < seeded + LATE_FOR_MS) expect(lateStuck).toBe(false);
    if (started >= seeded + LATE_FOR_MS) expect(lateStuck).toBe(true);
    expect(run.stdout).toContain(
      `2 open commands older than 30s; ${lateStuck ? 2 : 1} stuck (open past the bound their "stuck past" column names).`,
    );
    expect(run.stdout).not.toMatch(/k-accepted|k-dispatched|k-confirmed/);

    // Seeded again, and judged 2 s after the seeding (the clock of a run in this process, set):
    // k-late is late, not stuck, however long the machine takes to reach the run.
    const again = freshJournal();
    const json = await sluicectlInProcess(
      ['--config', again.config, 'stuck', '--older-than', '500ms', '--json'],
      { now: () => again.seededAt + 2_000 },
    );
    expect(json.code).toBe(3);
    const doc = json.json<{ olderThanMs: number; stuck: number; commands: Item[] }>();
    expect(doc.olderThanMs).toBe(500);
    expect(doc.stuck).toBe(1);
    expect(doc.commands.map((c) => c.key)).toEqual([
      'k-stuck',
      'k-late',
      'k-accepted',
      'k-dispatched',
    ]);
    expect(doc.commands[0]).toMatchObject({
      stuck: true,
      stuckReason: 'its deadline plus its 8 s confirm timeout',
      confirmTimeoutMs: 8000,
      state: 'dispatched',
      seq: 6,
      lastEvent: { detail: expect.stringMatching(/^taken up again/) as unknown },
    });
    expect(doc.commands[0]!.overdueMs).toBeGreaterThan(9 * 60_000);
    expect(doc.commands[1]).toMatchObject({
      key: 'k-late',
      stuck: false,
      overdueMs: null,
      stuckReason: null,
    });
  });

  it('exits 0 when nothing is that old', async () => {
    const [table, json, odd] = await Promise.all([
      cli('stuck', '--older-than', '1h'),
      cli('stuck', '--older-than', '2d', '--json'),
      cli('stuck', '--older-than', '2h30m15s'),
    ]);
    expect(table.code).toBe(0);
    expect(table.stdout).toBe('No open commands older than 1h.\n');
    // The bound said back as given, not cut to two units ("2h30m").
    expect(odd.stdout).toBe('No open commands older than 2h30m15s.\n');
    expect(json.code).toBe(0);
    expect(json.json()).toMatchObject({ olderThanMs: 172_800_000, stuck: 0, commands: [] });
  });

  it("judges a command recovery took up by its PLC's unreachable grace, as the daemon's worker reads it", async () => {
    // A command an earlier life dispatched, its deadline long past, taken up by recovery 20 s
    // ago: its worker reads the controller for its PLC's grace from the take-up.
    const fresh = join(dir, `grace-${Math.random().toString(16).slice(2)}`);
    const journalFile = join(fresh, 'journal.db');
    const now = Date.now();
    const journal = SqliteJournal.open({ path: journalFile });
    try {
      const before: Observation = {
        state: 'CLOSED',
        position: 0,
        seq: 0,
        faultCode: null,
        sourceTime: new Date(now - 299_000).toISOString(),
        readAt: new Date(now - 299_000).toISOString(),
      };
      const { record } = journal.claim({
        scope: 'plant',
        key: 'k-taken-up',
        fingerprint: 'f-taken-up',
        device: 'inlet-valve',
        action: 'open',
        position: null,
        issuedAt: now - 300_000,
        issuedAtSource: 'issuer',
        ttlMs: 30_000,
        deadline: now - 270_000,
        intake: 'https',
        acceptedAt: now - 300_000,
      });
      const dispatched = journal.markDispatched(
        record,
        now - 299_000,
        before,
        'pipeline',
        (last, open) => allocateSeq(last, before.seq, open),
      );
      journal.note(dispatched, now - 20_000, takeUpNote(dispatched.seq ?? 0, null), 'pipeline');
    } finally {
      journal.close();
    }
    /** `stuck` and `show` with the site file's PLC line `plc` (in a file named `name`). */
    const judged = async (
      name: string,
      plc: string,
    ): Promise<{ stuck: Item; shown: { open: Record<string, unknown> } }> => {
      const config = join(fresh, name);
      writeFileSync(
        config,
        configYaml('.').replace('  mb: { protocol: modbus, host: 127.0.0.1, port: 5020 }', plc),
      );
      // Judged at the clock of the seeding, 20 s into the take-up: within the slow PLC's 60 s
      // grace for 40 s more, which a loaded machine could spend before the runs.
      const at = { now: () => now };
      const list = await sluicectlInProcess(['--config', config, 'stuck', '--json'], at);
      const shown = await sluicectlInProcess(
        ['--config', config, 'show', 'k-taken-up', '--json'],
        at,
      );
      return {
        stuck: list.json<{ commands: Item[] }>().commands.find((c) => c.key === 'k-taken-up')!,
        shown: shown.json<{ open: Record<string, unknown> }>(),
      };
    };
    // A PLC that needs a minute to come back: within its take-up, not stuck.
    const slow = await judged(
      'slow.yaml',
      '  mb: { protocol: modbus, host: 127.0.0.1, port: 5020, unreachableGraceMs: 60000 }',
    );
    expect(slow.stuck).toMatchObject({
      stuck: false,
      unreachableGraceMs: 60_000,
      confirmTimeoutMs: 8000,
    });
    expect(slow.shown.open).toMatchObject({ stuck: false, unreachableGraceMs: 60_000 });
    // The default grace (15 s) ended 5 s ago: stuck, and the reason says for how long it read.
    const plain = await judged(
      'plain.yaml',
      '  mb: { protocol: modbus, host: 127.0.0.1, port: 5020 }',
    );
    expect(plain.stuck).toMatchObject({
      stuck: true,
      unreachableGraceMs: 15_000,
      stuckReason: expect.stringMatching(
        /^its take-up by readback \(taken up .*; read for 15 s\)$/,
      ) as unknown,
    });
    expect(plain.shown.open).toMatchObject({ stuck: true, unreachableGraceMs: 15_000 });
  });

  it('without a configuration, judges from deadlines alone and says so', async () => {
    const { journal, seededAt: seeded } = freshJournal();
    const run = await sluicectlInProcess([
      '--config',
      join(dir, 'absent.yaml'),
      '--journal',
      journal,
      'stuck',
    ]);
    // An explicit --config that does not exist is an error ...
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(`no configuration at ${join(dir, 'absent.yaml')}`);
    // ... the default one missing, with --journal, is not.
    // Judged 2 s after the seeding (a set clock): k-dispatched's deadline is 29 s after it, and
    // a loaded machine could reach the run past that, where it too would count as stuck.
    const at = { now: () => seeded + 2_000 };
    const bare = await sluicectlInProcess(['--journal', journal, 'stuck', '--json'], at);
    expect(bare.code).toBe(3);
    const doc = bare.json<{ configured: boolean; commands: Item[] }>();
    expect(doc.configured).toBe(false);
    // k-late is past its deadline: without its confirm timeout it counts as stuck.
    expect(doc.commands.filter((c) => c.stuck).map((c) => c.key)).toEqual(['k-stuck', 'k-late']);
    expect(doc.commands[1]).toMatchObject({
      key: 'k-late',
      stuckReason: 'its deadline (no configuration: its confirm timeout is unknown)',
    });
    const human = await sluicectlInProcess(['--journal', journal, 'stuck'], at);
    expect(human.stderr).toContain('no configuration: confirm timeouts unknown');
  });
});

describe('errors and usage', () => {
  it('exits 2 on usage errors, with the reason', async () => {
    // In turns: with SLUICECTL_TEST_SPAWN=1 these are seventeen process starts, which on a
    // two-core runner would share it seventeen ways.
    const runs = await inTurns([
      () => cli('frobnicate'),
      () => cli('list', '--bogus'),
      () => cli('list', '--since', '5 minutes'),
      () => cli('list', '--state', 'done'),
      () => cli('list', '--limit', '0'),
      () => cli('list', '--limit', '99999999999999999999'),
      () => cli('stuck', '--older-than', '30'),
      () => cli('show'),
      () => cli('resolve', 'k-stuck', '--as', 'failed'),
      () => cli('resolve', 'k-stuck', '--as', 'failed', '--reason', '   '),
      () => cli('resolve', 'k-stuck', '--as', 'confirmed', '--reason', 'x'),
      () => cli('send', 'inlet-valve', 'move'),
      () => cli('send', 'inlet-valve', 'open', '--position', '140'),
      () => cli('send', 'no-such-valve', 'open'),
      () => cli('send', 'inlet-valve', 'open', '--key', 'has space'),
      () => cli('send', 'inlet-valve', 'open', '--key', '"k"'),
      () => cli('send', 'inlet-valve', 'open', '--wait', '30d'),
    ]);
    for (const run of runs) {
      expect({ code: run.code, stderr: run.stderr }).toMatchObject({ code: 2 });
      // One line starting "sluicectl:" as every error (docs/sluicectl.md), then the hint.
      expect(run.stderr).toMatch(/^sluicectl: [^\n]+\n\(see 'sluicectl --help'\)\n$/);
      expect(run.stdout).toBe('');
    }
    const [
      unknownCmd,
      unknownOpt,
      since,
      state,
      limit,
      hugeLimit,
      olderThan,
      show,
      noReason,
      blank,
      as,
      move,
      position,
      device,
      key,
      quoted,
      wait,
    ] = runs.map((r) => r.stderr);
    expect(unknownCmd).toContain("unknown command 'frobnicate'");
    expect(unknownOpt).toContain("unknown option '--bogus'");
    expect(since).toContain('"5 minutes" is not a duration');
    expect(state).toContain(
      'Allowed choices are accepted, dispatched, confirmed, rejected, failed',
    );
    expect(limit).toContain('"0" is not a positive whole number');
    // A count no journal holds: refused as a usage error, not a journal that cannot be read.
    expect(hugeLimit).toContain('"99999999999999999999" is too large');
    expect(olderThan).toContain('"30" is not a duration');
    expect(show).toContain("missing required argument 'key'");
    expect(noReason).toContain('resolve needs --reason');
    expect(blank).toContain('resolve needs --reason');
    expect(as).toContain("argument 'confirmed' is invalid");
    expect(move).toContain('position: is required for move');
    expect(position).toContain('"140" is not a position from 0 to 100');
    expect(device).toContain(
      'unknown device "no-such-valve" (configured: inlet-valve, outlet-valve, drain-valve, dosing-actuator)',
    );
    expect(key).toContain('--key: an idempotency key is 1-255 printable ASCII characters');
    // Over HTTPS `"k"` is the key k, over MQTT it would be `"k"`: refused before either.
    expect(quoted).toContain('--key: an idempotency key has no double quote');
    // Past 2^31-1 ms a timer fires at once: the run gave up as it began.
    expect(wait).toContain('"30d" is longer than a day, the longest a command lives');
  }, 120_000);

  it('exits 1 with a clear message when the journal, the configuration or the daemon is missing', async () => {
    const [journal, config, defaults] = await Promise.all([
      cli('--journal', join(dir, 'nope.db'), 'list'),
      sluicectlInProcess(['--config', join(dir, 'nope.yaml'), 'list']),
      sluicectlInProcess(['list'], { env: { SLUICE_CONFIG: join(dir, 'env.yaml') } }),
    ]);
    expect(journal.code).toBe(1);
    expect(journal.stderr).toBe(
      `sluicectl: no journal at ${join(dir, 'nope.db')}: check --journal, or journal.path and stateDir in the configuration\n`,
    );
    expect(config.code).toBe(1);
    expect(config.stderr).toContain(`no configuration at ${join(dir, 'nope.yaml')}`);
    expect(defaults.code).toBe(1);
    expect(defaults.stderr).toContain(`no configuration at ${join(dir, 'env.yaml')}`);
    // The admin commands need the daemon's admin endpoint: off, or not there, is said so.
    const off = join(dir, 'admin-off.yaml');
    writeFileSync(off, `${configYaml('state')}admin:\n  enabled: false\n`);
    const [disabled, absent] = await Promise.all([
      sluicectlInProcess(['--config', off, 'health']),
      cli('devices'),
    ]);
    expect(disabled.code).toBe(1);
    expect(disabled.stderr).toContain(
      "the daemon's admin endpoint is turned off (admin.enabled: false",
    );
    expect(absent.code).toBe(1);
    expect(absent.stderr).toMatch(
      /^sluicectl: (no admin token at|cannot reach sluiced's admin endpoint)/,
    );
  });

  it.runIf(
    realComponent('root (to run sluicectl as another user)', isRoot, 'run the tests as root'),
  )(
    'says permission denied, not "no journal" or "no configuration", for a file in a folder closed to the user',
    async () => {
      // Under systemd the journal is in StateDirectory= (0700, the daemon's user) and the site
      // file in /etc/sluice (0750, root:sluice): an operator without sudo cannot search either
      // folder, and the file must not read as missing. As root a mode stops nothing: run as
      // nobody.
      const { dir: top, cleanup: done } = tempDir('sluice-cli-perm-');
      try {
        const open = join(top, 'open');
        const closed = join(top, 'closed');
        mkdirSync(open);
        mkdirSync(closed);
        seedJournal(join(closed, 'journal.db'), Date.now());
        writeFileSync(join(open, 'sluice.yaml'), configYaml('../closed'));
        writeFileSync(join(closed, 'sluice.yaml'), configYaml('.'));
        chmodSync(top, 0o755);
        chmodSync(open, 0o755);
        chmodSync(join(open, 'sluice.yaml'), 0o644);
        chmodSync(closed, 0o700);
        const asNobody = (args: string[]): Promise<{ code: number | null; stderr: string }> => {
          const child = spawn(process.execPath, [...nodeArgs('src/cli/sluicectl.ts'), ...args], {
            stdio: ['ignore', 'ignore', 'pipe'],
            uid: 65534,
            gid: 65534,
          });
          let stderr = '';
          child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
          return new Promise((resolve, reject) => {
            child.once('error', reject);
            child.once('close', (code) => {
              resolve({ code, stderr });
            });
          });
        };
        const [journal, config] = await Promise.all([
          asNobody(['--config', join(open, 'sluice.yaml'), 'stuck']),
          asNobody(['--config', join(closed, 'sluice.yaml'), 'stuck']),
        ]);
        expect(journal).toEqual({
          code: 1,
          stderr: `sluicectl: cannot read the journal ${join(closed, 'journal.db')}: permission denied; run as the daemon's user or root\n`,
        });
        expect(config).toEqual({
          code: 1,
          stderr: `sluicectl: cannot read the configuration ${join(closed, 'sluice.yaml')}: permission denied (its folder is closed to this user); run as root or the daemon's user (sudo)\n`,
        });
      } finally {
        done();
      }
    },
    60_000,
  );

  it('reads the site as the unit runs it: the SLUICE_* overrides of sluiced.env beside the site file', async () => {
    // The unit's EnvironmentFile= is /etc/sluice/sluiced.env, beside /etc/sluice/sluice.yaml:
    // with SLUICE_STATE_DIR there, the daemon's journal is not the site file's stateDir.
    const site = join(dir, `unit-env-${Math.random().toString(16).slice(2)}`);
    const state = join(site, 'elsewhere');
    mkdirSync(site);
    seedJournal(join(state, 'journal.db'), Date.now());
    writeFileSync(join(site, 'sluice.yaml'), configYaml('state-of-the-file'));
    writeFileSync(
      join(site, 'sluiced.env'),
      [
        '# Environment of sluiced under systemd',
        `SLUICE_STATE_DIR="${state}"`,
        'NODE_OPTIONS=--max-old-space-size=256',
        '',
      ].join('\n'),
    );
    const config = join(site, 'sluice.yaml');
    const [unit, operator] = await Promise.all([
      sluicectlInProcess(['--config', config, '--json', 'list', '--state', 'failed']),
      // A variable the operator sets is theirs: it overrides the file, as it would the site's.
      sluicectlInProcess(['--config', config, 'list'], {
        env: { SLUICE_STATE_DIR: join(site, 'mine') },
      }),
    ]);
    expect(unit.code).toBe(0);
    // The journal the unit's daemon writes: its commands.
    expect(unit.json<{ commands: { key: string }[] }>().commands.map((c) => c.key)).toEqual([
      'k-failed',
      'k-shared',
    ]);
    expect(operator.code).toBe(1);
    expect(operator.stderr).toContain(`no journal at ${join(site, 'mine', 'journal.db')}`);
  });

  it('says a daemon holding the journal without its admin endpoint is starting or stopping, not absent', async () => {
    // While sluiced takes up the commands its journal held open at its start, and while a stop
    // lets the commands in flight settle, it holds the journal's writer lock and its admin
    // socket is not there: "not running, nothing is being settled" would be false. The lock is
    // the daemon's own (writer-lock.ts), taken by a process of its own as a daemon takes it.
    const { config } = freshJournal();
    const journal = join(dirname(config), 'journal.db');
    const holder = spawn(process.execPath, [...nodeArgs('test/helpers/lock-process.ts'), journal], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      const said = await new Promise<string>((resolve, reject) => {
        holder.stdout.once('data', (c: Buffer) => {
          resolve(c.toString('utf8'));
        });
        holder.once('error', reject);
      });
      expect(said).toBe('locked\n');
      const held = await sluicectlInProcess(['--config', config, 'show', 'k-stuck']);
      expect(held.code).toBe(0);
      expect(held.stderr).toMatch(
        /^sluicectl: sluiced holds the journal but nothing listens at \S+admin\.sock yet or any more: it is starting or stopping/,
      );
    } finally {
      const gone = new Promise((resolve) => holder.once('close', resolve));
      holder.kill('SIGKILL');
      await gone;
    }
    // The lock released with its process: no daemon now.
    const absent = await sluicectlInProcess(['--config', config, 'show', 'k-stuck']);
    expect(absent.stderr).toMatch(/^sluicectl: sluiced is not running \(nothing listens at /);
  });

  it("send reads a token the site names as the unit's credential where the unit takes it from", async () => {
    // The shipped systemd/sluice.yaml names the token ${CREDENTIALS_DIRECTORY}/sluice_scada.token,
    // a folder only the service has; the unit loads it from /etc/sluice/credentials
    // (LoadCredential=sluice:/etc/sluice/credentials). Not on this machine: the error names
    // where it was looked for, before anything is sent.
    const site = join(dir, `credential-${Math.random().toString(16).slice(2)}`);
    mkdirSync(site);
    writeFileSync(join(site, 'cert.pem'), 'not read before the token\n');
    writeFileSync(
      join(site, 'sluice.yaml'),
      configYaml('state').replace(
        `    tokenSha256: ${'a'.repeat(64)}`,
        '    tokenFile: ${CREDENTIALS_DIRECTORY}/sluice_scada.token',
      ),
    );
    const run = await sluicectlInProcess(
      ['--config', join(site, 'sluice.yaml'), 'send', 'inlet-valve', 'open'],
      { env: { CREDENTIALS_DIRECTORY: undefined, SLUICE_TOKEN: undefined } },
    );
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(
      /^sluicectl: cannot read the token \(identities\.plant\.tokenFile\) \/etc\/sluice\/credentials\/scada\.token: ENOENT/,
    );
  });

  it('stops quietly when its reader goes away, with the exit code of the command', async () => {
    // `sluicectl stuck | head -1`, a pager quit at once: the read end of stdout is closed
    // before sluicectl writes, so that every write meets a closed pipe (EPIPE).
    const closedPipe = (args: string[]): Promise<{ code: number | null; stderr: string }> => {
      const child = spawn(
        process.execPath,
        [...nodeArgs('src/cli/sluicectl.ts'), '--config', configPath, ...args],
        {
          // As every run of test/cli/helpers.ts gets: the damage check's 2 s default (an
          // operator's wait) ran out beside other test files (its process's start included, at
          // a load of ~15), and its "not checked in full" line, true then, is not what this
          // case is about; stderr is compared whole.
          env: { ...process.env, SLUICECTL_CHECK_WITHIN: '60s' },
          stdio: ['ignore', 'pipe', 'pipe'],
        },
      );
      child.stdout.destroy();
      let stderr = '';
      child.stderr.on('data', (c: Buffer) => (stderr += c.toString('utf8')));
      return new Promise((resolve, reject) => {
        child.once('error', reject);
        child.once('close', (code) => {
          resolve({ code, stderr });
        });
      });
    };
    const [stuck, show] = await Promise.all([
      closedPipe(['stuck', '--older-than', '1s']),
      closedPipe(['show', 'k-confirmed']),
    ]);
    // No daemon runs on this journal: `stuck`, listing open commands, says that on stderr, and
    // nothing else (no EPIPE).
    expect(stuck.code).toBe(3);
    expect(stuck.stderr).toMatch(/^sluicectl: sluiced is not running \([^\n]+\n$/);
    expect(show).toEqual({ code: 0, stderr: '' });
  });

  it('exits 1 saying what is wrong with a file that is not a journal it can read', async () => {
    const notSqlite = join(dir, 'notes.txt');
    writeFileSync(notSqlite, 'valve log, hand-written\n'.repeat(200));
    const foreign = join(dir, 'foreign.db');
    const older = join(dir, 'older.db');
    for (const [path, version] of [
      [foreign, 0],
      [older, 1],
    ] as const) {
      const db = new BetterSqlite3(path);
      db.exec('CREATE TABLE readings (at INTEGER, value REAL)');
      db.pragma(`user_version = ${version}`);
      db.close();
    }
    const [text, other, old] = await Promise.all([
      cli('--journal', notSqlite, 'list'),
      cli('--journal', foreign, 'list'),
      cli('--journal', older, 'list'),
    ]);
    expect(text.code).toBe(1);
    expect(text.stderr).toMatch(
      /^sluicectl: cannot open the journal .*notes\.txt: it is not a Sluice journal: not an SQLite database \(SQLITE_NOTADB: file is not a database\)\n$/,
    );
    expect(other.code).toBe(1);
    expect(other.stderr).toContain(`${foreign} is not a Sluice journal`);
    expect(old.code).toBe(1);
    expect(old.stderr).toContain('has schema version 1, older than this Sluice');
    expect(old.stderr).toContain('sluiced upgrades it when it next starts');
  });

  it('says a journal is locked, or a directory, in words, not as a bare SQLite code', async () => {
    const { journal } = freshJournal();
    // Another program holding the file exclusively (a WAL reader waits for no writer otherwise).
    const holder = new BetterSqlite3(journal);
    try {
      holder.pragma('locking_mode = EXCLUSIVE');
      holder.exec('BEGIN EXCLUSIVE');
      const locked = await sluicectlInProcess(['--journal', journal, 'list']);
      expect({ code: locked.code, stdout: locked.stdout }).toEqual({ code: 1, stdout: '' });
      expect(locked.stderr).toBe(
        `sluicectl: cannot open the journal ${journal}: it is locked (SQLITE_BUSY: database is locked) for longer than a reader waits (2 s): another program holds it exclusively, or sluiced is recovering its log at start; try again\n`,
      );
    } finally {
      holder.close();
    }
    const free = await sluicectlInProcess(['--journal', journal, 'list', '--json']);
    expect(free.code).toBe(0);

    const folder = await sluicectlInProcess(['--journal', join(dir, 'state'), 'list']);
    expect({ code: folder.code, stdout: folder.stdout }).toEqual({ code: 1, stdout: '' });
    expect(folder.stderr).toBe(
      `sluicectl: ${join(dir, 'state')} is a directory, not a journal: give the journal file (journal.db by default)\n`,
    );
  });

  it('reads the journal named by SLUICE_CONFIG, and --journal overrides it', async () => {
    const run = await sluicectlInProcess(['list', '--json', '--limit', '1'], {
      env: { SLUICE_CONFIG: configPath },
    });
    expect(run.code).toBe(0);
    expect(run.json<{ commands: Item[] }>().commands).toHaveLength(1);
    const { journal } = freshJournal();
    const other = await sluicectlInProcess(['--journal', journal, 'list', '--json']);
    expect(other.code).toBe(0);
    expect(other.json<{ commands: Item[] }>().commands).toHaveLength(12);
  });

  it('has --help on every subcommand, with an example, and documents the exit codes', async () => {
    const subcommands = SUBCOMMANDS;
    const [main, ...subs] = await Promise.all([
      sluicectl(['--help']),
      ...subcommands.map((s) => sluicectl([s, '--help'])),
    ]);
    expect(main.code).toBe(0);
    expect(main.stdout).toMatch(
      /Exit codes:\n\s+0 {2}fine\n\s+1 {2}error.*\n\s+2 {2}usage.*\n\s+3 {2}stuck/,
    );
    for (const s of subcommands) expect(main.stdout).toContain(`  ${s}`);
    subs.forEach((run, i) => {
      expect(run.code).toBe(0);
      expect(run.stdout).toContain(`Usage: sluicectl ${subcommands[i]!}`);
      expect(run.stdout).toMatch(/Example:\n {2}\$ (sudo )?sluicectl /);
      expect(run.stdout).toMatch(
        /Exit codes:\n\s+0 {2}fine\n\s+1 {2}error.*\n\s+2 {2}usage.*\n\s+3 {2}stuck/,
      );
    });
  });
});

describe('formatting', () => {
  it('parses the durations operators type', () => {
    expect(parseDuration('30s')).toBe(30_000);
    expect(parseDuration('5m')).toBe(300_000);
    expect(parseDuration('1h')).toBe(3_600_000);
    expect(parseDuration('2d')).toBe(172_800_000);
    expect(parseDuration('500ms')).toBe(500);
    expect(parseDuration('1h30m')).toBe(5_400_000);
    expect(parseDuration('1.5s')).toBe(1_500);
    for (const bad of ['', '30', 's', '5 m', '1w', '-5s', '5s ago']) {
      expect(() => parseDuration(bad)).toThrow(/duration/);
    }
  });

  it('writes ages as kubectl does: two units at most, "ago" or "in"', () => {
    expect(formatDuration(450)).toBe('450ms');
    expect(formatDuration(12_300)).toBe('12s');
    expect(formatDuration(192_000)).toBe('3m12s');
    expect(formatDuration(180_000)).toBe('3m');
    expect(formatDuration(7_500_000)).toBe('2h5m');
    expect(formatDuration(273_600_000)).toBe('3d4h');
    expect(relative(1_000, 193_000)).toBe('3m12s ago');
    expect(relative(10_000, 5_000)).toBe('in 5s');
  });

  it('says a bound the operator gave back whole', () => {
    expect(exactDuration(1_500)).toBe('1s500ms');
    expect(exactDuration(9_015_000)).toBe('2h30m15s');
    expect(exactDuration(300_000)).toBe('5m');
    expect(exactDuration(86_400_001)).toBe('1d1ms');
    expect(exactDuration(0)).toBe('0ms');
    for (const text of ['1s500ms', '2h30m15s', '1d1ms', '45s']) {
      expect(exactDuration(parseDuration(text))).toBe(text);
    }
  });

  it('colours only on a TTY, never with --no-color or NO_COLOR, and aligns by visible width', () => {
    expect(Style.for({ isTTY: true }, false, {}).colour).toBe(true);
    expect(Style.for({ isTTY: false }, false, {}).colour).toBe(false);
    expect(Style.for({}, false, {}).colour).toBe(false);
    expect(Style.for({ isTTY: true }, true, {}).colour).toBe(false);
    expect(Style.for({ isTTY: true }, false, { NO_COLOR: '1' }).colour).toBe(false);
    interface Row {
      k: string;
      s?: string;
    }
    const rows: Row[] = [
      { k: 'a', s: 'confirmed' },
      { k: 'bbbb', s: 'failed' },
    ];
    const columns: Column<Row>[] = [
      { header: 'key', value: (r) => r.k },
      { header: 'state', value: (r) => r.s ?? '', tone: (r) => (r.s === 'failed' ? 'bad' : null) },
      { header: 'end', value: () => 'x' },
    ];
    const coloured = renderTable(columns, rows, new Style(true));
    const plain = renderTable(columns, rows, new Style(false));
    expect(coloured).toContain('\x1b[31mfailed\x1b[39m');
    // eslint-disable-next-line no-control-regex -- removing the colour to compare
    expect(coloured.replace(/\x1b\[\d+m/g, '')).toBe(plain);
    expect(plain).toBe('KEY   STATE      END\na     confirmed  x\nbbbb  failed     x\n');
    // A key with an escape sequence is shown, not obeyed.
    expect(renderTable(columns.slice(0, 1), [{ k: 'x\x1b[2Jy' }], new Style(false))).toContain(
      'x?[2Jy',
    );
  });
});
