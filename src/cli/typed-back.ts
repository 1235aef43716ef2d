import { shellWord } from '../shell-word.js';

/**
 * A key, with its `--scope` when one is given, as the last words of a sluicectl command line
 * printed for the operator to run (`Read it now: sluicectl reverify KEY`). Keys are printable
 * ASCII, so they may hold `;`, `|`, `$(…)` or a backquote: printed bare, a line pasted into a
 * shell ran what an issuer had put in its key. Quoted as the shell reads it back (shellWord),
 * and after `--` when it begins with `-`, which sluicectl would otherwise take for an option;
 * `--` ends the options, so the key comes last.
 */
export function keyWords(key: string, scope?: string): string {
  const scoped = scope === undefined ? '' : `--scope ${shellWord(scope)} `;
  return `${scoped}${key.startsWith('-') ? '-- ' : ''}${shellWord(key)}`;
}
