import type { Database } from 'better-sqlite3';
import type { CommandState } from '../core/command.js';
import { JournalUnavailableError } from '../core/errors.js';
import type { CommandRecord, JournalEvent } from '../core/journal.js';
import { rowToRecord, type CommandRow, type EventRow } from './rows.js';

/**
 * Reads of one command from a journal whose damaged pages a statement may meet, for sluicectl
 * show (lists of commands: damaged-lists.ts): what an operator needs most when the gateway's
 * storage is failing. SQLite meets a damaged page only when a statement reads it, and the
 * statement ends there: a command's row and history read through an index showed nothing when
 * one page of it was damaged. These read what does not depend on that page another way — the ids from an index
 * alone and each row on its own through the primary key, or the table row after row when the
 * index is the damaged part — and count what cannot be read. Read-only; any error other than
 * damage is thrown as it came.
 */

/** SQLite's words when it met a damaged page (SQLITE_CORRUPT*, SQLITE_NOTADB), translated or not; else null. */
export function damageOf(error: unknown): string | null {
  const cause = error instanceof JournalUnavailableError ? error.cause : error;
  const code = (cause as { code?: unknown } | null)?.code;
  if (typeof code !== 'string') return null;
  if (!code.startsWith('SQLITE_CORRUPT') && code !== 'SQLITE_NOTADB') return null;
  return `${code}: ${cause instanceof Error ? cause.message : String(cause)}`;
}

function rethrowUnlessDamage(error: unknown): string {
  const damage = damageOf(error);
  if (damage === null) throw error;
  return damage;
}

/** The commands of one key, as far as they can be read (Journal.findByKeyReadable). */
export interface KeyRead {
  /** Those whose row was read, with their row ids, in the journal's order. */
  readonly found: readonly { readonly id: number; readonly record: CommandRecord }[];
  /** Those the key index (or the table) names whose row is on a damaged page. */
  readonly unreadable: readonly { readonly id: number; readonly scope: string }[];
  /**
   * The key index was damaged where the key is: the commands were found by reading the whole
   * table, row after row, instead.
   */
  readonly indexDamaged: boolean;
  /** SQLite's words for the first damage met; null when none was. */
  readonly met: string | null;
}

/**
 * The commands of `key`: their ids and scopes from the key index alone (it holds both), each row
 * on its own through the primary key, so that a row on a damaged page of the table is named, not
 * the end of the read. When the index itself is damaged there, the table is read whole without
 * it (a scan: seconds at a million commands, for a key an operator asked for). Damage met by the
 * scan as well is thrown: nothing of the key can be read.
 */
export function keyReadable(db: Database, key: string): KeyRead {
  let met: string | null = null;
  let indexDamaged = false;
  let refs: { id: number; scope: string }[];
  try {
    refs = db
      .prepare(`SELECT id, scope FROM commands INDEXED BY commands_key WHERE key = ? ORDER BY id`)
      .all(key) as { id: number; scope: string }[];
  } catch (error) {
    met = rethrowUnlessDamage(error);
    indexDamaged = true;
    refs = db
      .prepare(`SELECT id, scope FROM commands NOT INDEXED WHERE key = ? ORDER BY id`)
      .all(key) as { id: number; scope: string }[];
  }
  const row = db.prepare(`SELECT * FROM commands WHERE id = ?`);
  const found: { id: number; record: CommandRecord }[] = [];
  const unreadable: { id: number; scope: string }[] = [];
  for (const ref of refs) {
    try {
      const r = row.get(ref.id) as CommandRow | undefined;
      if (r !== undefined) found.push({ id: ref.id, record: rowToRecord(r) });
    } catch (error) {
      met ??= rethrowUnlessDamage(error);
      unreadable.push(ref);
    }
  }
  return { found, unreadable, indexDamaged, met };
}

/** A command's history, as far as it can be read (Journal.historyReadable). */
export interface HistoryRead {
  /** The entries read, oldest first. */
  readonly events: JournalEvent[];
  /** How many entries are on damaged pages; null when not even their number could be read. */
  readonly unreadable: number | null;
  /** SQLite's words for the first damage met; null when none was. */
  readonly met: string | null;
}

const EVENT_COLUMNS = 'at, from_state, to_state, intake, detail';

function toEvent(e: EventRow): JournalEvent {
  return {
    at: e.at,
    from: e.from_state as CommandState | null,
    to: e.to_state as CommandState,
    intake: e.intake,
    detail: e.detail,
  };
}

/**
 * The history of the command whose row id is `id`: in one statement when it can be; else the
 * entries' ids from their index alone and each entry on its own (those on a damaged page
 * counted), or, when the index is damaged there, the table read whole without it.
 */
export function historyReadable(db: Database, id: number): HistoryRead {
  try {
    const rows = db
      .prepare(`SELECT ${EVENT_COLUMNS} FROM events WHERE command = ? ORDER BY id`)
      .all(id) as EventRow[];
    return { events: rows.map(toEvent), unreadable: 0, met: null };
  } catch (error) {
    const met = rethrowUnlessDamage(error);
    let ids: number[];
    try {
      ids = db
        .prepare(`SELECT id FROM events INDEXED BY events_command WHERE command = ? ORDER BY id`)
        .pluck()
        .all(id) as number[];
    } catch (indexError) {
      rethrowUnlessDamage(indexError);
      try {
        const rows = db
          .prepare(`SELECT ${EVENT_COLUMNS} FROM events NOT INDEXED WHERE command = ? ORDER BY id`)
          .all(id) as EventRow[];
        return { events: rows.map(toEvent), unreadable: 0, met };
      } catch (scanError) {
        rethrowUnlessDamage(scanError);
        return { events: [], unreadable: null, met };
      }
    }
    const entry = db.prepare(`SELECT ${EVENT_COLUMNS} FROM events WHERE id = ?`);
    const events: JournalEvent[] = [];
    let unreadable = 0;
    for (const eventId of ids) {
      try {
        const e = entry.get(eventId) as EventRow | undefined;
        if (e !== undefined) events.push(toEvent(e));
      } catch (entryError) {
        rethrowUnlessDamage(entryError);
        unreadable++;
      }
    }
    return { events, unreadable, met };
  }
}
