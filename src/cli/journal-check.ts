import { statSync } from 'node:fs';
import { readFailed, unreadablePages } from '../journal/integrity.js';
import { SQLITE_MODULE, answerOf, spawnSqliteChild } from '../journal/sqlite-child.js';

/**
 * sluicectl's check of the whole journal file, within a time budget. SQLite meets a damaged page
 * only when a statement reads it: `list`, `stuck` and a `show` that finds nothing read some
 * pages and would print what they found with the commands on a damaged page missing without a
 * word. quick_check reads every page: about 0.2 s for 100,000 commands, 12–15 s for 1,000,000
 * (870 MB, measured in src/journal/integrity.ts), longer from a cold disk — too long for a command
 * an operator, or monitoring, runs every few seconds. So it runs beside the output and is stopped
 * when the budget runs out.
 *
 * In a child process, as the daemon's start check (integrity.ts) runs it, killed when the budget
 * runs out (src/journal/sqlite-child.ts: a worker thread could not be). Its connection is
 * read-only, as the reads' own: it sees the daemon's committed writes, blocks none and writes nothing (the daemon's
 * check opens read-write to recover a killed daemon's log, which sluicectl must not do).
 */

/** What the check found. */
export type JournalFinding =
  | { readonly kind: 'whole' }
  | { readonly kind: 'damaged'; readonly found: string }
  /**
   * The disk failed to read part of the file or of its log (an I/O error: a failing sector), as
   * the daemon's start check judges it (src/journal/integrity.ts): not damage in what was read.
   */
  | { readonly kind: 'unreadable'; readonly found: string }
  /**
   * Nothing is known: the budget ran out before quick_check had read the file, or the check
   * ended without an answer.
   */
  | {
      readonly kind: 'unchecked';
      readonly why: 'budget' | 'no-answer';
      readonly bytes: number | null;
    };

/** How many of quick_check's lines are named: the first say where; the rest add little. */
const DAMAGE_LINES = 3;

/** The default budget: what an operator waits for an interactive command without noticing much. */
export const DEFAULT_CHECK_BUDGET_MS = 2_000;

/** The child's answer: quick_check's lines, or the error that stopped it. */
type Answer =
  | { readonly kind: 'checked'; readonly lines: string[] }
  | { readonly kind: 'error'; readonly code: string | null; readonly message: string };

/** The child's program, plain JavaScript: its answer (Answer) is one JSON line on stdout. */
const PROGRAM = `
const Database = require(process.argv[2]);
const path = process.argv[1];
let answer;
let db = null;
try {
  db = new Database(path, { readonly: true, fileMustExist: true, timeout: 2000 });
  const lines = db.pragma('quick_check(${DAMAGE_LINES})').map((r) => String(r.quick_check).replace(/\\s+/g, ' ').trim());
  answer = { kind: 'checked', lines };
} catch (error) {
  answer = {
    kind: 'error',
    code: typeof error.code === 'string' ? error.code : null,
    message: String(error.message),
  };
} finally {
  if (db !== null) db.close();
}
process.stdout.write(JSON.stringify(answer) + '\\n');
`;

/**
 * What the child's answer says of the file. Pages quick_check could not get for an I/O error,
 * or a read that failed and stopped it (SQLite's I/O codes, as the daemon's start check judges
 * them), are the disk's failure; other lines, and a damaged file where SQLite stops the check
 * (SQLITE_CORRUPT, not a database), are damage; another error (the file locked away, gone) is no
 * finding: the read that came before said what there was to say.
 */
function findingOf(answer: Answer): JournalFinding {
  if (answer.kind === 'checked') {
    const { lines } = answer;
    if (lines.length === 1 && lines[0] === 'ok') return { kind: 'whole' };
    const found = lines.join('; ');
    return unreadablePages(lines) ? { kind: 'unreadable', found } : { kind: 'damaged', found };
  }
  const found = `${answer.code ?? 'error'}: ${answer.message}`;
  if (readFailed(answer.code)) return { kind: 'unreadable', found };
  const code = answer.code ?? '';
  if (code.startsWith('SQLITE_CORRUPT') || code === 'SQLITE_NOTADB') {
    return { kind: 'damaged', found };
  }
  return { kind: 'whole' };
}

function sizeOf(path: string): number | null {
  try {
    return statSync(path).size;
  } catch {
    return null;
  }
}

/**
 * Runs quick_check on the journal at `path`; when it has not answered within `budgetMs`, kills
 * it and answers 'unchecked'. Never rejects.
 */
export function checkJournalWithin(path: string, budgetMs: number): Promise<JournalFinding> {
  const child = spawnSqliteChild(PROGRAM, [path, SQLITE_MODULE]);
  let timer: NodeJS.Timeout | undefined;
  const budget = new Promise<JournalFinding>((resolve) => {
    timer = setTimeout(() => {
      child.kill();
      resolve({ kind: 'unchecked', why: 'budget', bytes: sizeOf(path) });
    }, budgetMs);
  });
  const answered = child.ended.then(
    (end): JournalFinding => {
      const answer = answerOf(end) as Answer | null;
      return answer === null
        ? { kind: 'unchecked', why: 'no-answer', bytes: sizeOf(path) }
        : findingOf(answer);
    },
    (): JournalFinding => ({ kind: 'unchecked', why: 'no-answer', bytes: sizeOf(path) }),
  );
  return Promise.race([budget, answered]).finally(() => {
    clearTimeout(timer);
  });
}
