import type { Database } from 'better-sqlite3';
import type { CommandRecord, ListFilter } from '../core/journal.js';
import { damageOf } from './damaged-reads.js';
import { rowToRecord, type CommandRow } from './rows.js';

/**
 * Lists of commands read from a journal whose damaged pages a statement may meet, for sluicectl
 * (`stuck`, `list`; `show`'s device's open commands). SQLite meets a damaged page only when a
 * statement reads it, and the statement ends there: a listing read through the page showed
 * nothing, though every other command could be read. Two cases, as damaged-reads.ts goes round
 * them for one command:
 * - the page holds rows of the commands table: the ids come from the listing's index alone, each
 *   row is read on its own through the primary key, and those that cannot be read are named (by
 *   the key index, which holds key and scope beside each id);
 * - the page is the listing's index: the commands are found another way — another index that
 *   holds them, or the table read whole without an index.
 * Read-only; any error other than damage is thrown as it came.
 */

/** A command the journal holds whose row is on a damaged page. */
export interface UnreadableCommand {
  /** Its row id. */
  readonly id: number;
  /** Its key and scope from the key index; null when that is damaged where it is too. */
  readonly key: string | null;
  readonly scope: string | null;
}

/** How the commands listed were found when their usual read met a damaged page. */
export type ListedVia =
  /** The usual read, or the ids of its own index and each row on its own. */
  | 'index'
  /** The listing's index is damaged: another index of the same commands. */
  | 'other-index'
  /** The listing's index is damaged: the commands table read whole, without an index. */
  | 'table';

/** What a listing read of a journal with damaged pages. */
export interface ListRead {
  /** The commands read, in the listing's order. */
  readonly records: CommandRecord[];
  /** Those that belong in the listing (as far as is known) whose row could not be read. */
  readonly unreadable: readonly UnreadableCommand[];
  /** The index the listing reads through, when it was damaged; else null. */
  readonly damagedIndex: string | null;
  readonly via: ListedVia;
  /** SQLite's words for the first damage met; null when none was. */
  readonly met: string | null;
}

const OPEN = "state IN ('accepted', 'dispatched')";

function whole(records: CommandRecord[]): ListRead {
  return { records, unreadable: [], damagedIndex: null, via: 'index', met: null };
}

/**
 * Tries each read in turn; the first that meets no damage answers. Damage met by every one is
 * thrown as the last met it: nothing could be read.
 */
function firstReadable<T>(reads: readonly (() => T)[]): { value: T; failed: number } {
  let last: unknown = new Error('no read given');
  for (const [i, read] of reads.entries()) {
    try {
      return { value: read(), failed: i };
    } catch (error) {
      if (damageOf(error) === null) throw error;
      last = error;
    }
  }
  throw last;
}

/** Newest first, the newer row first at the same time (Journal.list's order). */
function newestFirst(rows: CommandRow[]): CommandRow[] {
  return rows.sort((a, b) => b.accepted_at - a.accepted_at || b.id - a.id);
}

/**
 * The rows of `ids` through the primary key, each on its own, in their order: those read (and
 * kept by `keep`), and the ids of those on a damaged page. Stops once `enough` are kept. With
 * `newest`, only the newest that many are kept (newest first), pruned as the rows are read: a
 * read of every row of a large journal holds no more than twice that many.
 */
function rowsOf(
  db: Database,
  ids: readonly number[],
  keep: (row: CommandRow) => boolean,
  enough = Number.POSITIVE_INFINITY,
  newest?: number,
): { rows: CommandRow[]; lost: number[] } {
  const row = db.prepare(`SELECT * FROM commands WHERE id = ?`);
  let rows: CommandRow[] = [];
  const lost: number[] = [];
  for (const id of ids) {
    if (rows.length >= enough) break;
    try {
      const found = row.get(id) as CommandRow | undefined;
      // Gone meanwhile (a daemon beside the reader purged or settled it): not listed.
      if (found !== undefined && keep(found)) rows.push(found);
      if (newest !== undefined && rows.length >= 2 * newest) {
        rows = newestFirst(rows).slice(0, newest);
      }
    } catch (error) {
      if (damageOf(error) === null) throw error;
      lost.push(id);
    }
  }
  return { rows, lost };
}

/**
 * The key and scope of each of `ids` from the key index alone (it holds them beside the id): a
 * row on a damaged page is named by them. Null for those it cannot name (the index damaged too).
 */
export function namesOf(db: Database, ids: readonly number[]): UnreadableCommand[] {
  if (ids.length === 0) return [];
  const names = new Map<number, { key: string; scope: string }>();
  try {
    const rows = db
      .prepare(
        `SELECT id, key, scope FROM commands INDEXED BY commands_key
         WHERE id IN (SELECT value FROM json_each(?))`,
      )
      .all(JSON.stringify(ids)) as { id: number; key: string; scope: string }[];
    for (const r of rows) names.set(r.id, { key: r.key, scope: r.scope });
  } catch (error) {
    if (damageOf(error) === null) throw error;
  }
  return ids.map((id) => ({
    id,
    key: names.get(id)?.key ?? null,
    scope: names.get(id)?.scope ?? null,
  }));
}

/** The open commands read (listOpenReadable), with their row ids. */
export interface OpenRead extends ListRead {
  /** The row id of each of `records`, in their order: its history's reference (historyReadable). */
  readonly ids: readonly number[];
}

