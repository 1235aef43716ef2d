import type { ListRead, UnreadableCommand } from '../journal/damaged-lists.js';
import { clean } from './table.js';

/**
 * What sluicectl says of a listing read from a journal with damaged pages (stuck, list): the
 * commands whose rows could not be read, by key and scope, and the way round a damaged index.
 */

/** How many unreadable commands a line names; `--json` names them all. */
const NAMED = 20;

/** `"key-980" (scope ops), "key-981" (scope ops), … and 20 more`: the keys as journaled. */
export function namedText(unreadable: readonly UnreadableCommand[]): string {
  const named = unreadable.slice(0, NAMED).map((u) =>
    // The key index damaged where the row's key is: only the row's number is known.
    u.key === null
      ? `row ${u.id} (its key unreadable too)`
      : `"${clean(u.key)}" (scope ${clean(u.scope ?? '?')})`,
  );
  const more = unreadable.length - named.length;
  return more > 0
    ? `${named.join(', ')} and ${more} more (--json names them all)`
    : named.join(', ');
}

/** `--json`'s `unreadableCommands`: each command not read, by key and scope (null when unknown). */
export function unreadableJson(
  unreadable: readonly UnreadableCommand[],
): { key: string | null; scope: string | null }[] {
  return unreadable.map((u) => ({ key: u.key, scope: u.scope }));
}

/** The line saying the listing's index was damaged and how the commands were found; else null. */
export function indexNote(read: ListRead, index: string, what: string): string | null {
  if (read.damagedIndex === null) return null;
  const how =
    read.via === 'table'
      ? 'by reading the whole commands table'
      : read.via === 'other-index'
        ? read.damagedIndex === 'commands_open'
          ? 'through the index of the open commands by device'
          : 'through the key index, every command read'
        : 'through it';
  return `the journal's ${index} could not be read: ${what} were found ${how}`;
}
