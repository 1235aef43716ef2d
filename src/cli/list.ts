import { COMMAND_STATES, type CommandState } from '../core/command.js';
import { actionText, listItem, type ListItem } from '../views/command-list.js';
import type { ListRead } from '../journal/damaged-lists.js';
import type { CliContext } from './context.js';
import { indexNote, namedText, unreadableJson } from './damaged-words.js';
import { relative } from './durations.js';
import { EXIT, UsageError, type ExitCode } from './errors.js';
import { withJournal } from './journal-reader.js';
import { ageText } from './stuck.js';
import { dash, renderTable, stateTone, type Column } from './table.js';

/** `sluicectl list`: commands from the journal, newest first, with filters. */

export interface ListOptions {
  readonly device?: string;
  readonly state?: string;
  /** Only commands accepted within this long (ms). */
  readonly since?: number;
  readonly limit: number;
}

export function parseState(value: string): CommandState {
  const state = COMMAND_STATES.find((s) => s === value);
  if (state === undefined) {
    throw new UsageError(`--state: "${value}" is not a state (${COMMAND_STATES.join(', ')})`);
  }
  return state;
}

export async function runList(ctx: CliContext, options: ListOptions): Promise<ExitCode> {
  const state = options.state === undefined ? undefined : parseState(options.state);
  const now = ctx.now();
  // listReadable: on a journal whose damaged page holds some of the commands listed, those that
  // can be read are listed and the others named; on one whose index the listing reads through
  // is damaged, they are found another way (damaged-lists.ts). Either way exit 1, JOURNAL_DAMAGED.
  const read = await withJournal(ctx, ctx.journalPath(), (journal) => {
    // One past the limit: whether more commands match than are shown, said only when true
    // (a page of exactly the limit is the whole answer).
    const found = journal.listReadable({
      ...(options.device === undefined ? {} : { device: options.device }),
      ...(state === undefined ? {} : { state }),
      ...(options.since === undefined ? {} : { since: now - options.since }),
      limit: options.limit + 1,
    });
    const any = (r: ListRead): boolean => r.records.length > 0 || r.unreadable.length > 0;
    return {
      found,
      // Found nothing: has the journal ever held a command for that device (one removed from
      // the configuration since), or is it a name no one knows?
      deviceKnown:
        options.device === undefined ||
        any(found) ||
        any(journal.listReadable({ device: options.device, limit: 1 })),
    };
  });
  const { found, deviceKnown } = read.value;
  const records = found.records.slice(0, options.limit);
  const more = found.records.length > options.limit;
  const met = found.met ?? undefined;
  if (!deviceKnown && options.device !== undefined) {
    const config = ctx.optionalConfig();
    // A misspelt device would read "No commands found.": as though it had none.
    if (config !== null && config.devices[options.device] === undefined) {
      throw new UsageError(
        `--device: unknown device "${options.device}": not in the configuration (configured: ${Object.keys(config.devices).join(', ') || 'none'}), and no command in the journal names it`,
      );
    }
  }
  const viaNote = indexNote(
    found,
    found.damagedIndex === 'commands_device'
      ? 'index of the commands by device'
      : 'index of the commands by time',
    'the commands listed',
  );
  if (viaNote !== null) ctx.warn(viaNote);
  const lost = found.unreadable.length;
  if (lost > 0) {
    ctx.warn(
      `${lost} command${lost === 1 ? ' is' : 's are'} on pages of the journal SQLite could not read${state === undefined ? '' : ` (whether ${lost === 1 ? 'it is' : 'they are'} ${state} is unknown)`}: not listed below: ${namedText(found.unreadable)}`,
    );
  }
  const items = records.map((r) => listItem(r, now));
  if (ctx.json) {
    ctx.outJson({
      commands: items,
      more,
      unreadable: lost,
      unreadableCommands: unreadableJson(found.unreadable),
    });
    return read.settle(EXIT.OK, met);
  }
  if (items.length === 0) {
    ctx.out('No commands found.\n');
    return read.settle(EXIT.OK, met);
  }
  const columns: Column<ListItem>[] = [
    { header: 'key', value: (i) => i.key },
    { header: 'scope', value: (i) => i.scope },
    { header: 'device', value: (i) => i.device },
    { header: 'action', value: (i) => actionText(i.action, i.position) },
    { header: 'state', value: (i) => i.state, tone: (i) => stateTone(i.state) },
    {
      header: 'code',
      value: (i) => (i.faultCode === null ? dash(i.code) : `${dash(i.code)} ${i.faultCode}`),
      tone: (i) => stateTone(i.state),
    },
    { header: 'seq', value: (i) => dash(i.seq), align: 'right' },
    { header: 'intake', value: (i) => i.intake },
    // A command accepted ahead of the clock (set back since): its age unknown, as `stuck` says.
    { header: 'age', value: (i) => ageText(i, now) },
    {
      header: 'settled',
      value: (i) => (i.settledAt === null ? '-' : relative(Date.parse(i.settledAt), now)),
    },
  ];
  ctx.out(renderTable(columns, items, ctx.style));
  if (more) {
    ctx.warn(`showing the newest ${options.limit}; more match: use --limit for more`);
  }
  return read.settle(EXIT.OK, met);
}
