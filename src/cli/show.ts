import { actionText } from '../views/command-list.js';
import type { OpenStatus } from '../views/command-show.js';
import type { CommandStory, Hit, StoryEvent, StoryKind } from '../views/command-story.js';
import {
  aheadText,
  expiredText,
  neverSentText,
  pausedText,
  settlingText,
} from '../views/open-commands.js';
import type { JournalEvent } from '../core/journal.js';
import { resolveDetail } from '../core/resolve-detail.js';
import { refusalAdvice } from '../views/command-advice.js';
import type { CliContext } from './context.js';
import { formatDuration, relative } from './durations.js';
import { EXIT, type ExitCode } from './errors.js';
import { withJournal } from './journal-reader.js';
import { readShow } from './show-read.js';
import { observationText, outcomeText } from './result-view.js';
import { keyWords, sluicectlWords } from './typed-back.js';
import { clean, renderFields, renderTable, stateTone, type Field, type Tone } from './table.js';

/** `sluicectl show KEY`: the whole story of one command, from the journal (views/command-show.ts). */
export async function runShow(
  ctx: CliContext,
  key: string,
  scope: string | undefined,
): Promise<ExitCode> {
  const now = ctx.now();
  // A command found is shown from the rows read: no check of the whole file. One not found is
  // checked before it is said (withJournal): a damaged page may hold the key. A part of it on a
  // damaged page (its row, its history, its device's open commands) is said, and what could be
  // read is shown (show-read.ts): exit 1, JOURNAL_DAMAGED.
  const read = await withJournal(
    ctx,
    ctx.journalPath(),
    (journal) => readShow(journal, key, scope, now, () => ctx.deviceTimings()),
    () => false,
  );
  const { value } = read;
  for (const note of value.notes) ctx.warn(note);
  if (value.kind === 'row-unreadable') {
    if (ctx.json) {
      ctx.outJson({
        key: value.key,
        scope: value.scope,
        row: 'unreadable',
        history: value.history.map((e) => ({ ...e, at: new Date(e.at).toISOString() })),
        unreadable: value.notes,
      });
    } else {
      ctx.out(renderUnreadable(value.key, value.scope, value.history, now, ctx));
    }
    return read.settle(EXIT.OK, value.met);
  }
  const { shown } = value;
  const met = value.met ?? undefined;
  if (shown.open !== null) await ctx.warnIfDaemonAbsent();
  const advice = refusalAdvice(
    shown,
    shown.outcome === null ? null : ctx.deviceProfile(shown.device),
    sluicectlWords(ctx),
  );
  if (ctx.json) {
    ctx.outJson(
      value.notes.length === 0
        ? { ...shown, advice }
        : { ...shown, advice, unreadable: value.notes },
    );
    return read.settle(EXIT.OK, met);
  }
  ctx.out(renderStory(shown, shown.open, now, ctx, advice, scope));
  return read.settle(EXIT.OK, met);
}

/** A command whose row could not be read: its key, and the entries of its history that could. */
function renderUnreadable(
  key: string,
  scope: string,
  history: readonly JournalEvent[],
  now: number,
  ctx: CliContext,
): string {
  const style = ctx.style;
  const at = (ms: number): string => new Date(ms).toISOString();
  return [
    `${style.paint(`Command ${key}`, 'bold')}  (scope ${scope})\n`,
    renderFields(
      [
        [
          'row',
          'UNREADABLE: on a page of the journal SQLite could not read (device, action, state unknown)',
          'bad',
        ],
      ],
      style,
    ),
    '\nHistory (the entries that could be read)\n',
    history.length === 0
      ? '  none could be read\n'
      : renderTable(
          [
            { header: 'at', value: (e: JournalEvent) => at(e.at) },
            { header: 'age', value: (e) => relative(e.at, now) },
            { header: 'intake', value: (e) => e.intake },
            {
              header: 'state',
              value: (e) =>
                e.from === null ? `→ ${e.to}` : e.from === e.to ? e.to : `${e.from} → ${e.to}`,
            },
            { header: 'detail', value: (e) => e.detail },
          ],
          history,
          style,
          '  ',
        ),
  ].join('');
}

const WHAT: Readonly<Record<StoryKind, string>> = {
  received: 'received',
  duplicate: 'duplicate seen',
  'key-reuse': 'KEY REUSE refused',
  dispatched: 'dispatched',
  redispatched: 'dispatched again',
  settled: 'settled',
  operator: 'operator',
  note: 'note',
};

function eventTone(e: StoryEvent): Tone | null {
  switch (e.kind) {
    case 'settled':
      return stateTone(e.to);
    case 'key-reuse':
    case 'operator':
      return 'warn';
    case 'received':
    case 'duplicate':
    case 'dispatched':
    case 'redispatched':
    case 'note':
      return null;
  }
}

