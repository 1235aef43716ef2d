import { join } from 'node:path';
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { checkJournalWithin } from '../../src/cli/journal-check.js';
import type { NewCommand } from '../../src/core/journal.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import {
  failingDisk,
  journalLeftByKilledDaemon,
  type FailingDisk,
} from '../helpers/failing-disk.js';
import { tempDir } from '../helpers/fixtures.js';
import { tmpfsAvailable } from '../reliability/support.js';
import { sluicectl } from './helpers.js';

/**
 * sluicectl's check of the whole journal (src/cli/journal-check.ts) on a disk that fails reads of
 * it (an I/O error, a failing sector): a real one, an ext4 image on a loop device cut short inside
 * the file (test/helpers/failing-disk.ts), whose reads past the cut the kernel fails with EIO. The
 * check took a read error that stopped it for a whole journal (exit 0, nothing said), and pages it
 * could not get for damage; it must say that the disk failed to read the journal, exit 1, as
 * the daemon's start check refuses it (exit 3, "cannot be read: an I/O error").
 *
 * sluicectl the process, on a journal whose later pages the disk cannot read: the read `show`
 * makes succeeds, and the check after it reports the pages it could not get. The check that an
 * error stops is run as sluicectl runs it (checkJournalWithin, its process, real SQLite) on a
 * killed daemon's journal whose log the disk cannot read past a point: sluicectl's own read opens
 * the journal first and meets the error there (SQLite reads the whole log at the first open), so
 * the check runs after a read that succeeded only while another connection keeps the log's index
 * (a running daemon) and the log's pages are out of the page cache, which this disk cannot
 * arrange (it is mounted again to cut it).
 *
 * sluicectl's own reads and open meet the failed reads too, and SQLite ends them with
 * SQLITE_CORRUPT, as for a damaged page: `stuck`, `list` and a `show` on such a journal said it
 * was damaged, and sluicectl on a killed daemon's journal whose log the disk cannot read said
 * "cannot open the journal: SQLITE_CORRUPT". The check of the whole file tells the two apart:
 * they must say that the disk failed to read the journal, exit 1. The lines said before that
 * verdict, of the commands, histories and indexes a read went round, called those pages damaged:
 * they must not, as the check has not yet said which it is.
 */

const quoted = (s: string): string => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

function command(key: string): NewCommand {
  const now = Date.now();
  return {
    scope: 'ops',
    key,
    fingerprint: `f-${key}`,
    device: 'inlet-valve',
    action: 'close',
    position: null,
    issuedAt: now,
    issuedAtSource: 'issuer',
    ttlMs: 30_000,
    deadline: now - 1,
    intake: 'test',
    acceptedAt: now,
  };
}

