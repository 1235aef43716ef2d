import { readFileSync } from 'node:fs';
import type { ListFilter } from '../../src/core/journal.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';

/**
 * This process's `rchar` (/proc/self/io): the bytes its read calls returned, page cache or not.
 * SQLite reads each page it visits through one (no mmap in the journal).
 */
export function rchar(): number {
  const found = /^rchar:\s*(\d+)$/m.exec(readFileSync('/proc/self/io', 'utf8'))?.[1];
  if (found === undefined) throw new Error('no rchar in /proc/self/io');
  return Number(found);
}

/**
 * The keys `read` gives for `filter` on a fresh read-only connection to the journal at `path`
 * (sluicectl's: list; its damaged-page-aware listReadable, which reads through list on a whole
 * journal), and the bytes that read took from the file.
 */
export function listed(
  path: string,
  filter: ListFilter,
  read: 'list' | 'listReadable' = 'list',
): { keys: string[]; bytes: number } {
  const journal = SqliteJournal.open({ path, readonly: true });
  try {
    journal.list({ limit: 1 }); // the connection opened and its schema read, as sluicectl's is
    const before = rchar();
    const records = read === 'list' ? journal.list(filter) : journal.listReadable(filter).records;
    const keys = records.map((r) => r.key);
    return { keys, bytes: rchar() - before };
  } finally {
    journal.close();
  }
}