function hitCount(hits: readonly Hit[]): number {
  return hits.reduce((n, h) => n + h.count, 0);
}

/** `mqtt 2m8s ago, https ×1200 (first 3h ago, last 2s ago)`. */
function hitsText(hits: readonly Hit[], now: number): string {
  return hits
    .map((h) =>
      h.count === 1
        ? `${h.intake} ${relative(Date.parse(h.at), now)}`
        : `${h.intake} ×${h.count} (first ${relative(Date.parse(h.firstAt), now)}, last ${relative(Date.parse(h.at), now)})`,
    )
    .join(', ');
}

/**
 * What an open command waits for, from the journal: an accepted one, the commands its device
 * runs first; a dispatched one, the readback that settles its write, whose effect is unknown
 * until then, or, when its latest write was never sent, its course again (neverSentText). "Not settled yet" alone left an operator guessing whether anything was happening.
 * One whose device the configuration does not have waits for nothing: the daemon has no worker
 * for it, whatever its device's queue holds (as the status page and the sweep say it).
 */
function waitingText(
  s: CommandStory,
  open: OpenStatus | null,
  now: number,
  scope: string | undefined,
  /** How the command line it prints begins (sluicectlWords). */
  sluicectl: string,
  /** The configuration was read: a device without timings is one it does not have. */
  configured: () => boolean,
): string | null {
  if (open !== null && open.confirmTimeoutMs === null && configured()) {
    return `nothing: its device is not in the configuration: no worker can settle it; an operator resolves it: ${sluicectl} resolve --as failed --reason "…" ${keyWords(s.key, scope)}`;
  }
  if (s.state === 'accepted') {
    // Only for a device the configuration has: no worker takes one it no longer has.
    const expired =
      open === null || open.confirmTimeoutMs === null
        ? null
        : expiredText(Date.parse(s.freshness.deadline), now);
    const ahead =
      open === null || open.waitsBehind.length === 0
        ? null
        : aheadText(open.waitsBehind, open.waitsBehindCount);
    if (ahead === null || expired === null) return ahead ?? expired;
    return `${ahead}; ${expired}`;
  }
  if (open !== null && open.waitsBehind.length > 0 && s.state === 'dispatched') {
    return pausedText(open.waitsBehind, open.waitsBehindCount);
  }
  if (s.state !== 'dispatched' || s.dispatch === null) return null;
  // Its latest write never left the gateway: no readback settles it (neverSentText).
  const never = open?.neverSent ?? null;
  if (never !== null) {
    const since = neverSentText(
      s.dispatch.seq,
      never,
      `${never.since} (${relative(Date.parse(never.since), now)})`,
    );
    return never.roundAgain
      ? since
      : `${since}. Read it now: ${sluicectl} reverify ${keyWords(s.key, scope)}`;
  }
  return (
    `${settlingText(s.dispatch.seq, relative(Date.parse(s.dispatch.at), now))}. ` +
    `Read it now: ${sluicectl} reverify ${keyWords(s.key, scope)}`
  );
}

/**
 * `3m12s open`; for a command accepted ahead of the clock (the gateway's clock set back since
 * it was accepted), that its age is unknown: "0ms open" was an age the clock cannot tell.
 */
function openFor(open: OpenStatus | null): string {
  if (open?.acceptedAheadMs === null || open?.acceptedAheadMs === undefined) {
    return `${formatDuration(open?.ageMs ?? 0)} open`;
  }
  return `open for an unknown time: accepted ${formatDuration(open.acceptedAheadMs)} ahead of the gateway's clock, which was set back since`;
}

