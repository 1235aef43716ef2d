import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { journalWithDamagedKeyIndex } from '../helpers/damaged-journal.js';
import { tempDir } from '../helpers/fixtures.js';
import BetterSqlite3 from 'better-sqlite3';
import { sluicectl, sluicectlInProcess } from './helpers.js';

/**
 * A journal with one damaged page (a torn write, a failing SD card): SQLite meets it only when a
 * statement reads it, so `list`, `stuck` and a `show` that finds nothing read other pages and
 * would print what they found, exit 0, with the commands on the damaged page missing without a
 * word. sluicectl checks the whole file after its read (quick_check, within --check-within /
 * SLUICECTL_CHECK_WITHIN, 2 s by default): the readable rows are printed as ever (stdout stays
 * valid JSON with --json), then one clear warning on stderr naming the file, SQLite's finding and
 * what to do, exit 1. A `show` of a command found needs no check (it read its rows). When the
 * check's budget runs out it is stopped and one line says the file was not checked in full; the
 * exit code is the command's own. The journal is written by the journal's own code; the damage is
 * garbage in one leaf of the key index, as test/daemon/damaged-journal.test.ts makes it; the file
 * is left as it was.
 *
 * A journal whose damage SQLite meets at the open (its schema's page): the open failed with
 * SQLite's words alone ("cannot open the journal …: database disk image is malformed"), no code
 * and nothing of what to do, where a read meeting damage says JOURNAL_DAMAGED with the way out;
 * once the check finds the damage, the open must say it as a read does.
 */

let dir: string;
let cleanup: () => void;
let path: string;
let damaged: Buffer;

beforeAll(() => {
  ({ dir, cleanup } = tempDir('sluice-ctl-damaged-'));
  path = join(dir, 'journal.db');
  journalWithDamagedKeyIndex(path, (i) => (i === 0 ? 'outlet-valve' : 'inlet-valve'));
  damaged = readFileSync(path);
});

afterAll(() => {
  cleanup();
});

const quoted = (): string => path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

const damagedWarning = (): RegExp =>
  new RegExp(
    `^sluicectl: the journal ${quoted()} is damaged \\(SQLite's check: "[^"]+"\\): what is shown is what its readable pages hold, and the commands on its damaged pages are missing from it\\..*restore the journal from a backup, or move it aside with its -wal and -shm files`,
    'm',
  );

const notChecked = (): RegExp =>
  new RegExp(
    `^sluicectl: the journal ${quoted()} \\(\\d+ kB\\) was not checked in full for damaged pages within 1ms: .*--check-within`,
    'm',
  );

