import { copyFileSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { damageMiddleLeaf } from '../helpers/damaged-journal.js';
import { tempDir } from '../helpers/fixtures.js';
import { sluicectl, sluicectlInProcess } from './helpers.js';

/**
 * `sluicectl list` and `sluicectl stuck` on a journal with a damaged page (a torn write, a
 * failing SD card) on the way their read goes: a page of the commands table, or of the index the
 * listing reads through (by time, by device, the open commands'). SQLite ends the statement at
 * the page: both showed nothing but the damage. Now they list every command that can be read
 * (each row on its own through the primary key; another index, or the table read whole, when the
 * index is the damaged part), name the commands they could not read, and exit 1, JOURNAL_DAMAGED.
 *
 * One journal written by the journal's own code: 2,000 commands on two valves, one accepted per
 * second, every third one since rejected (the others still open); what it holds is read before
 * the damage, and each case compares what sluicectl shows with that. Each case damages a copy of
 * it as test/helpers/damaged-journal.ts does (one leaf page overwritten with garbage).
 */

interface Held {
  readonly key: string;
  readonly device: string;
  readonly state: string;
}

interface Stuck {
  readonly key: string;
  readonly state: string;
  readonly lastEvent: { readonly detail: string } | null;
}

const COMMANDS = 2_000;

let dir: string;
let cleanup: () => void;
let pristine: string;
/** The journal's commands as read before any damage, newest first. */
let held: Held[];
/** The last entry of each open command's history, read before any damage. */
let lastEvents: Map<string, string>;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('sluice-ctl-damaged-lists-'));
  pristine = join(dir, 'pristine.db');
  const journal = SqliteJournal.open({ path: pristine });
  const now = Date.now();
  for (let i = 0; i < COMMANDS; i++) {
    const acceptedAt = now - (COMMANDS - i) * 1_000;
    const ref = { scope: 'ops', key: `key-${i}` };
    journal.claim({
      ...ref,
      fingerprint: `f-${i}`,
      device: i % 2 === 0 ? 'outlet-valve' : 'inlet-valve',
      action: 'close',
      position: null,
      issuedAt: acceptedAt,
      issuedAtSource: 'issuer',
      ttlMs: 30_000,
      deadline: acceptedAt + 30_000,
      intake: 'test',
      acceptedAt,
    });
    if (i % 3 === 0) {
      journal.settle(ref, 'accepted', {
        to: 'rejected',
        code: 'STALE_COMMAND',
        faultCode: null,
        observed: null,
        detail: 'stale',
        at: acceptedAt + 1,
        intake: 'test',
      });
    }
  }
  held = journal
    .list({ limit: 10 * COMMANDS })
    .map((r) => ({ key: r.key, device: r.device, state: r.state }));
  lastEvents = new Map(
    journal.listOpen().map((r) => [r.key, journal.history(r).at(-1)?.detail ?? 'none']),
  );
  journal.close();
});

afterAll(() => {
  cleanup();
});

/** A copy of the journal with one leaf of each of `parts` (tables, indexes) damaged. */
function damaged(...parts: string[]): string {
  const path = join(dir, `${parts.join('+')}.db`);
  copyFileSync(pristine, path);
  for (const part of parts) damageMiddleLeaf(path, part);
  return path;
}

const keysOf = (rows: readonly { key: string | null }[]): (string | null)[] =>
  rows.map((r) => r.key);

const damagedLine = (path: string): RegExp =>
  new RegExp(
    `^sluicectl: the journal ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is damaged \\(SQLite's check: "[^"]+"\\): what is shown is what its readable pages hold.*restore the journal from a backup`,
    'm',
  );

interface ListJson {
  commands: { key: string; device: string; state: string }[];
  more: boolean;
  unreadable: number;
  unreadableCommands: { key: string | null; scope: string | null }[];
}

interface StuckJson {
  commands: Stuck[];
  unreadable: number;
  unreadableCommands: { key: string | null; scope: string | null }[];
  unreadableHistories: { key: string | null; scope: string | null }[];
}

type Run = Awaited<ReturnType<typeof sluicectlInProcess>>;

/** `list --json --limit 5000` on `path` (in process): exit 1, its answer. */
async function listJson(path: string): Promise<{ run: Run; answer: ListJson }> {
  const run = await sluicectlInProcess(['--journal', path, '--json', 'list', '--limit', '5000']);
  expect(run.code).toBe(1);
  return { run, answer: run.json<ListJson>() };
}

