import { shellWord } from '../shell-word.js';
import type { CliContext } from './context.js';

/**
 * The words that begin a sluicectl command line printed for the operator to run next: with the
 * `--config` this run was given, so that the line reaches the same daemon and journal. Without
 * it a line printed by `sluicectl --config /etc/sluice/gw-2.yaml show K` (`settle it: sluicectl
 * resolve … K`) went to the default site's daemon: an error at best, and on a host with two
 * sites a key both used named the other gateway's command.
 */
export function sluicectlWords(ctx: CliContext): string {
  return ctx.configExplicit ? `sluicectl --config ${shellWord(ctx.configPath)}` : 'sluicectl';
}

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