describe('sluicectl on a journal with a damaged page', () => {
  it('list: the readable rows, then the damage on stderr, exit 1', async () => {
    const run = await sluicectlInProcess(['--journal', path, 'list', '--limit', '5']);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/^KEY/);
    expect(run.stdout.match(/key-\d+/g)).toHaveLength(5);
    expect(run.stderr).toMatch(damagedWarning());
    expect(run.stderr.match(/^sluicectl:/gm)).toHaveLength(2); // the damage, and "more match"
  });

  it('list --device --json: stdout is the rows as JSON, the damage on stderr, exit 1', async () => {
    const run = await sluicectlInProcess([
      '--journal',
      path,
      '--json',
      'list',
      '--device',
      'outlet-valve',
    ]);
    expect(run.code).toBe(1);
    expect(run.json<{ commands: { key: string }[] }>().commands.map((c) => c.key)).toEqual([
      'key-0',
    ]);
    expect(run.stderr).toMatch(damagedWarning());
  });

  it('stuck: what it read (no open command older than 30s), then the damage, exit 1', async () => {
    // Monitoring's case: a stuck command on the damaged pages would be missing from this answer.
    const run = await sluicectlInProcess(['--journal', path, '--json', 'stuck']);
    expect(run.code).toBe(1);
    expect(run.json()).toMatchObject({ olderThanMs: 30_000, stuck: 0, commands: [] });
    expect(run.stderr).toMatch(damagedWarning());
  });

  it('show of a command found: answered from its rows, no check of the whole file', async () => {
    const run = await sluicectlInProcess(['--journal', path, '--json', 'show', 'key-0']);
    expect(run.code).toBe(0);
    expect(run.json<{ key: string; device: string }>()).toMatchObject({
      key: 'key-0',
      device: 'outlet-valve',
    });
    expect(run.stderr).not.toMatch(/damaged|checked/);
  });

  it('show of a key not found: checked, its page may hold the key; exit 1', async () => {
    const run = await sluicectlInProcess(['--journal', path, 'show', 'no-such-key']);
    expect({ code: run.code, stdout: run.stdout }).toEqual({ code: 1, stdout: '' });
    expect(run.stderr).toMatch(
      new RegExp(
        `^sluicectl: no command with key "no-such-key"; the journal ${quoted()} is damaged \\(SQLite's check: "[^"]+"\\): a command on its damaged pages may be the one asked for\\..*restore the journal from a backup`,
      ),
    );
  });

  it.each([
    ['--check-within', ['--check-within', '1ms'], {}],
    ['SLUICECTL_CHECK_WITHIN', [], { SLUICECTL_CHECK_WITHIN: '1ms' }],
  ] as const)(
    'the check past its budget (%s): stopped, said in one line, the rows and exit code as they are',
    async (_name, options, env) => {
      const list = await sluicectlInProcess(
        ['--journal', path, ...options, 'list', '--limit', '3'],
        {
          env,
        },
      );
      expect(list.code).toBe(0);
      expect(list.stdout.match(/key-\d+/g)).toHaveLength(3);
      expect(list.stderr).toMatch(notChecked());
      expect(list.stderr).not.toMatch(/damaged \(/);
      const stuck = await sluicectlInProcess(['--journal', path, ...options, 'stuck'], { env });
      expect(stuck.code).toBe(0);
      expect(stuck.stdout).toBe('No open commands older than 30s.\n');
      expect(stuck.stderr).toMatch(notChecked());
    },
  );

  it('the binary, as a process: rows, the damage, exit 1; the file is left as it was', async () => {
    const run = await sluicectl(['--journal', path, 'list']);
    expect(run.code).toBe(1);
    expect(run.stdout.match(/key-\d+/g)?.length).toBeGreaterThan(50);
    expect(run.stderr).toMatch(damagedWarning());
    expect(readFileSync(path).equals(damaged)).toBe(true);
  });
});

/**
 * The damage on a page of the commands table itself, met by the read: SQLite ends the statement
 * there ("database disk image is malformed"), so nothing can be shown as a whole answer. It said
 * "cannot read the journal …: SQLITE_CORRUPT" with neither that the file is damaged nor what to
 * do. Now: JOURNAL_DAMAGED, SQLite's words, the same advice, exit 1.
 */
