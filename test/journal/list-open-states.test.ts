import { statSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ListFilter } from '../../src/core/journal.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { tempDir } from '../helpers/fixtures.js';
import { listed as listedAt } from '../helpers/list-reads.js';
import { issuerCommand as open } from '../helpers/new-command.js';
import { writeSettledJournal } from '../helpers/settled-journal.js';

/**
 * `sluicectl list --state accepted|dispatched` (Journal.list) on a journal that retains many
 * settled commands reads the few open ones, not every retained row. Measured by what the
 * reading connection takes from the file: this process's `rchar` (/proc/self/io), the bytes
 * its pread calls returned, page cache or not — SQLite reads each page it visits through one
 * (no mmap in the journal), and a fresh connection has none cached. A read of every row goes
 * through the whole commands table (tens of MB here; 870 MB at a million commands, seconds from
 * a cold cache); the open commands' index and their rows are a few pages.
 */

const SETTLED = 60_000;
const T0 = Date.now() - 600_000;

let dir: string;
let cleanup: () => void;
let path: string;

function listed(filter: ListFilter): { keys: string[]; bytes: number } {
  return listedAt(path, filter);
}

beforeAll(() => {
  ({ dir, cleanup } = tempDir('sluice-list-open-'));
  path = join(dir, 'journal.db');
  // Settled commands on inlet-valve (confirmed, an hour old), then open ones on two devices,
  // one of inlet-valve's dispatched.
  writeSettledJournal(path, SETTLED, 'inlet-valve');
  const journal = SqliteJournal.open({ path });
  try {
    for (let i = 0; i < 6; i++) {
      journal.claim(open(`open-${i}`, i % 2 === 0 ? 'inlet-valve' : 'outlet-valve', T0 + i));
    }
    journal.markDispatched(
      { scope: 'plant', key: 'open-2' },
      T0 + 10,
      {
        state: 'CLOSED',
        position: 0,
        seq: 0,
        faultCode: null,
        sourceTime: new Date(T0).toISOString(),
        readAt: new Date(T0).toISOString(),
      },
      'pipeline',
      () => 1,
    );
  } finally {
    journal.close();
  }
}, 60_000);

afterAll(() => {
  cleanup();
});

describe('list by an open state on a journal of many settled commands', () => {
  it('reads the open commands, not the whole table', () => {
    const size = statSync(path).size;
    expect(size).toBeGreaterThan(30e6);
    const cases: [ListFilter, string[]][] = [
      [{ state: 'accepted', limit: 101 }, ['open-5', 'open-4', 'open-3', 'open-1', 'open-0']],
      [{ state: 'dispatched', limit: 101 }, ['open-2']],
      [{ state: 'accepted', device: 'inlet-valve', limit: 101 }, ['open-4', 'open-0']],
      [{ state: 'dispatched', device: 'inlet-valve', limit: 101 }, ['open-2']],
      [{ state: 'accepted', device: 'inlet-valve', since: T0 + 1, limit: 101 }, ['open-4']],
      [{ state: 'accepted', limit: 2 }, ['open-5', 'open-4']],
    ];
    for (const [filter, keys] of cases) {
      const read = listed(filter);
      expect(read.keys, JSON.stringify(filter)).toEqual(keys);
      // A few pages (4 KB each), where a read of every row takes the table's tens of MB.
      expect(read.bytes, JSON.stringify(filter)).toBeLessThan(size / 100);
    }
    // The listing of every command, newest first, stops at its limit as before.
    expect(listed({ limit: 3 }).keys).toEqual(['open-5', 'open-4', 'open-3']);
  });
});