/**
 * The open commands, as Journal.listOpen gives them (in the journal's order), those that could be
 * read (Journal.listOpenReadable), with their row ids: a command's history can then be read
 * without its key index entry (historyReadable), which may be damaged too. Read as listOpen reads
 * them (`statement`: its rows through the open commands' index, commands_open); when that meets
 * a damaged page, the ids come from that index alone and each row is read on its own, the
 * unreadable ones named; when the index itself is damaged, from the other index of the open
 * commands (commands_open_device, by device), else from the commands table read whole for the
 * open states.
 */
export function openReadable(db: Database, statement: () => CommandRow[]): OpenRead {
  const read = (rows: CommandRow[]): { records: CommandRecord[]; ids: number[] } => ({
    records: rows.map(rowToRecord),
    ids: rows.map((r) => r.id),
  });
  let met: string;
  try {
    return { ...read(statement()), unreadable: [], damagedIndex: null, via: 'index', met: null };
  } catch (error) {
    const damage = damageOf(error);
    if (damage === null) throw error;
    met = damage;
  }
  const isOpen = (r: CommandRow): boolean => r.state === 'accepted' || r.state === 'dispatched';
  const ids = (index: string) => (): number[] =>
    db
      .prepare(`SELECT id FROM commands INDEXED BY ${index} WHERE ${OPEN} ORDER BY id`)
      .pluck()
      .all() as number[];
  const { value, failed } = firstReadable<number[] | CommandRow[]>([
    ids('commands_open'),
    ids('commands_open_device'),
    () =>
      db
        .prepare(`SELECT * FROM commands NOT INDEXED WHERE ${OPEN} ORDER BY id`)
        .all() as CommandRow[],
  ]);
  const damagedIndex = failed === 0 ? null : 'commands_open';
  if (failed === 2) {
    return { ...read(value as CommandRow[]), unreadable: [], damagedIndex, via: 'table', met };
  }
  const rows = rowsOf(db, value as number[], isOpen);
  return {
    ...read(rows.rows),
    unreadable: namesOf(db, rows.lost),
    damagedIndex,
    via: failed === 0 ? 'index' : 'other-index',
    met,
  };
}

/**
 * The commands Journal.list gives for `filter` (newest first, at most its limit), those that
 * could be read (Journal.listReadable). When list's statement meets a damaged page: the ids, newest
 * first, from the index of the commands by time (by device and time with --device) alone, each
 * row on its own until the limit is reached, the unreadable ones among them named (with --state,
 * whether one of them is in that state is unknown: it is named all the same); when that index is
 * damaged, the table read whole without an index. When both are damaged, every id the key index
 * holds, each row on its own, sorted here.
 */
export function listReadable(
  db: Database,
  filter: ListFilter,
  list: (filter: ListFilter) => CommandRecord[],
): ListRead {
  let met: string;
  try {
    return whole(list(filter));
  } catch (error) {
    const damage = damageOf(error);
    if (damage === null) throw error;
    met = damage;
  }
  const limit = filter.limit ?? 1000;
  const where: string[] = [];
  const params: (string | number)[] = [];
  if (filter.device !== undefined) {
    where.push('device = ?');
    params.push(filter.device);
  }
  if (filter.since !== undefined) {
    where.push('accepted_at >= ?');
    params.push(filter.since);
  }
  const indexed = where.length === 0 ? '' : `WHERE ${where.join(' AND ')}`;
  const index = filter.device === undefined ? 'commands_accepted' : 'commands_device';
  const keep = (r: CommandRow): boolean =>
    (filter.device === undefined || r.device === filter.device) &&
    (filter.since === undefined || r.accepted_at >= filter.since) &&
    (filter.state === undefined || r.state === filter.state);
  // Newest first, the newer row first at the same time: the order of the index read backwards.
  const order = 'ORDER BY accepted_at DESC, id DESC';
  const { value, failed } = firstReadable<number[] | CommandRow[]>([
    () =>
      db
        .prepare(`SELECT id FROM commands INDEXED BY ${index} ${indexed} ${order}`)
        .pluck()
        .all(...params) as number[],
    () => {
      const all = [...where, ...(filter.state === undefined ? [] : ['state = ?'])];
      return db
        .prepare(
          `SELECT * FROM commands NOT INDEXED ${all.length === 0 ? '' : `WHERE ${all.join(' AND ')}`} ${order} LIMIT ?`,
        )
        .all(
          ...params,
          ...(filter.state === undefined ? [] : [filter.state]),
          limit,
        ) as CommandRow[];
    },
    () => db.prepare(`SELECT id FROM commands INDEXED BY commands_key`).pluck().all() as number[],
  ]);
  const damagedIndex = failed === 0 ? null : index;
  if (failed === 1) {
    return {
      records: (value as CommandRow[]).map(rowToRecord),
      unreadable: [],
      damagedIndex,
      via: 'table',
      met,
    };
  }
  if (failed === 0) {
    const rows = rowsOf(db, value as number[], keep, limit);
    return {
      records: rows.rows.map(rowToRecord),
      unreadable: namesOf(db, rows.lost),
      damagedIndex,
      via: 'index',
      met,
    };
  }
  // Every command, in the key index's order: each row read, those of the listing sorted here.
  const rows = rowsOf(db, value as number[], keep, Number.POSITIVE_INFINITY, limit);
  const records = newestFirst(rows.rows).slice(0, limit).map(rowToRecord);
  return { records, unreadable: namesOf(db, rows.lost), damagedIndex, via: 'other-index', met };
}