/** `stuck --json --older-than 0s` on `path` (in process): exit 1, its answer. */
async function stuckJson(path: string): Promise<{ run: Run; answer: StuckJson }> {
  const run = await sluicectlInProcess([
    '--journal',
    path,
    '--json',
    'stuck',
    '--older-than',
    '0s',
  ]);
  expect(run.code).toBe(1);
  return { run, answer: run.json<StuckJson>() };
}

/** Listed: what the journal held, in its order, but for those `lost`; nothing else. */
function expectAllBut(answer: ListJson, lost: readonly (string | null)[]): void {
  expect(answer.commands.map(({ key, device, state }) => ({ key, device, state }))).toEqual(
    held.filter((h) => !lost.includes(h.key)),
  );
  expect([...keysOf(answer.commands), ...lost].sort()).toEqual(held.map((h) => h.key).sort());
}

describe('sluicectl list on a journal with a damaged page', () => {
  it('a page of the commands table: every other command listed, newest first, those on it named, exit 1', async () => {
    const path = damaged('commands');
    const { run, answer } = await listJson(path);
    const lost = keysOf(answer.unreadableCommands);
    // One leaf of the table: a few dozen rows, each named by its key.
    expect(lost.length).toBeGreaterThan(0);
    expect(lost.length).toBeLessThan(200);
    expect(answer.unreadable).toBe(lost.length);
    expect(answer.unreadableCommands.every((u) => u.scope === 'ops')).toBe(true);
    expectAllBut(answer, lost);
    expect(answer.more).toBe(false);
    expect(run.stderr).toMatch(
      new RegExp(
        `^sluicectl: ${lost.length} commands are on pages of the journal SQLite could not read: not listed below: "${lost[0]}" \\(scope ops\\), "${lost[1]}" \\(scope ops\\), .* and ${lost.length - 20} more \\(--json names them all\\)$`,
        'm',
      ),
    );
    expect(run.stderr).toMatch(damagedLine(path));

    // --state: the rejected ones of those read; those not read named, their state unknown.
    const rejected = await sluicectl([
      '--journal',
      path,
      'list',
      '--state',
      'rejected',
      '--limit',
      '5000',
    ]);
    expect(rejected.code).toBe(1);
    expect(rejected.stdout.match(/^key-\d+/gm)).toEqual(
      held.filter((h) => h.state === 'rejected' && !lost.includes(h.key)).map((h) => h.key),
    );
    expect(rejected.stderr).toMatch(
      new RegExp(
        `^sluicectl: ${lost.length} commands are on pages of the journal SQLite could not read \\(whether they are rejected is unknown\\): not listed below: "${lost[0]}" \\(scope ops\\)`,
        'm',
      ),
    );
    expect(rejected.stderr).toMatch(damagedLine(path));
  });

  it('the index by time damaged: every command listed from the table, said so, exit 1', async () => {
    const path = damaged('commands_accepted');
    const { run, answer } = await listJson(path);
    expect(answer.commands.map(({ key, device, state }) => ({ key, device, state }))).toEqual(held);
    expect(answer.unreadable).toBe(0);
    expect(run.stderr).toMatch(
      /^sluicectl: the journal's index of the commands by time could not be read: the commands listed were found by reading the whole commands table$/m,
    );
    expect(run.stderr).toMatch(damagedLine(path));
  });

  it('the index by device damaged: the device’s commands listed from the table, said so, exit 1', async () => {
    const path = damaged('commands_device');
    const run = await sluicectlInProcess([
      '--journal',
      path,
      'list',
      '--device',
      'outlet-valve',
      '--limit',
      '5000',
    ]);
    expect(run.code).toBe(1);
    expect(run.stdout.match(/^key-\d+/gm)).toEqual(
      held.filter((h) => h.device === 'outlet-valve').map((h) => h.key),
    );
    expect(run.stderr).toMatch(
      /^sluicectl: the journal's index of the commands by device could not be read: the commands listed were found by reading the whole commands table$/m,
    );
    expect(run.stderr).toMatch(damagedLine(path));
  });

  it('the table and the index by time both damaged: every readable row through the key index, those lost named, exit 1', async () => {
    const path = damaged('commands', 'commands_accepted');
    const { run, answer } = await listJson(path);
    const lost = keysOf(answer.unreadableCommands);
    expect(lost.length).toBeGreaterThan(0);
    expectAllBut(answer, lost);
    expect(run.stderr).toMatch(
      /^sluicectl: the journal's index of the commands by time could not be read: the commands listed were found through the key index, every command read$/m,
    );
  });
});

