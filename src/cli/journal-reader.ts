import { accessSync, constants } from 'node:fs';
import { SqliteJournal } from '../journal/sqlite-journal.js';
import { formatDuration } from './durations.js';
import { CliError, EXIT, messageOf, type ExitCode } from './errors.js';
import { checkJournalWithin } from './journal-check.js';
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
    throw new OpenFailed(
      `cannot open the journal ${path}: ${sqliteProblem(error)}`,
      damageMet(error),
    );
  }
  return journal;
}

/**
 * The journal could not be opened; `damage`: SQLite's words when it said the file is damaged
 * (SQLITE_CORRUPT), which it says too when the disk fails to read its log at the open.
 */
class OpenFailed extends CliError {
  constructor(
    message: string,
    readonly damage: string | null,
  ) {
    super(message);
  }
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

/** Where the check of the whole file goes: its budget, and the line said when it runs out. */
export interface CheckTarget {
  /** How long the check may take (--check-within, SLUICECTL_CHECK_WITHIN). */
  checkBudgetMs(): number;
  warn(text: string): void;
}

/** A read of the journal, and the check of the whole file that follows its printing. */
export interface CheckedRead<T> {
  readonly value: T;
  /**
   * Once the read has been printed: waits for the check (within its budget) and gives `code`
   * back (unless `met`, damage the read itself met, says the file is damaged); says on stderr that the file was not checked in full when the budget ran out; throws
   * JOURNAL_DAMAGED (exit 1) when the file is damaged, JOURNAL_UNREADABLE (exit 1) when the disk
   * failed to read it.
   */
  settle(code: ExitCode, met?: string): Promise<ExitCode>;
}

/**
 * Runs `read` on the journal opened read-only, and closes it whatever happens; once what it read
 * is printed, settle() checks the whole file (journal-check.ts). SQLite meets a damaged page
 * only when a statement reads it: the readable rows are printed, and the damage is said after
 * them, exit 1, since the commands on the damaged pages are missing from them without a word.
 * A read that throws UNKNOWN_COMMAND (a key not found) is checked before it is said: a damaged
 * page may hold the key. `check` false: the read needs no check (a command found is shown whole
 * from the rows read).
 */
export async function withJournal<T>(
  target: CheckTarget,
  path: string,
  read: (journal: SqliteJournal) => T,
  check: (value: T) => boolean = () => true,
): Promise<CheckedRead<T>> {
  let journal: SqliteJournal;
  try {
    journal = openJournal(path);
  } catch (error) {
    if (error instanceof OpenFailed && error.damage !== null) {
      const finding = await checked(target, path);
      if (finding?.kind === 'unreadable') {
        throw new CliError(
          unreadableText(
            path,
            finding.found,
            'nothing could be shown; the command asked for, or the ones listed, may be on what it failed to read',
          ),
          EXIT.ERROR,
          'JOURNAL_UNREADABLE',
        );
      }
      // The check finds the damage SQLite met at the open: said as a read that met it is, with
      // what to do. Without a finding (the check stopped by its budget) SQLite's words stand, as
      // they do for a file that is no SQLite database (SQLITE_NOTADB: a journal.path mistyped).
      if (finding?.kind === 'damaged' && error.damage.startsWith('SQLITE_CORRUPT')) {
        throw new CliError(
          damagedText(
            path,
            finding.found,
            'nothing could be shown; the command asked for, or the ones listed, may be on its damaged pages',
          ),
          EXIT.ERROR,
          'JOURNAL_DAMAGED',
        );
      }
    }
    throw error;
  }
  let value: T;
  try {
    value = read(journal);
  } catch (error) {
    journal.close();
    if (error instanceof CliError && error.code === 'UNKNOWN_COMMAND') {
      const finding = await checked(target, path);
      if (finding?.kind === 'unreadable') {
        throw new CliError(
          `${error.message}; ${unreadableText(path, finding.found, 'a command on what it failed to read may be the one asked for')}`,
          EXIT.ERROR,
          'JOURNAL_UNREADABLE',
        );
      }
      if (finding !== null) {
        throw new CliError(
          `${error.message}; ${damagedText(path, finding.found, 'a command on its damaged pages may be the one asked for')}`,
          EXIT.ERROR,
          'JOURNAL_DAMAGED',
        );
      }
    }
    if (error instanceof CliError) throw error;
    const damage = damageMet(error);
    if (damage !== null) {
      // The read itself met a damaged page, or one the disk failed to read (SQLite says
      // SQLITE_CORRUPT of both: the check tells them apart): the statement ends there, and
      // nothing it read can be shown as a whole answer.
      await unlessUnreadable(
        target,
        path,
        'the read failed on what it could not read, so nothing could be shown; the command asked for, or the ones listed, may be on it',
      );
      throw new CliError(
        damagedText(
          path,
          damage,
          'the read met a damaged page, so nothing could be shown; the command asked for, or the ones listed, may be on it',
          'SQLite, reading it',
        ),
        EXIT.ERROR,
        'JOURNAL_DAMAGED',
      );
    }
    throw new CliError(`cannot read the journal ${path}: ${sqliteProblem(error)}`);
  }
  journal.close();
  return {
    value,
    // Begun once what was read is printed: a run that ends before (a usage error) leaves no
    // check behind.
    // `met`: damage the read itself met and went round (sluicectl stuck's unreadable rows): the
    // file is damaged whatever the check says, or if it could not finish within its budget,
    // unless the check finds pages the disk failed to read.
    settle: async (code, met) => {
      // Damage the read met is checked too: SQLite says SQLITE_CORRUPT of a page the disk
      // failed to read as of a damaged one, and the check tells them apart. Damage it confirms
      // is said in the read's words when the read alone asked for the check.
      const whole = check(value);
      const found = whole || met !== undefined ? await checked(target, path) : null;
      if (found?.kind === 'unreadable') {
        throw new CliError(
          unreadableText(
            path,
            found.found,
            'what is shown is what it could read, and the commands on what it failed to read are missing from it',
          ),
          EXIT.ERROR,
          'JOURNAL_UNREADABLE',
        );
      }
      const byCheck = whole ? found : null;
      const damage = byCheck?.found ?? met ?? null;
      if (damage === null) return code;
      throw new CliError(
        damagedText(
          path,
          damage,
          'what is shown is what its readable pages hold, and the commands on its damaged pages are missing from it',
          byCheck === null ? 'SQLite, reading it' : undefined,
        ),
        EXIT.ERROR,
        'JOURNAL_DAMAGED',
      );
    },
  };
}

/**
 * Throws JOURNAL_UNREADABLE when the check of the whole file finds that the disk failed to read
 * it: a read or an open that SQLite ended with SQLITE_CORRUPT met a page the disk could not give
 * (an I/O error), not a damaged one. Returns otherwise: the caller says the damage.
 */
async function unlessUnreadable(target: CheckTarget, path: string, what: string): Promise<void> {
  const finding = await checked(target, path);
  if (finding?.kind === 'unreadable') {
    throw new CliError(unreadableText(path, finding.found, what), EXIT.ERROR, 'JOURNAL_UNREADABLE');
  }
}

/** SQLite's words when a read met a damaged page (SQLITE_CORRUPT*, SQLITE_NOTADB), else null. */
function damageMet(error: unknown): string | null {
  const cause = error instanceof Error && error.cause instanceof Error ? error.cause : error;
  const code = (cause as { code?: unknown } | null)?.code;
  if (typeof code !== 'string' || !(cause instanceof Error)) return null;
  if (!code.startsWith('SQLITE_CORRUPT') && code !== 'SQLITE_NOTADB') return null;
  return `${code}: ${cause.message}`;
}

function damagedText(path: string, found: string, what: string, by = "SQLite's check"): string {
  return `the journal ${path} is damaged (${by}: "${found}"): ${what}. sluiced refuses to start on it, and a running one refuses the commands that need those pages: stop sluiced, then restore the journal from a backup, or move it aside with its -wal and -shm files; sqlite3's .recover reads what is left`;
}

/**
 * The disk failed to read part of the journal (an I/O error at the check), said as the daemon's
 * start check says it: not damage, and the disk to look at.
 */
function unreadableText(path: string, found: string, what: string): string {
  return `the journal ${path} cannot be read: an I/O error, the disk failed to read part of it or of its -wal file (SQLite's check: "${found}"): ${what}. sluiced refuses to start on it, and a running one fails the commands that need what it cannot read. The disk may be failing (the kernel's log, journalctl -k, names the failed reads): stop sluiced, then restore the journal from a backup onto a sound disk, or move it aside with its -wal and -shm files`;
}

/**
 * The check of the whole file within the budget: SQLite's finding when the file is damaged, or
 * when the disk failed to read it, else null (after saying, in one line, when the file could not
 * be checked in full).
 */
async function checked(
  target: CheckTarget,
  path: string,
): Promise<{ readonly kind: 'damaged' | 'unreadable'; readonly found: string } | null> {
  const budgetMs = target.checkBudgetMs();
  const finding = await checkJournalWithin(path, budgetMs);
  if (finding.kind === 'damaged' || finding.kind === 'unreadable') return finding;
  if (finding.kind === 'unchecked') {
    const size = finding.bytes === null ? '' : ` (${bytesText(finding.bytes)})`;
    target.warn(
      finding.why === 'budget'
        ? `the journal ${path}${size} was not checked in full for damaged pages within ${formatDuration(budgetMs)}: a damaged page would go unseen; give more time with --check-within (or SLUICECTL_CHECK_WITHIN)`
        : `the journal ${path}${size} was not checked in full for damaged pages: the check ended without an answer`,
    );
  }
  return null;
}

/** `86 MB`, `412 kB`: a file's size, as an operator reads it. */
function bytesText(bytes: number): string {
  if (bytes >= 1e9) return `${(bytes / 1e9).toFixed(1)} GB`;
  if (bytes >= 1e6) return `${Math.round(bytes / 1e6)} MB`;
  if (bytes >= 1e3) return `${Math.round(bytes / 1e3)} kB`;
  return `${bytes} bytes`;
}
