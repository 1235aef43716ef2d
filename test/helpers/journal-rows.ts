import type { SqliteJournal } from '../../src/journal/sqlite-journal.js';

/**
 * The journal's methods that return open commands by the page or the list: what a periodic or
 * per-command path reads of a backlog. Those a journal of another version lacks are skipped.
 */
const LISTING = [
  'listOpenRefs',
  'listOpen',
  'openBefore',
  'openOfDevice',
  'dispatchedOfDevice',
  'openPastDeadline',
  'list',
] as const;

/**
 * Counts the rows `journal`'s listing methods return from now on (an array's length, or a
 * page's `refs`, the `records` handed over beside a count), on this instance; `stop()` puts the methods back. The work a path does on a
 * backlog, counted, not timed: a bound on rows read holds on any machine, where a bound on
 * milliseconds fails on a loaded one (speed is the bench's: npm run bench).
 */
export function countRowsRead(journal: SqliteJournal): {
  readonly read: () => number;
  readonly reset: () => void;
  readonly stop: () => void;
} {
  let rows = 0;
  const target = journal as unknown as Record<string, unknown>;
  const own = new Map<string, unknown>();
  for (const name of LISTING) {
    const method = target[name];
    if (typeof method !== 'function') continue;
    own.set(name, Object.prototype.hasOwnProperty.call(target, name) ? method : undefined);
    target[name] = (...args: unknown[]): unknown => {
      const result = (method as (...a: unknown[]) => unknown).apply(journal, args);
      if (Array.isArray(result)) rows += result.length;
      else if (result !== null && typeof result === 'object') {
        // A page's refs, or the records handed over with a count (openPastDeadline).
        const { refs, records } = result as { refs?: unknown; records?: unknown };
        if (Array.isArray(refs)) rows += refs.length;
        else if (Array.isArray(records)) rows += records.length;
      }
      return result;
    };
  }
  return {
    read: () => rows,
    reset: () => {
      rows = 0;
    },
    stop: () => {
      for (const [name, method] of own) {
        if (method === undefined) Reflect.deleteProperty(target, name);
        else target[name] = method;
      }
    },
  };
}
