import { actionText } from '../views/command-list.js';
import { stuckItems, type StuckItem } from '../views/open-commands.js';
import type { CliContext } from './context.js';
import { indexNote, namedText, unreadableJson } from './damaged-words.js';
import { exactDuration, formatDuration, relative } from './durations.js';
import { EXIT, type ExitCode } from './errors.js';
import { withJournal } from './journal-reader.js';
import { renderTable, type Column } from './table.js';

/**
 * `sluicectl stuck`: open commands older than `--older-than`, oldest first. Those past their
 * bound are *stuck* in SPEC §2's sense (the daemon would have ended them by then) and are
 * marked with the bound they are past: the rule /readyz uses, from the same journal
 * (core/open-commands.ts). Exit 3 when any command is listed, so that monitoring can call it.
 */

export async function runStuck(ctx: CliContext, olderThanMs: number): Promise<ExitCode> {
  const now = ctx.now();
  const timings = ctx.deviceTimings();
  // listOpenReadable: on a journal whose damaged page holds some of the open commands, those
  // that can be read are listed and the others named (the check after the output then says the
  // file is damaged, exit 1), where the read met the page and listed nothing; on one whose index
  // of the open commands is damaged, they are found another way (damaged-lists.ts).
  const read = await withJournal(ctx, ctx.journalPath(), (journal) => {
    const open = journal.listOpenReadable();
    return {
      items: stuckItems(open.records, olderThanMs, now, timings, journal),
      open,
    };
  });
  const { items, open } = read.value;
  const unreadable = open.unreadable.length;
  const code = items.length > 0 ? EXIT.STUCK : EXIT.OK;
  const met = open.met ?? undefined;
  const viaNote = indexNote(open, 'index of the open commands', 'the open commands');
  if (viaNote !== null) ctx.warn(viaNote);
  if (unreadable > 0) {
    ctx.warn(
      `${unreadable} open command${unreadable === 1 ? ' is' : 's are'} on damaged pages of the journal and could not be read: not listed below, whatever their age: ${namedText(open.unreadable)}`,
    );
  }
  if (timings === null && !ctx.json) {
    ctx.warn('no configuration: confirm timeouts unknown, stuck is judged from deadlines alone');
  }
  if (items.length > 0) await ctx.warnIfDaemonAbsent();
  if (ctx.json) {
    ctx.outJson({
      olderThanMs,
      configured: timings !== null,
      stuck: items.filter((i) => i.stuck).length,
      unreadable,
      unreadableCommands: unreadableJson(open.unreadable),
      commands: items,
    });
    return read.settle(code, met);
  }
  if (items.length === 0) {
    ctx.out(`No open commands older than ${exactDuration(olderThanMs)}.\n`);
    return read.settle(code, met);
  }
  const columns: Column<StuckItem>[] = [
    { header: 'key', value: (i) => i.key, tone: (i) => (i.stuck ? 'bold' : null) },
    { header: 'scope', value: (i) => i.scope },
    { header: 'device', value: (i) => i.device },
    { header: 'action', value: (i) => actionText(i.action, i.position) },
    { header: 'state', value: (i) => i.state },
    { header: 'age', value: (i) => relative(now - i.ageMs, now) },
    {
      header: 'deadline',
      value: (i) =>
        (Date.parse(i.deadline) <= now ? 'passed ' : 'due ') +
        relative(Date.parse(i.deadline), now),
    },
    {
      header: 'stuck',
      value: (i) => (i.overdueMs === null ? 'no' : `STUCK ${formatDuration(i.overdueMs)} overdue`),
      tone: (i) => (i.stuck ? 'bad' : null),
    },
    { header: 'stuck past', value: (i) => i.stuckReason ?? '-' },
    { header: 'last event', value: (i) => i.lastEvent?.detail ?? '-' },
  ];
  ctx.out(renderTable(columns, items, ctx.style));
  const stuck = items.filter((i) => i.stuck).length;
  ctx.out(
    `\n${items.length} open command${items.length === 1 ? '' : 's'} older than ${exactDuration(olderThanMs)}` +
      `; ${stuck} stuck (open past the bound their "stuck past" column names).\n` +
      'Explain one: sluicectl show KEY. Settle it: sluicectl reverify KEY, or ' +
      'sluicectl resolve KEY --as failed --reason "…".\n',
  );
  return read.settle(code, met);
}
