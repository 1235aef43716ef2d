import { accessSync, constants } from 'node:fs';
import BetterSqlite3 from 'better-sqlite3';
import type { CommandRecord } from '../core/journal.js';
import { SqliteJournal } from '../journal/sqlite-journal.js';
import { CliError, EXIT, UsageError, messageOf } from './errors.js';
import { lookUp } from './paths.js';

/**
 * The journal, read-only, beside a running daemon: SQLite WAL readers never block its writer
 * and see every committed command (issue 12). sluicectl never writes it; what changes a
 * command goes through the daemon's admin endpoint.
 */
export function openJournal(path: string): SqliteJournal {
  const found = lookUp(path);
  if (found.kind === 'missing') {
    throw new CliError(
      `no journal at ${path}: check --journal, or journal.path and stateDir in the configuration`,
    );
  }
  if (found.kind === 'denied') throw new CliError(deniedJournal(path));
  if (found.kind === 'found' && found.stats.isDirectory()) {
    throw new CliError(
      `${path} is a directory, not a journal: give the journal file (journal.db by default)`,
    );
  }
  try {
    accessSync(path, constants.R_OK);
  } catch {
    throw new CliError(deniedJournal(path));
  }
  let journal: SqliteJournal;
  try {
    journal = SqliteJournal.open({ path, readonly: true });
  } catch (error) {
    throw new CliError(`cannot open the journal ${path}: ${sqliteProblem(error)}`);
  }
  return journal;
}

function deniedJournal(path: string): string {
  return `cannot read the journal ${path}: permission denied; run as the daemon's user or root`;
}

/**
 * What SQLite met, in words an operator can act on: the journal's own error names only the
 * result code ("journal unavailable (open): SQLITE_BUSY"), which says neither what is wrong
 * with the file nor what to do. SQLite's own sentence is kept beside the code.
 */
function sqliteProblem(error: unknown): string {
  const cause = error instanceof Error && error.cause instanceof Error ? error.cause : null;
  const code = (cause as { code?: unknown } | null)?.code;
  if (cause === null || typeof code !== 'string') return messageOf(error);
  const sqlite = `${code}: ${cause.message}`;
  if (code.startsWith('SQLITE_BUSY') || code.startsWith('SQLITE_LOCKED')) {
    // A WAL reader waits for no writer: only a connection holding the file exclusively (not
    // sluiced, which shares it) or a recovery of its log keeps it out for that long.
    return `it is locked (${sqlite}) for longer than a reader waits (2 s): another program holds it exclusively, or sluiced is recovering its log at start; try again`;
  }
  if (code === 'SQLITE_NOTADB') {
    return `it is not a Sluice journal: not an SQLite database (${sqlite})`;
  }
  return sqlite;
}

/**
 * Runs `read` on the journal opened read-only, and closes it whatever happens; then checks the
 * whole file (damage()), and refuses what it read when the file is damaged.
 */
export function withJournal<T>(path: string, read: (journal: SqliteJournal) => T): T {
  const journal = openJournal(path);
  let value: T;
  try {
    value = read(journal);
  } catch (error) {
    if (error instanceof CliError) throw error;
    throw new CliError(`cannot read the journal ${path}: ${sqliteProblem(error)}`);
  } finally {
    journal.close();
  }
  const found = damage(path);
  if (found !== null) {
    throw new CliError(
      `the journal ${path} is damaged (SQLite's check: "${found}"): what its readable pages hold is not shown, since the commands on its damaged pages would be missing from it without a word. sluiced refuses to start on it, and a running one refuses the commands that need those pages: stop sluiced, then restore the journal from a backup, or move it aside with its -wal and -shm files; sqlite3's .recover reads what is left`,
      EXIT.ERROR,
      'JOURNAL_DAMAGED',
    );
  }
  return value;
}

/** How many of quick_check's lines are named: the first say where; the rest add little. */
const DAMAGE_LINES = 3;

/**
 * What SQLite's quick_check finds wrong with the journal file, or null when it finds nothing
 * (or cannot run: the read that came before it said what there was to say). A damaged page is
 * met only by a statement that reads it: a list or a show reading other pages printed what they
 * found, and the commands on the damaged pages were missing without a word. quick_check reads
 * every page (about 0.2 s for 100,000 commands in the page cache; integrity.ts measures it), on
 * its own read-only connection, which sees the daemon's committed writes and blocks none.
 */
function damage(path: string): string | null {
  let db: BetterSqlite3.Database | null = null;
  try {
    db = new BetterSqlite3(path, { readonly: true, fileMustExist: true, timeout: 2000 });
    const lines = (db.pragma(`quick_check(${DAMAGE_LINES})`) as { quick_check: unknown }[]).map(
      (r) => String(r.quick_check).replace(/\s+/g, ' ').trim(),
    );
    return lines.length === 1 && lines[0] === 'ok' ? null : lines.join('; ');
  } catch (error) {
    const code = (error as { code?: unknown }).code;
    // SQLite stops the check where the file cannot be read at all: that is damage too.
    if (
      typeof code === 'string' &&
      (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB')
    ) {
      return `${code}: ${messageOf(error)}`;
    }
    return null;
  } finally {
    db?.close();
  }
}

/**
 * The one command a key names. Operators name keys, the journal keys them per identity: a key
 * in several scopes needs `--scope` (a usage error lists the scopes).
 */
export function findCommand(
  journal: SqliteJournal,
  key: string,
  scope: string | undefined,
): CommandRecord {
  const all = journal.findByKey(key);
  const found = all.filter((r) => scope === undefined || r.scope === scope);
  if (found.length === 1 && found[0] !== undefined) return found[0];
  if (found.length === 0) {
    const others =
      all.length === 0 ? '' : ` (it exists in scope ${all.map((r) => r.scope).join(', ')})`;
    throw new CliError(
      `no command with key "${key}"${scope === undefined ? '' : ` in scope "${scope}"`}${others}`,
      undefined,
      'UNKNOWN_COMMAND',
    );
  }
  throw new UsageError(
    `key "${key}" exists in ${found.length} scopes (${found.map((r) => r.scope).join(', ')}): give --scope`,
  );
}