describe.runIf(tmpfsAvailable())('sluicectl on a journal the disk cannot read', () => {
  let disk: FailingDisk | null = null;
  let site: { dir: string; cleanup: () => void } | null = null;
  afterEach(() => {
    disk?.remove();
    disk = null;
    site?.cleanup();
    site = null;
  });

  /**
   * A journal of 2,000 open commands (key-0 … key-1999), closed, its log copied into the file,
   * on a disk that fails reads of it from `from` of its length (its last fifth by default):
   * quick_check reports each page it cannot read.
   */
  function closedJournalCutShort(from = 0.8): string {
    site = tempDir('sluice-ctl-unreadable-');
    const source = join(site.dir, 'source.db');
    const journal = SqliteJournal.open({ path: source, groupCommit: true });
    for (let i = 0; i < 2_000; i++) journal.claim(command(`key-${i}`));
    journal.close();
    const data = readFileSync(source);
    disk = failingDisk(site.dir, [{ name: 'journal.db', data }]);
    disk.failReadsFrom('journal.db', data.length * from);
    return join(disk.folder, 'journal.db');
  }

  /** sluicectl's line saying the disk failed to read the journal at `path`, then `what`. */
  const unreadableLine = (path: string, what: string): RegExp =>
    new RegExp(
      `^sluicectl: the journal ${quoted(path)} cannot be read: an I/O error, the disk failed to read part of it or of its -wal file \\(SQLite's check: "[^"]*"\\): ${quoted(what)}\\..*journalctl -k.*restore the journal from a backup onto a sound disk`,
    );

  it('show of a key not found: the check says the disk failed to read the journal, not that it is damaged, exit 1', async () => {
    const path = closedJournalCutShort();

    const run = await sluicectl(['--journal', path, 'show', 'no-such-key']);
    expect(run.code).toBe(1);
    expect(run.stdout).toBe('');
    expect(run.stderr).toMatch(
      new RegExp(
        `^sluicectl: no command with key "no-such-key"; the journal ${quoted(path)} cannot be read: an I/O error, the disk failed to read part of it or of its -wal file \\(SQLite's check: "[^"]*page \\d+: unable to get the page\\. error code=8458[^"]*"\\): a command on what it failed to read may be the one asked for\\..*journalctl -k.*restore the journal from a backup onto a sound disk`,
      ),
    );
    expect(run.stderr).not.toContain('damaged');
  }, 60_000);

  it('stuck and list whose read fails on what the disk cannot read say so, not that the journal is damaged, exit 1', async () => {
    const path = closedJournalCutShort();
    for (const args of [['stuck'], ['list'], ['show', 'key-1999']]) {
      const run = await sluicectl(['--journal', path, ...args]);
      expect(run.code, args.join(' ')).toBe(1);
      expect(run.stdout, args.join(' ')).toBe('');
      expect(run.stderr, args.join(' ')).toMatch(
        unreadableLine(
          path,
          'the read failed on what it could not read, so nothing could be shown; the command asked for, or the ones listed, may be on it',
        ),
      );
      expect(run.stderr, args.join(' ')).not.toContain('damaged');
    }
  }, 90_000);

  it('show of a command read around what the disk cannot read ends saying so, not that the journal is damaged', async () => {
    const path = closedJournalCutShort();
    const run = await sluicectl(['--journal', path, 'show', 'key-0']);
    expect(run.code).toBe(1);
    // What could be read is shown.
    expect(run.stdout).toMatch(/^Command key-0 {2}\(scope ops\)$/m);
    const last = run.stderr.trimEnd().split('\n').at(-1) ?? '';
    expect(last).toMatch(
      unreadableLine(
        path,
        'what is shown is what it could read, and the commands on what it failed to read are missing from it',
      ),
    );
  }, 60_000);

  it('the lines said before the verdict, of what the reads went round, do not call the journal damaged', async () => {
    // Its last twentieth unreadable: list and show read around it, and say what they missed.
    const path = closedJournalCutShort(0.95);
    for (const args of [['list'], ['show', 'key-0'], ['show', 'key-1999']]) {
      // A loaded machine's check is not stopped short of its verdict.
      const run = await sluicectl(['--journal', path, '--check-within', '60s', ...args]);
      expect(run.code, args.join(' ')).toBe(1);
      const lines = run.stderr.trimEnd().split('\n');
      expect(lines.at(-1), args.join(' ')).toMatch(
        unreadableLine(
          path,
          'what is shown is what it could read, and the commands on what it failed to read are missing from it',
        ),
      );
      // Each went round pages it could not read, and said so before the verdict.
      expect(lines.slice(0, -1).join('\n'), args.join(' ')).toMatch(
        /could not read|could not be read/,
      );
      expect(run.stderr, args.join(' ')).not.toContain('damaged');
      expect(run.stdout, args.join(' ')).not.toContain('damaged');
    }
  }, 90_000);

  for (const beforeFirstCheckpoint of [false, true]) {
    it(`a killed daemon's journal${beforeFirstCheckpoint ? ' (before its first checkpoint)' : ''} whose log the disk cannot read: the open says so, not SQLITE_CORRUPT, exit 1`, async () => {
      site = tempDir('sluice-ctl-unreadable-');
      const files = await journalLeftByKilledDaemon(
        join(site.dir, 'source.db'),
        beforeFirstCheckpoint,
      );
      disk = failingDisk(site.dir, files);
      disk.failReadsFrom('journal.db-wal', files[1]!.data.length / 2);
      const path = join(disk.folder, 'journal.db');

      const run = await sluicectl(['--journal', path, 'stuck']);
      expect(run.code).toBe(1);
      expect(run.stdout).toBe('');
      expect(run.stderr).toMatch(
        unreadableLine(
          path,
          'nothing could be shown; the command asked for, or the ones listed, may be on what it failed to read',
        ),
      );
      expect(run.stderr).not.toContain('SQLITE_CORRUPT');
      expect(run.stderr).not.toContain('damaged');
    }, 60_000);
  }

  it('the check stopped by a read of the log that failed finds the journal unreadable, not whole', async () => {
    site = tempDir('sluice-ctl-unreadable-');
    const files = await journalLeftByKilledDaemon(join(site.dir, 'source.db'));
    const wal = files[1]!.data.length;
    disk = failingDisk(site.dir, files);
    disk.failReadsFrom('journal.db-wal', wal / 2);

    expect(await checkJournalWithin(join(disk.folder, 'journal.db'), 30_000)).toEqual({
      kind: 'unreadable',
      found: 'SQLITE_IOERR_CORRUPTFS: disk I/O error',
    });
  }, 60_000);
});
