import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { NewCommand } from '../../src/core/journal.js';
import { openConnection } from '../../src/journal/connection.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { tempDir } from '../helpers/fixtures.js';
import { issuerCommand } from '../helpers/new-command.js';

/**
 * What SQLite does with each of the journal's statements, from its own query planner
 * (EXPLAIN QUERY PLAN) on a real journal: none walks the whole commands or events table, which
 * at a million retained commands hold the event loop for tenths of a second (the sweep's list of
 * the open commands, run every second, did: 0.4–0.7 s each time). A scan of an index that holds
 * only the open commands is fine; a scan of the table, or of an index of every row, is not.
 */

let dir: string;
let cleanup: () => void;

beforeEach(() => {
  ({ dir, cleanup } = tempDir('sluice-plans-'));
});
afterEach(() => {
  cleanup();
});

const T0 = Date.parse('2026-12-04T17:00:00.000Z');

function command(key: string, acceptedAt: number): NewCommand {
  return issuerCommand(key, 'inlet-valve', acceptedAt);
}

/** The indexes over the open commands alone (partial: `WHERE state IN ('accepted', 'dispatched')`). */
const OPEN_ONLY = ['commands_open', 'commands_open_device'];

describe('the journal’s statements, as SQLite plans them', () => {
  it('walk no whole table and no index of every row', () => {
    const path = join(dir, 'journal.db');
    // A journal with commands in it, settled and open, as the planner would meet it.
    const journal = SqliteJournal.open({ path, busyTimeoutMs: 1000 });
    for (let i = 0; i < 50; i++) {
      const { record } = journal.claim(command(`k${i}`, T0 + i));
      if (i % 10 !== 0) {
        journal.settle(record, 'accepted', {
          to: 'rejected',
          code: 'STALE_COMMAND',
          faultCode: null,
          observed: null,
          detail: 'test',
          at: T0 + i,
          intake: 'https',
        });
      }
    }
    journal.close();

    const c = openConnection({ path, busyTimeoutMs: 1000 });
    try {
      const plans: Record<string, string> = {};
      for (const [name, statement] of Object.entries(c.stmts)) {
        const source = statement.source;
        const named = [...source.matchAll(/@(\w+)/g)].map((m) => m[1] ?? '');
        const plan = c.db.prepare(`EXPLAIN QUERY PLAN ${source}`);
        const rows = (
          named.length > 0
            ? plan.all(Object.fromEntries(named.map((n) => [n, null])))
            : plan.all(...Array<null>((source.match(/\?/g) ?? []).length).fill(null))
        ) as { detail: string }[];
        plans[name] = rows.map((r) => r.detail).join(' | ');
      }
      // The list of open commands the sweep reads every second among them.
      expect(plans.openRefs).toContain('commands_open');
      // Recovery's stops since the oldest open command: the rows claimed since, by rowid.
      expect(plans.stopsSince).toBe('SEARCH commands USING INTEGER PRIMARY KEY (rowid>?)');
      // The periodic sweep's page: a seek in the device's range and its rows, no sort of every
      // open command of the device (sweep-open-backlog.test.ts).
      expect(plans.openPage).toBe(
        'SEARCH commands USING INDEX commands_open_device (device=? AND seq=? AND rowid>?)',
      );
      // The sweep's pass over the dispatched commands: a seek past the device's backlog (its
      // entries without a sequence number) and the page's rows (sweep-dispatched-backlog.test.ts).
      expect(plans.dispatchedPage).toBe(
        'SEARCH commands USING INDEX commands_open_device (device=? AND seq>?)',
      );
      expect(plans.nextOpenDevice).toBe(
        'SEARCH commands USING INDEX commands_open_device (device>?)',
      );
      // The open commands at a glance (Sweep.openCommands): counted through the partial indexes,
      // a count by acceptance a range of commands_open, the earliest a seek, the rows past their
      // deadline read in the order of the device's index
      // (open-commands-backlog.test.ts).
      expect(plans.openSince).toBe('SEARCH commands USING INDEX commands_open (accepted_at>?)');
      expect(plans.openCounts).toContain('SEARCH commands USING INDEX commands_open');
      expect(plans.openDispatched).toBe('SCAN commands USING INDEX commands_open_device');
      // What the stuck rule judges (countOpen), one device at a time: a range of its entries.
      expect(plans.pastDeadlineCount).toBe(
        'SEARCH commands USING INDEX commands_open_device (device=?)',
      );
      expect(plans.pastDeadlinePage).toContain(
        'SEARCH commands USING INDEX commands_open_device (device=?)',
      );
      expect(plans.dispatchedOf).toContain(
        'SEARCH commands USING INDEX commands_open_device (device=? AND seq>?)',
      );
      const walks = Object.entries(plans).filter(([, plan]) =>
        plan.split(' | ').some((step) => {
          const scan = /^SCAN (commands|events)( USING (COVERING )?INDEX (\w+))?/.exec(step);
          return scan !== null && !OPEN_ONLY.includes(scan[4] ?? '');
        }),
      );
      expect(walks).toEqual([]);
    } finally {
      c.db.close();
    }
  });

  it('lists the open commands in the journal’s order, whatever their acceptance times say', () => {
    const path = join(dir, 'journal.db');
    const journal = SqliteJournal.open({ path, busyTimeoutMs: 1000 });
    try {
      // Accepted at times that go back (a gateway clock stepped back between the claims).
      const keys = ['a', 'b', 'c', 'd'];
      keys.forEach((key, i) => journal.claim(command(key, T0 - 1000 * i)));
      expect(journal.listOpenRefs().map((r) => r.key)).toEqual(keys);
    } finally {
      journal.close();
    }
  });
});