describe('sluicectl stuck on a journal whose index of the open commands is damaged', () => {
  const open = (): string[] =>
    held
      .filter((h) => h.state === 'accepted')
      .map((h) => h.key)
      .reverse();

  it('found through the open commands by device: every open command listed, said so, exit 1', async () => {
    const path = damaged('commands_open');
    const { run, answer } = await stuckJson(path);
    // Oldest first: every command the journal held open, none settled, none twice.
    expect(keysOf(answer.commands)).toEqual(open());
    expect(answer.commands.every((c) => c.state === 'accepted')).toBe(true);
    expect({ unreadable: answer.unreadable, named: answer.unreadableCommands }).toEqual({
      unreadable: 0,
      named: [],
    });
    expect(run.stderr).toMatch(
      /^sluicectl: the journal's index of the open commands could not be read: the open commands were found through the index of the open commands by device$/m,
    );
    expect(run.stderr).toMatch(damagedLine(path));

    // The binary an operator runs: the table, exit 1 (not 3: the journal is damaged).
    const binary = await sluicectl(['--journal', path, 'stuck', '--older-than', '0s']);
    expect(binary.code).toBe(1);
    expect(binary.stdout.match(/^key-\d+/gm)).toEqual(open());
    expect(binary.stderr).toMatch(damagedLine(path));
  });

  it('both indexes of the open commands damaged: found by reading the table, exit 1', async () => {
    const path = damaged('commands_open', 'commands_open_device');
    const { run, answer } = await stuckJson(path);
    expect(keysOf(answer.commands)).toEqual(open());
    expect(run.stderr).toMatch(
      /^sluicectl: the journal's index of the open commands could not be read: the open commands were found by reading the whole commands table$/m,
    );
    expect(run.stderr).toMatch(damagedLine(path));
  });

  it('a page of the commands table: the open commands on it named, the others listed, exit 1', async () => {
    const path = damaged('commands');
    const { run, answer } = await stuckJson(path);
    const lost = keysOf(answer.unreadableCommands);
    expect(lost.length).toBeGreaterThan(0);
    expect(answer.unreadable).toBe(lost.length);
    expect(keysOf(answer.commands)).toEqual(open().filter((k) => !lost.includes(k)));
    expect([...keysOf(answer.commands), ...lost].sort()).toEqual([...open()].sort());
    expect(run.stderr).toMatch(
      new RegExp(
        `^sluicectl: ${lost.length} open commands are on pages of the journal SQLite could not read: not listed below, whatever their age: "${lost[0]}" \\(scope ops\\)`,
        'm',
      ),
    );
  });

  it('a page of the histories: every open command listed, those whose history entries are on it named, exit 1', async () => {
    // Each command's last event is read from its history: the read of the histories met the
    // page and stuck showed nothing. Now each history is read as far as it can be.
    const path = damaged('events');
    const { run, answer } = await stuckJson(path);
    expect(keysOf(answer.commands)).toEqual(open());
    const named = keysOf(answer.unreadableHistories);
    expect(named.length).toBeGreaterThan(0);
    // Named: those whose entry is gone (their one entry was on the page); the others' last
    // event is the one the journal held.
    for (const c of answer.commands) {
      if (named.includes(c.key)) expect(c.lastEvent).toBeNull();
      else expect(c.lastEvent?.detail).toBe(lastEvents.get(c.key));
    }
    expect(answer.commands.filter((c) => c.lastEvent === null).length).toBe(named.length);
    expect(run.stderr).toMatch(
      new RegExp(
        `^sluicectl: the history of ${named.length} open commands could not be read in full \\(pages of the journal SQLite could not read\\): "${named[0]}" \\(scope ops\\), .*: their last event, and whether they are stuck, are judged from the entries that could be read$`,
        'm',
      ),
    );
    expect(run.stderr).toMatch(damagedLine(path));
  });

  it('the key index damaged: every open command listed with its last event, read through its row id, exit 1', async () => {
    const path = damaged('commands_key');
    const { run, answer } = await stuckJson(path);
    expect(keysOf(answer.commands)).toEqual(open());
    expect(answer.commands.map((c) => c.lastEvent?.detail)).toEqual(
      open().map((k) => lastEvents.get(k)),
    );
    expect(run.stderr).not.toMatch(/could not be read/);
    expect(run.stderr).toMatch(damagedLine(path));
  });

  it('the reads leave the file as it was', async () => {
    const path = damaged('commands_open');
    const before = readFileSync(path);
    await sluicectlInProcess(['--journal', path, 'stuck']);
    await sluicectlInProcess(['--journal', path, 'list']);
    expect(readFileSync(path).equals(before)).toBe(true);
  });
});