function renderStory(
  s: CommandStory,
  open: OpenStatus | null,
  now: number,
  ctx: CliContext,
  advice: string | null,
  /** The --scope given: the lines printed to run next need it too. */
  scope: string | undefined,
): string {
  const style = ctx.style;
  const at = (iso: string): string => `${iso} (${relative(Date.parse(iso), now)})`;
  const out: string[] = [];
  out.push(`${style.paint(`Command ${s.key}`, 'bold')}  (scope ${s.scope})\n`);
  const head: Field[] = [
    ['device', s.device],
    ['action', actionText(s.action, s.position)],
    ['state', outcomeText(s.state, s.code, s.faultCode), stateTone(s.state)],
  ];
  if (s.detail !== null) head.push(['detail', s.detail]);
  out.push(renderFields(head, style));

  const f = s.freshness;
  const age =
    f.ageAtAcceptMs >= 0
      ? `${formatDuration(f.ageAtAcceptMs)} old when accepted`
      : `issued ${formatDuration(-f.ageAtAcceptMs)} in the future`;
  const margin =
    f.marginAtDispatchMs === null
      ? 'never dispatched'
      : f.marginAtDispatchMs >= 0
        ? `dispatched ${formatDuration(f.marginAtDispatchMs)} before the deadline`
        : `dispatched ${formatDuration(-f.marginAtDispatchMs)} AFTER the deadline`;
  const story: Field[] = [
    ['received', `${at(s.received.at)} over ${s.received.intake}, identity ${s.received.scope}`],
    [
      'issued',
      `${f.issuedAt} ${f.issuedAtSource === 'issuer' ? 'by the issuer' : '(gateway receive time: the command carried no issuedAt)'}`,
    ],
    ['deadline', `${at(f.deadline)}, ttl ${formatDuration(f.ttlMs)}`],
    [
      'freshness',
      f.refused === null ? `${age}; ${margin}` : `REFUSED: ${f.refused}`,
      f.refused === null ? null : 'warn',
    ],
    [
      'clocks',
      s.clocks ?? (s.dispatch === null ? 'not judged (never dispatched)' : 'not recorded'),
    ],
    [
      'duplicates',
      s.duplicates.length === 0
        ? 'none'
        : `${hitCount(s.duplicates)}: ${hitsText(s.duplicates, now)}`,
    ],
  ];
  if (s.keyReuses.length > 0) {
    story.push([
      'key reuse',
      `${hitCount(s.keyReuses)} refused (same key, different command): ${hitsText(s.keyReuses, now)}`,
      'warn',
    ]);
  }
  story.push([
    'dispatch',
    s.dispatch === null
      ? 'never written'
      : `${at(s.dispatch.at)}, seq ${s.dispatch.seq ?? '-'}, ${s.dispatch.attempts} write${s.dispatch.attempts === 1 ? '' : 's'}`,
  ]);
  for (const r of s.readbacks)
    story.push([`readback ${r.when}`, observationText(r.observation, now)]);
  for (const o of s.operator) {
    // Who and why quoted, as this version journals them, for a resolve of an earlier one too.
    const words =
      o.resolve === null ? o.detail : resolveDetail(o.resolve.by, o.resolve.reason, o.resolve.note);
    story.push(['operator', `${at(o.at)}: ${words}`, 'warn']);
  }
  story.push([
    'outcome',
    s.outcome === null
      ? open?.overdueMs !== null && open?.overdueMs !== undefined
        ? `STUCK: still ${s.state}, ${formatDuration(open.overdueMs)} past ${open.stuckReason ?? 'its bound'}; ` +
          // reverify reads the device, and is refused for one the configuration no longer has.
          (open.confirmTimeoutMs === null && ctx.deviceTimings() !== null
            ? `settle it: ${sluicectlWords(ctx)} resolve --as failed --reason "…" ${keyWords(s.key, scope)}`
            : `settle it: ${sluicectlWords(ctx)} reverify ${keyWords(s.key, scope)}, or ${sluicectlWords(ctx)} resolve --as failed --reason "…" ${keyWords(s.key, scope)}`)
        : `still ${s.state}: not settled yet (${openFor(open)})`
      : `${outcomeText(s.outcome.state, s.outcome.code, s.outcome.faultCode)} ${at(s.outcome.settledAt)}`,
    s.outcome === null ? (open?.stuck === true ? 'bad' : null) : stateTone(s.outcome.state),
  ]);
  if (advice !== null) story.push(['what to do', advice, 'warn']);
  const waiting =
    s.outcome === null
      ? waitingText(s, open, now, scope, sluicectlWords(ctx), () => ctx.deviceTimings() !== null)
      : null;
  if (waiting !== null) story.push(['waiting for', waiting, 'warn']);
  out.push('\n', renderFields(story, style));

  out.push('\nHistory\n');
  out.push(
    renderTable(
      [
        { header: 'at', value: (e: StoryEvent) => e.at },
        { header: 'age', value: (e) => relative(Date.parse(e.at), now) },
        { header: 'intake', value: (e) => e.intake },
        { header: 'event', value: (e) => WHAT[e.kind], tone: eventTone },
        {
          header: 'state',
          value: (e) =>
            e.from === null ? `→ ${e.to}` : e.from === e.to ? e.to : `${e.from} → ${e.to}`,
        },
        { header: 'detail', value: (e) => e.detail },
      ],
      s.history,
      style,
      '  ',
    ),
  );
  out.push('\nResult (stored; every replay returns these bytes)\n');
  out.push(
    s.result === null
      ? '  none yet: the command is open\n'
      : `  ${clean(JSON.stringify(s.result))}\n`,
  );
  return out.join('');
}
