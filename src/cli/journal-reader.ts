import { accessSync, constants, existsSync } from 'node:fs';
import type { CommandRecord } from '../core/journal.js';
import { SqliteJournal } from '../journal/sqlite-journal.js';
import { CliError, UsageError, messageOf } from './errors.js';

/**
 * The journal, read-only, beside a running daemon: SQLite WAL readers never block its writer
 * and see every committed command (issue 12). sluicectl never writes it; what changes a
 * command goes through the daemon's admin endpoint.
 */
export function openJournal(path: string): SqliteJournal {
  if (!existsSync(path)) {
    throw new CliError(
      `no journal at ${path}: check --journal, or journal.path and stateDir in the configuration`,
    );
  }
  try {
    accessSync(path, constants.R_OK);
  } catch {
    throw new CliError(
      `cannot read the journal ${path}: permission denied; run as the daemon's user or root`,
    );
  }
  let journal: SqliteJournal;
  try {
    journal = SqliteJournal.open({ path, readonly: true });
  } catch (error) {
    throw new CliError(`cannot open the journal ${path}: ${messageOf(error)}`);
  }
  return journal;
}

/** Runs `read` on the journal opened read-only, and closes it whatever happens. */
export function withJournal<T>(path: string, read: (journal: SqliteJournal) => T): T {
  const journal = openJournal(path);
  try {
    return read(journal);
  } catch (error) {
    if (error instanceof CliError) throw error;
    throw new CliError(`cannot read the journal ${path}: ${messageOf(error)}`);
  } finally {
    journal.close();
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
