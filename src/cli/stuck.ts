import type { StuckJournal } from '../core/open-commands.js';
import { refId, type CommandRecord, type CommandRef, type JournalEvent } from '../core/journal.js';
import type { OpenRead, UnreadableCommand } from '../journal/damaged-lists.js';
import { damageOf } from '../journal/damaged-reads.js';
import type { SqliteJournal } from '../journal/sqlite-journal.js';
import { actionText } from '../views/command-list.js';
import { stuckItems, type StuckItem } from '../views/open-commands.js';
import type { CliContext } from './context.js';
import { indexNote, namedText, unreadableJson } from './damaged-words.js';
import { exactDuration, formatDuration, relative } from './durations.js';
import { EXIT, type ExitCode } from './errors.js';
import { withJournal } from './journal-reader.js';
import { renderTable, type Column } from './table.js';

/**
 * `sluicectl stuck`: open commands older than `--older-than`, oldest first, and those whose age
 * the clock cannot tell (accepted ahead of it: it was set back since). Those past their
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
  // Their histories (the last event, the windows that hold them) and the stops after them are
  // read as far as they can be (readableHistories), where a damaged page of the events or of
  // the key index ended the whole read.
  const read = await withJournal(ctx, ctx.journalPath(), (journal) => {
    const open = journal.listOpenReadable();
    const histories = readableHistories(journal, open);
    return {
      items: stuckItems(open.records, olderThanMs, now, timings, histories.view),
      open,
      missed: histories.missed(),
    };
  });
  const { items, open, missed } = read.value;
  const unreadable = open.unreadable.length;
  const code = items.length > 0 ? EXIT.STUCK : EXIT.OK;
  const met = open.met ?? missed.met ?? undefined;
  const viaNote = indexNote(open, 'index of the open commands', 'the open commands');
  if (viaNote !== null) ctx.warn(viaNote);
  if (unreadable > 0) {
    ctx.warn(
      `${unreadable} open command${unreadable === 1 ? ' is' : 's are'} on pages of the journal SQLite could not read: not listed below, whatever their age: ${namedText(open.unreadable)}`,
    );
  }
  const partial = missed.histories.length;
  if (partial > 0) {
    ctx.warn(
      `the history of ${partial} open command${partial === 1 ? '' : 's'} could not be read in full (pages of the journal SQLite could not read): ${namedText(missed.histories)}: ${partial === 1 ? 'its' : 'their'} last event, and whether ${partial === 1 ? 'it is' : 'they are'} stuck, are judged from the entries that could be read`,
    );
  }
  if (missed.stops) {
    ctx.warn(
      'the stops claimed after the open commands could not be read (pages of the journal SQLite could not read): whether one paused a dispatched command is unknown',
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
      unreadableHistories: unreadableJson(missed.histories),
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
    { header: 'age', value: (i) => ageText(i, now) },
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
  const ahead = items.filter((i) => i.acceptedAheadMs !== null).length;
  ctx.out(
    `\n${items.length} open command${items.length === 1 ? '' : 's'} older than ${exactDuration(olderThanMs)}` +
      (ahead === 0
        ? ''
        : ` or of unknown age (${ahead} accepted ahead of the gateway's clock, which was set back since: listed whatever their age)`) +
      `; ${stuck} stuck (open past the bound their "stuck past" column names).\n` +
      'Explain one: sluicectl show KEY. Settle it: sluicectl reverify KEY, or ' +
      'sluicectl resolve KEY --as failed --reason "…".\n',
  );
  return read.settle(code, met);
}

/**
 * `3m12s ago`; for a command accepted ahead of the clock (the gateway's clock set back since),
 * `unknown (accepted in 1m: clock set back)`, not an age of 0. `list` says it alike.
 */
export function ageText(
  item: { readonly ageMs: number; readonly acceptedAheadMs: number | null },
  now: number,
): string {
  return item.acceptedAheadMs === null
    ? relative(now - item.ageMs, now)
    : `unknown (accepted in ${formatDuration(item.acceptedAheadMs)}: clock set back)`;
}

/** What readableHistories could not read. */
interface Missed {
  /** The open commands whose history misses entries (or could not be read at all). */
  readonly histories: readonly UnreadableCommand[];
  /** Stops claimed after an open command could not be read. */
  readonly stops: boolean;
  /** SQLite's words for the first damage met; null when none was. */
  readonly met: string | null;
}

/**
 * The journal as stuckItems reads it, from a journal with damaged pages: a command's history by
 * its key (the key index, then its entries) and, when that meets a damaged page, through its row
 * id (historyReadable: entry by entry, or the events without their index), its entries on a
 * damaged page missing; the stops claimed after it, none when they cannot be read. What could not
 * be read is said by missed().
 */
function readableHistories(
  journal: SqliteJournal,
  open: OpenRead,
): { view: StuckJournal; missed: () => Missed } {
  const idOf = new Map(open.records.map((r, i) => [refId(r), open.ids[i]]));
  const partial = new Map<string, UnreadableCommand>();
  let stops = false;
  let met: string | null = null;
  const damage = (error: unknown): void => {
    const found = damageOf(error);
    if (found === null) throw error;
    met ??= found;
  };
  const view: StuckJournal = {
    history: (r: CommandRef): readonly JournalEvent[] => {
      try {
        return journal.history(r);
      } catch (error) {
        damage(error);
      }
      const id = idOf.get(refId(r));
      const lost = (): void => {
        partial.set(refId(r), { id: id ?? 0, key: r.key, scope: r.scope });
      };
      if (id === undefined) {
        lost();
        return [];
      }
      const read = journal.historyReadable(id);
      if (read.unreadable !== 0) lost();
      return read.events;
    },
    stopsAfter: (r: CommandRef, limit: number): readonly CommandRecord[] => {
      try {
        return journal.stopsAfter(r, limit);
      } catch (error) {
        damage(error);
        stops = true;
        return [];
      }
    },
  };
  return { view, missed: () => ({ histories: [...partial.values()], stops, met }) };
}
