import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, it } from 'vitest';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { stuckItems } from '../../src/views/open-commands.js';
import { tempDir } from '../helpers/fixtures.js';
import { configYaml, sluicectlInProcess } from './helpers.js';

/**
 * Open commands accepted before the gateway's wall clock stepped back (a PTP or NTP correction)
 * have accepted_at later than now. The status page lists its open commands, and `sluicectl show`
 * (the page's command page too) judges an open one, with no age bound; the bound was applied all
 * the same (`now - acceptedAt >= 0`), so such a command was left out: the page listed none while
 * its band counted them, and `show` said only "not settled yet (0ms open)", with nothing of what
 * it waits behind. A real journal file written by SqliteJournal, and sluicectl's main run on it
 * (the clock step is the journal's times a minute ahead of this process's clock).
 *
 * `sluicectl stuck --older-than D` left such commands out too (their age below any bound), though
 * they may be older than it: it must list them, saying their age is unknown; and `show` said
 * "(0ms open)", an age the clock cannot tell: it must say that the age is unknown and why.
 * `sluicectl list` gave that age as "0ms ago": it must say it unknown as `stuck` does, its
 * `--json` giving `acceptedAheadMs`.
 */

const STEP_MS = 60_000;

let cleanup: () => void;
let configPath: string;
let journalPath: string;

beforeAll(() => {
  let dir: string;
  ({ dir, cleanup } = tempDir('sluice-clock-step-'));
  journalPath = join(dir, 'state', 'journal.db');
  configPath = join(dir, 'sluice.yaml');
  writeFileSync(configPath, configYaml('state'));
  const journal = SqliteJournal.open({ path: journalPath });
  try {
    // The clock read a minute more when both were taken; the first holds the valve.
    const accepted = Date.now() + STEP_MS;
    for (const [i, key] of ['before-step-1', 'before-step-2'].entries()) {
      journal.claim({
        scope: 'plant',
        key,
        fingerprint: `fp-${key}`,
        device: 'inlet-valve',
        action: i === 0 ? 'open' : 'close',
        position: null,
        issuedAt: accepted + i,
        issuedAtSource: 'gateway',
        ttlMs: 300_000,
        deadline: accepted + i + 300_000,
        intake: 'https',
        acceptedAt: accepted + i,
      });
    }
  } finally {
    journal.close();
  }
});

afterAll(() => {
  cleanup();
});

it("lists open commands accepted before the clock stepped back in the page's list", () => {
  const journal = SqliteJournal.open({ path: journalPath });
  try {
    const timings = new Map([
      ['inlet-valve', { confirmTimeoutMs: 8_000, unreachableGraceMs: 15_000 }],
    ]);
    // As the page lists them (ui-views.ts, commands(): no age bound).
    const items = stuckItems(journal.listOpen(), 0, Date.now(), timings, journal);
    expect(items.map((i) => i.key)).toEqual(['before-step-1', 'before-step-2']);
    expect(items[1]?.waitsBehind.map((a) => a.key)).toEqual(['before-step-1']);
  } finally {
    journal.close();
  }
});

it('`show` says what such a command waits behind', async () => {
  const json = await sluicectlInProcess([
    '--config',
    configPath,
    'show',
    'before-step-2',
    '--json',
  ]);
  expect(json.code, json.stderr).toBe(0);
  const open = json.json<{ open: { waitsBehind: { key: string }[] } | null }>().open;
  expect(open?.waitsBehind.map((a) => a.key)).toEqual(['before-step-1']);
  const text = await sluicectlInProcess([
    '--config',
    configPath,
    '--no-color',
    'show',
    'before-step-2',
  ]);
  expect(text.stdout).toContain('before-step-1 (accepted) on its device');
});

it('`stuck --older-than` lists them, their age unknown, and `show` claims no age for them', async () => {
  const json = await sluicectlInProcess([
    '--config',
    configPath,
    'stuck',
    '--older-than',
    '30s',
    '--json',
  ]);
  const listed = json.json<{ commands: { key: string; acceptedAheadMs: number | null }[] }>();
  expect(listed.commands.map((c) => c.key)).toEqual(['before-step-1', 'before-step-2']);
  for (const c of listed.commands) {
    expect(c.acceptedAheadMs).toBeGreaterThan(STEP_MS - 30_000);
    expect(c.acceptedAheadMs).toBeLessThanOrEqual(STEP_MS + 1);
  }
  const text = await sluicectlInProcess([
    '--config',
    configPath,
    '--no-color',
    'stuck',
    '--older-than',
    '30s',
  ]);
  expect(text.code, text.stderr).toBe(3);
  const rows = text.stdout.split('\n').filter((l) => l.startsWith('before-step-'));
  expect(rows.map((l) => l.split(/\s+/)[0])).toEqual(['before-step-1', 'before-step-2']);
  for (const row of rows) expect(row).toMatch(/ unknown \(accepted in \d+s: clock set back\) /);
  expect(text.stdout).toContain(
    "2 open commands older than 30s or of unknown age (2 accepted ahead of the gateway's clock, which was set back since: listed whatever their age); 0 stuck",
  );

  const show = await sluicectlInProcess([
    '--config',
    configPath,
    '--no-color',
    'show',
    'before-step-1',
  ]);
  expect(show.code, show.stderr).toBe(0);
  expect(show.stdout).not.toContain('0ms open');
  expect(show.stdout).toMatch(
    /still accepted: not settled yet \(open for an unknown time: accepted \d+s ahead of the gateway's clock, which was set back since\)/,
  );
});

it('`list` says their age is unknown, as `stuck` does, not "0ms ago"', async () => {
  const json = await sluicectlInProcess(['--config', configPath, 'list', '--json']);
  expect(json.code, json.stderr).toBe(0);
  const listed = json.json<{ commands: { key: string; acceptedAheadMs: number | null }[] }>();
  expect(listed.commands.map((c) => c.key).sort()).toEqual(['before-step-1', 'before-step-2']);
  for (const c of listed.commands) {
    expect(c.acceptedAheadMs).toBeGreaterThan(STEP_MS - 30_000);
    expect(c.acceptedAheadMs).toBeLessThanOrEqual(STEP_MS + 1);
  }
  const text = await sluicectlInProcess(['--config', configPath, '--no-color', 'list']);
  expect(text.code, text.stderr).toBe(0);
  const rows = text.stdout.split('\n').filter((l) => l.startsWith('before-step-'));
  expect(rows).toHaveLength(2);
  for (const row of rows) {
    expect(row).toMatch(/ unknown \(accepted in \d+s: clock set back\) /);
    expect(row).not.toContain('0ms ago');
  }
});