describe('sluicectl on a journal whose read meets the damaged page', () => {
  let tableDir: string;
  let tableCleanup: () => void;
  let tablePath: string;

  beforeAll(() => {
    ({ dir: tableDir, cleanup: tableCleanup } = tempDir('sluice-ctl-damaged-table-'));
    tablePath = join(tableDir, 'journal.db');
    // The middle leaf of the commands table: the 2,000 rows are the same size, so it holds
    // commands around key-1000.
    journalWithDamagedKeyIndex(tablePath, () => 'inlet-valve', 'commands');
  });

  afterAll(() => {
    tableCleanup();
  });

  it('stuck, reading every open command: the readable ones listed, the others counted, the damage, exit 1', async () => {
    // Which valves had a command in flight is what an operator needs from a failing card: the
    // read met the damaged page and listed nothing; the open commands are read one by one.
    const run = await sluicectlInProcess([
      '--journal',
      tablePath,
      '--json',
      'stuck',
      '--older-than',
      '0s',
    ]);
    expect(run.code).toBe(1);
    const answer = run.json<{ unreadable: number; commands: { key: string }[] }>();
    expect(answer.unreadable).toBeGreaterThan(0);
    // Every open command is either listed or counted, none twice: the 2,000 the journal holds.
    const keys = new Set(answer.commands.map((c) => c.key));
    expect(keys.size).toBe(answer.commands.length);
    expect(answer.commands.length + answer.unreadable).toBe(2_000);
    expect(keys.has('key-0')).toBe(true);
    expect(keys.has('key-1999')).toBe(true);
    expect(run.stderr).toMatch(
      new RegExp(
        `^sluicectl: ${answer.unreadable} open commands are on pages of the journal SQLite could not read`,
        'm',
      ),
    );
    expect(run.stderr).toMatch(
      /is damaged \(SQLite's check: "[^"]+"\): what is shown is what its readable pages hold/,
    );

    // Past the check's budget the exit still says the file is damaged: the read met it.
    const quick = await sluicectlInProcess([
      '--journal',
      tablePath,
      '--check-within',
      '1ms',
      'stuck',
      '--older-than',
      '0s',
    ]);
    expect(quick.code).toBe(1);
    expect(quick.stdout).toMatch(/^KEY/);
    expect(quick.stderr).toMatch(/SQLite could not read/);
  });

  it('show of a command whose row is on the damaged page: its key and readable history, what could not be read, exit 1', async () => {
    // Its row cannot be read; its key and id are in the key index and its history on pages of
    // its own. It showed nothing but the damage.
    const key = unreadableKey(tablePath, 'SELECT * FROM commands WHERE id = ?');
    const run = await sluicectl(['--journal', tablePath, 'show', key]);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(new RegExp(`^Command ${key}  \\(scope ops\\)\n`));
    expect(run.stdout).toMatch(/row +UNREADABLE: on a page of the journal SQLite could not read/);
    expect(run.stdout).toMatch(
      /History \(the entries that could be read\)\n.*\n.*test +→ accepted +accepted/,
    );
    expect(run.stderr).toMatch(
      new RegExp(
        `^sluicectl: the row of command "${key}" \\(scope ops\\) is on a page of the journal SQLite could not read`,
        'm',
      ),
    );
    expect(run.stderr).toMatch(metByShow(tablePath));
    const json = await sluicectl(['--journal', tablePath, '--json', 'show', key]);
    expect(json.code).toBe(1);
    expect(json.json()).toMatchObject({
      key,
      scope: 'ops',
      row: 'unreadable',
      history: [{ from: null, to: 'accepted', intake: 'test', detail: 'accepted' }],
    });
  });

  it('show of a command beside the damaged page: shown whole, the open commands it could not read counted, exit 1', async () => {
    const run = await sluicectl(['--journal', tablePath, 'show', 'key-0']);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/^Command key-0 /);
    expect(run.stdout).toMatch(/device +inlet-valve/);
    expect(run.stderr).toMatch(
      /^sluicectl: \d+ open commands are on pages of the journal SQLite could not read: what it waits behind may miss them$/m,
    );
    expect(run.stderr).toMatch(/is damaged \(SQLite, reading it: /);
  });

  it('the file is left as it was by the reads', () => {
    const before = readFileSync(tablePath);
    return sluicectlInProcess(['--journal', tablePath, 'stuck']).then(() => {
      expect(readFileSync(tablePath).equals(before)).toBe(true);
    });
  });
});

/** The first key (key-N, row id N + 1) whose read by `sql` (one row id) meets the damaged page. */
function unreadableKey(path: string, sql: string): string {
  const db = new BetterSqlite3(path, { readonly: true });
  try {
    const statement = db.prepare(sql);
    for (let id = 1; id <= 2_000; id++) {
      try {
        statement.all(id);
      } catch {
        return `key-${id - 1}`;
      }
    }
    throw new Error(`no read by ${sql} meets the damage`);
  } finally {
    db.close();
  }
}

/** show's last line on a damaged journal: the damage its read met, what to do. */
function metByShow(path: string): RegExp {
  return new RegExp(
    `^sluicectl: the journal ${path.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is damaged \\(SQLite, reading it: "SQLITE_CORRUPT[^"]*: database disk image is malformed"\\): what is shown is what its readable pages hold.*restore the journal from a backup, or move it aside with its -wal and -shm files`,
    'm',
  );
}

/**
 * `sluicectl show` of a command on a journal whose damaged page is an index (the key index, the
 * open commands' index) or its history's: the statement that read through the page ended there
 * and show said only that the journal was damaged. Now the command is shown from what can be
 * read (its row through the table, its history entry by entry, judged alone when its device's
 * open commands cannot be listed), each part that could not be read said on stderr, exit 1.
 * Real journals damaged as above, the sluicectl binary as a process.
 */
describe('sluicectl show on a journal whose damaged page is an index or a history', () => {
  let here: string;
  let done: () => void;
  const journals = new Map<string, string>();

  beforeAll(() => {
    ({ dir: here, cleanup: done } = tempDir('sluice-ctl-damaged-show-'));
    for (const part of ['commands_key', 'events', 'commands_open']) {
      const file = join(here, `${part}.db`);
      journalWithDamagedKeyIndex(file, () => 'inlet-valve', part);
      journals.set(part, file);
    }
  });

  afterAll(() => {
    done();
  });

  const journal = (part: string): string => {
    const file = journals.get(part);
    if (file === undefined) throw new Error(`no journal for ${part}`);
    return file;
  };

  it('the key index damaged where the key is: found through the table, shown whole, exit 1', async () => {
    const path = journal('commands_key');
    const key = unreadableKey(
      path,
      "SELECT id FROM commands INDEXED BY commands_key WHERE key = 'key-' || (? - 1) AND scope = 'ops'",
    );
    const run = await sluicectl(['--journal', path, 'show', key]);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(new RegExp(`^Command ${key}  \\(scope ops\\)`));
    expect(run.stdout).toMatch(/device +inlet-valve/);
    expect(run.stdout).toMatch(/test +received +→ accepted +accepted/);
    expect(run.stderr).toMatch(
      new RegExp(
        `^sluicectl: the journal's key index could not be read where "${key}" is: the command was found by reading the whole commands table$`,
        'm',
      ),
    );
    expect(run.stderr).toMatch(metByShow(path));
  });

  it('its history entry on the damaged page: the command shown, the entry counted, exit 1', async () => {
    const path = journal('events');
    const key = unreadableKey(path, 'SELECT * FROM events WHERE command = ?');
    const run = await sluicectl(['--journal', path, '--json', 'show', key]);
    expect(run.code).toBe(1);
    expect(run.json()).toMatchObject({
      key,
      device: 'inlet-valve',
      state: 'accepted',
      history: [],
      unreadable: [
        '1 entry of its history is on pages of the journal SQLite could not read: not shown below',
      ],
    });
    expect(run.stderr).toMatch(metByShow(path));
  });

  it('the open commands’ index damaged: shown, judged with its device’s open commands found through their other index, said so, exit 1', async () => {
    // It was judged alone ("what it waits behind" unknown): the open commands are also in
    // their index by device (damaged-lists.ts).
    const path = journal('commands_open');
    const run = await sluicectl(['--journal', path, 'show', 'key-5']);
    expect(run.code).toBe(1);
    expect(run.stdout).toMatch(/^Command key-5 /);
    expect(run.stdout).toMatch(/outcome +STUCK: still accepted/);
    expect(run.stdout).toMatch(
      /waiting for +key-0 \(accepted\), key-1 \(accepted\), key-2 \(accepted\) and 2 more on its device/,
    );
    expect(run.stderr).toMatch(
      /^sluicectl: the journal's index of the open commands could not be read: its device's open commands were found through the index of the open commands by device$/m,
    );
    expect(run.stderr).toMatch(metByShow(path));
  });
});

it('a journal whose damage the open meets: the check finds it, and it is said as damage with what to do, exit 1', async () => {
  const { dir: own, cleanup: done } = tempDir('sluice-ctl-damaged-open-');
  try {
    const damagedOpen = join(own, 'journal.db');
    journalWithDamagedKeyIndex(damagedOpen);
    // The schema's page (page 1, past the file's 100-byte header) overwritten with garbage.
    const fd = openSync(damagedOpen, 'r+');
    try {
      writeSync(fd, Buffer.alloc(200, 0x5a), 0, 200, 100);
    } finally {
      closeSync(fd);
    }
    for (const args of [['stuck'], ['list'], ['show', 'key-1']]) {
      const run = await sluicectl(['--journal', damagedOpen, '--check-within', '60s', ...args]);
      expect({ code: run.code, stdout: run.stdout }, args.join(' ')).toEqual({
        code: 1,
        stdout: '',
      });
      expect(run.stderr, args.join(' ')).toMatch(
        new RegExp(
          `^sluicectl: the journal ${damagedOpen.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is damaged \\(SQLite's check: "[^"]+"\\): nothing could be shown; the command asked for, or the ones listed, may be on its damaged pages\\..*restore the journal from a backup, or move it aside with its -wal and -shm files`,
        ),
      );
    }
  } finally {
    done();
  }
}, 60_000);
