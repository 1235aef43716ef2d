import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ListFilter } from '../../src/core/journal.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { tempDir } from '../helpers/fixtures.js';
import { listed as listedAt } from '../helpers/list-reads.js';
import { issuerCommand as command } from '../helpers/new-command.js';
import { writeSettledJournal } from '../helpers/settled-journal.js';

/**
 * `sluicectl list --state failed|rejected`, and the status page's list filtered to one of those
 * states (both Journal.list; the page's on the daemon's main thread at every command change), on
 * a journal that retains many commands that succeeded, read the few that ended so, not every
 * retained row. Measured as list-open-states.test.ts measures it: this process's `rchar`, the
 * bytes the reading connection's pread calls returned (no mmap in the journal; a fresh
 * connection has no page cached). The whole commands table is tens of MB here (394 MB at a
 * million commands: a second warm, on the daemon's thread, for each change of any command).
 */

const SETTLED = 60_000;
const T0 = Date.now() - 600_000;

let dir: string;
let cleanup: () => void;
let path: string;

function listed(
  filter: ListFilter,
  read: 'list' | 'listReadable' = 'list',
): { keys: string[]; bytes: number } {
  return listedAt(path, filter, read);
}

beforeAll(() => {
  ({ dir, cleanup } = tempDir('sluice-list-unsuccessful-'));
  path = join(dir, 'journal.db');
  // Commands that succeeded on inlet-valve (confirmed, an hour old), then ten more on two
  // devices: bad-0..bad-7 settled failed (even) or rejected (odd), bad-8 and bad-9 accepted at
  // the same moment as bad-7 and settled failed (the newer row first at the same time), and
  // one confirmed among them.
  writeSettledJournal(path, SETTLED, 'inlet-valve');
  const journal = SqliteJournal.open({ path });
  try {
    for (let i = 0; i < 10; i++) {
      const device = i % 3 === 0 ? 'outlet-valve' : 'inlet-valve';
      const at = T0 + Math.min(i, 7);
      const { record } = journal.claim(command(`bad-${i}`, device, at));
      const failed = i % 2 === 0 || i >= 8;
      journal.settle(record, 'accepted', {
        to: failed ? 'failed' : 'rejected',
        code: failed ? 'DEVICE_UNREACHABLE' : 'STALE_COMMAND',
        faultCode: null,
        observed: null,
        detail: failed ? 'no readback before the deadline' : 'past its ttl',
        at: at + 1,
        intake: 'pipeline',
      });
    }
    const { record } = journal.claim(command('good', 'inlet-valve', T0 + 20));
    journal.settle(record, 'accepted', {
      to: 'confirmed',
      code: 'OK',
      faultCode: null,
      observed: null,
      detail: 'confirmed',
      at: T0 + 21,
      intake: 'pipeline',
    });
  } finally {
    journal.close();
  }
}, 60_000);

afterAll(() => {
  cleanup();
});

describe('list by failed or rejected on a journal of many commands that succeeded', () => {
  it('reads the commands in that state, not the whole table, newest first', () => {
    const size = statSync(path).size;
    expect(size).toBeGreaterThan(30e6);
    // bad-i's device: outlet-valve for 0, 3, 6, 9; inlet-valve otherwise.
    const cases: [ListFilter, string[]][] = [
      [{ state: 'failed', limit: 101 }, ['bad-9', 'bad-8', 'bad-6', 'bad-4', 'bad-2', 'bad-0']],
      [{ state: 'rejected', limit: 101 }, ['bad-7', 'bad-5', 'bad-3', 'bad-1']],
      [{ state: 'failed', device: 'inlet-valve', limit: 101 }, ['bad-8', 'bad-4', 'bad-2']],
      [{ state: 'failed', device: 'outlet-valve', limit: 101 }, ['bad-9', 'bad-6', 'bad-0']],
      [{ state: 'rejected', device: 'inlet-valve', limit: 101 }, ['bad-7', 'bad-5', 'bad-1']],
      [{ state: 'failed', since: T0 + 4, limit: 101 }, ['bad-9', 'bad-8', 'bad-6', 'bad-4']],
      [{ state: 'rejected', device: 'outlet-valve', since: T0 + 4, limit: 101 }, []],
      [{ state: 'failed', limit: 2 }, ['bad-9', 'bad-8']],
      // The status page's list filtered to a state: its limit and the open commands' count.
      [{ state: 'failed', limit: 50 }, ['bad-9', 'bad-8', 'bad-6', 'bad-4', 'bad-2', 'bad-0']],
    ];
    for (const [filter, keys] of cases) {
      for (const read of ['list', 'listReadable'] as const) {
        const got = listed(filter, read);
        expect(got.keys, `${read} ${JSON.stringify(filter)}`).toEqual(keys);
        // A few pages (4 KB each), where a read of every row takes the table's tens of MB.
        expect(got.bytes, `${read} ${JSON.stringify(filter)}`).toBeLessThan(size / 100);
      }
    }
    // The listing of every command, and of the confirmed ones, newest first as before.
    expect(listed({ limit: 3 }).keys).toEqual(['good', 'bad-9', 'bad-8']);
    expect(listed({ state: 'confirmed', limit: 2 }).keys[0]).toBe('good');
  });
});
