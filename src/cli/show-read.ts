import type { CommandRecord, CommandRef, JournalEvent } from '../core/journal.js';
import type { DeviceTiming } from '../core/open-commands.js';
import { damageOf } from '../journal/damaged-reads.js';
import type { SqliteJournal } from '../journal/sqlite-journal.js';
import { showCommand, type CommandShow } from '../views/command-show.js';
import { indexNote } from './damaged-words.js';
import { CliError, UsageError } from './errors.js';

/**
 * What `sluicectl show KEY` read of the journal, as far as its pages could be read. On a journal
 * with a damaged page (a torn write, a failing SD card) a read through the page ends there, and
 * show said only that the journal was damaged: the command's row through the primary key when
 * the key index is the damaged part, and its history entries on other pages, were not shown. Now
 * each part is read on its own (src/journal/damaged-reads.ts): what was read is shown, and each
 * part that could not be read is said in `notes` (sluicectl exits 1, JOURNAL_DAMAGED, `met`).
 */
export type ShowRead =
  | {
      readonly kind: 'shown';
      readonly shown: CommandShow;
      readonly notes: readonly string[];
      /** SQLite's words for the first damage met; null when the read met none. */
      readonly met: string | null;
    }
  | {
      /** The command's row is on a damaged page: its key, scope and readable history alone. */
      readonly kind: 'row-unreadable';
      readonly key: string;
      readonly scope: string;
      readonly history: readonly JournalEvent[];
      readonly notes: readonly string[];
      readonly met: string;
    };

function plural(n: number, one: string, many: string): string {
  return n === 1 ? `1 ${one}` : `${n} ${many}`;
}

function historyNote(unreadable: number | null): string | null {
  if (unreadable === null) {
    return 'its history is on pages of the journal SQLite could not read: no entry of it is shown';
  }
  if (unreadable === 0) return null;
  return `${plural(unreadable, 'entry of its history is', 'entries of its history are')} on pages of the journal SQLite could not read: not shown below`;
}

export function readShow(
  journal: SqliteJournal,
  key: string,
  scope: string | undefined,
  now: number,
  timings: () => ReadonlyMap<string, DeviceTiming> | null,
): ShowRead {
  const read = journal.findByKeyReadable(key);
  const notes: string[] = [];
  let met = read.met;
  if (read.indexDamaged) {
    notes.push(
      `the journal's key index could not be read where "${key}" is: the command was found by reading the whole commands table`,
    );
  }
  // Operators name keys, the journal keys them per identity: a key in several scopes needs
  // --scope (a usage error lists the scopes).
  const inScope = (s: string): boolean => scope === undefined || s === scope;
  const found = read.found.filter((f) => inScope(f.record.scope));
  const unreadable = read.unreadable.filter((u) => inScope(u.scope));
  const scopes = [...read.found.map((f) => f.record.scope), ...read.unreadable.map((u) => u.scope)];
  if (found.length + unreadable.length === 0) {
    const others = scopes.length === 0 ? '' : ` (it exists in scope ${scopes.join(', ')})`;
    throw new CliError(
      `no command with key "${key}"${scope === undefined ? '' : ` in scope "${scope}"`}${others}`,
      undefined,
      'UNKNOWN_COMMAND',
    );
  }
  if (found.length + unreadable.length > 1) {
    const here = [...found.map((f) => f.record.scope), ...unreadable.map((u) => u.scope)];
    throw new UsageError(
      `key "${key}" exists in ${here.length} scopes (${here.join(', ')}): give --scope`,
    );
  }
  const lost = unreadable[0];
  if (lost !== undefined) {
    const history = journal.historyReadable(lost.id);
    notes.push(
      `the row of command "${key}" (scope ${lost.scope}) is on a page of the journal SQLite could not read: its device, action, deadline, state and result are unknown; shown are its key and the entries of its history that could be read`,
    );
    const more = historyNote(history.unreadable);
    if (more !== null) notes.push(more);
    return {
      kind: 'row-unreadable',
      key,
      scope: lost.scope,
      history: history.events,
      notes,
      met: met ?? history.met ?? 'the command row could not be read',
    };
  }
  const only = found[0];
  if (only === undefined) throw new Error('unreachable: one command found');
  const { id, record } = only;
  const history = journal.historyReadable(id);
  met ??= history.met;
  const more = historyNote(history.unreadable);
  if (more !== null) notes.push(more);

  // The journal as showCommand reads it: this command's history as read above; its device's
  // open commands (what it waits behind, the windows that hold it) as far as they can be read.
  const same = (r: CommandRef): boolean => r.scope === record.scope && r.key === record.key;
  const guarded = <T>(read: () => T, fallback: T, note: string): T => {
    try {
      return read();
    } catch (error) {
      const damage = damageOf(error);
      if (damage === null) throw error;
      met ??= damage;
      if (!notes.includes(note)) notes.push(note);
      return fallback;
    }
  };
  const others =
    'the history of another open command of its device could not be read: whether it is stuck is judged without it';
  const view = {
    history: (r: CommandRef): readonly JournalEvent[] =>
      same(r) ? history.events : guarded(() => journal.history(r), [], others),
    stopsAfter: (r: CommandRef, limit: number): readonly CommandRecord[] =>
      guarded(
        () => journal.stopsAfter(r, limit),
        [],
        'the stops claimed after it could not be read: whether one paused it is unknown',
      ),
    listOpen: (): readonly CommandRecord[] =>
      guarded(
        () => {
          const open = journal.listOpenReadable();
          met ??= open.met;
          // Their index damaged: found another way (damaged-lists.ts), judged with them.
          const via = indexNote(open, 'index of the open commands', "its device's open commands");
          if (via !== null && !notes.includes(via)) notes.push(via);
          const lost = open.unreadable.length;
          if (lost > 0) {
            notes.push(
              `${plural(lost, 'open command is', 'open commands are')} on pages of the journal SQLite could not read: what it waits behind may miss them`,
            );
          }
          return open.records;
        },
        [],
        "the journal's open commands could not be read (SQLite could not read the pages that hold them): whether it is stuck, and what it waits behind, are judged from it alone",
      ),
  };
  const shown = showCommand(record, view, now, timings);
  return { kind: 'shown', shown, notes, met };
}
