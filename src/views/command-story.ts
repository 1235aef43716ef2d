import {
  repeatOf,
  DUPLICATE_DETAIL,
  type CommandRecord,
  type JournalEvent,
  type Observation,
} from '../core/journal.js';
import { readResolveDetail, type ResolveWords } from '../core/resolve-detail.js';

/**
 * The whole story of one command, from the journal alone (issue 12): how it was received and
 * by whom, every duplicate and key reuse seen, the freshness and clock checks it was judged
 * on, the dispatch with its sequence number, the readbacks journaled with it, operator
 * actions, and the outcome with its code — plus the stored result, byte for byte what every
 * replay returns. Pure: built from a record and its history. `sluicectl show` and the status
 * page tell the same story from it.
 */

export type StoryKind =
  | 'received'
  | 'duplicate'
  | 'key-reuse'
  | 'dispatched'
  | 'redispatched'
  | 'settled'
  | 'operator'
  | 'note';

export interface StoryEvent {
  readonly at: string;
  readonly kind: StoryKind;
  readonly from: string | null;
  readonly to: string;
  readonly intake: string;
  readonly detail: string;
}

export interface Hit {
  readonly at: string;
  readonly intake: string;
  readonly count: number;
  readonly firstAt: string;
}

export interface CommandStory {
  readonly key: string;
  readonly scope: string;
  readonly device: string;
  readonly action: string;
  readonly position: number | null;
  readonly state: string;
  readonly code: string | null;
  readonly faultCode: string | null;
  readonly detail: string | null;
  readonly fingerprint: string;
  readonly received: {
    readonly at: string;
    readonly intake: string;
    /** The identity the key belongs to. */
    readonly scope: string;
  };
  /**
   * Hits of the key, as the journal keeps them: repeated ones over one intake as one entry,
   * `at` the last, `count` how many since `firstAt`.
   */
  readonly duplicates: readonly Hit[];
  readonly keyReuses: readonly Hit[];
  readonly freshness: {
    readonly issuedAt: string;
    /** `issuer`: the command carried issuedAt; `gateway`: timed from its receipt. */
    readonly issuedAtSource: string;
    readonly ttlMs: number;
    readonly deadline: string;
    /** How old the command was when it was journaled (negative: issued in the future). */
    readonly ageAtAcceptMs: number;
    /** Time left before the deadline when the write was journaled; null if never dispatched. */
    readonly marginAtDispatchMs: number | null;
    /** What the freshness check found, when it refused the command (STALE_COMMAND, CLOCK_SKEW). */
    readonly refused: string | null;
  };
  /** The clocks the dispatch was judged on, as journaled with it (SPEC §6). */
  readonly clocks: string | null;
  readonly dispatch: {
    readonly at: string;
    readonly seq: number | null;
    /** Writes journaled: 1, or 2 after a proven-not-applied redispatch. */
    readonly attempts: number;
  } | null;
  readonly readbacks: readonly {
    readonly when: 'before the write' | 'at settlement';
    readonly observation: Observation;
  }[];
  readonly operator: readonly {
    readonly at: string;
    readonly detail: string;
    /**
     * A resolve's who, why and the daemon's note, read apart (resolve-detail.ts), whether
     * journaled by this version or an earlier one; null for a reverify's note.
     */
    readonly resolve: ResolveWords | null;
  }[];
  readonly outcome: {
    readonly state: string;
    readonly code: string | null;
    readonly faultCode: string | null;
    readonly detail: string | null;
    readonly settledAt: string;
  } | null;
  readonly history: readonly StoryEvent[];
  /** The stored result (null while open): what a replay returns, byte for byte. */
  readonly result: unknown;
}

const iso = (ms: number): string => new Date(ms).toISOString();
const TERMINAL = new Set(['confirmed', 'rejected', 'failed']);
/** Events made by an operator through the daemon's admin endpoint (docs/admin-api.md). */
const OPERATOR_INTAKE = 'admin';

export function classify(event: JournalEvent): StoryKind {
  if (event.from === null) return 'received';
  const hit = repeatOf(event);
  if (hit !== null) return hit.base === DUPLICATE_DETAIL ? 'duplicate' : 'key-reuse';
  if (event.intake === OPERATOR_INTAKE) return 'operator';
  if (event.from === 'accepted' && event.to === 'dispatched') return 'dispatched';
  if (event.detail.startsWith('redispatch:')) return 'redispatched';
  if (event.from !== event.to && TERMINAL.has(event.to)) return 'settled';
  return 'note';
}

export function buildStory(record: CommandRecord, history: readonly JournalEvent[]): CommandStory {
  const events: StoryEvent[] = history.map((e) => ({
    at: iso(e.at),
    kind: classify(e),
    from: e.from,
    to: e.to,
    intake: e.intake,
    detail: e.detail,
  }));
  const received = history.find((e) => e.from === null);
  const dispatchEvent = history.find((e) => classify(e) === 'dispatched');
  const freshnessRefused =
    record.code === 'STALE_COMMAND' || record.code === 'CLOCK_SKEW' ? record.detail : null;
  const readbacks: CommandStory['readbacks'][number][] = [];
  if (record.observedBefore !== null) {
    readbacks.push({ when: 'before the write', observation: record.observedBefore });
  }
  if (record.observed !== null) {
    readbacks.push({ when: 'at settlement', observation: record.observed });
  }
  let result: unknown = null;
  if (record.response !== null) {
    try {
      result = JSON.parse(record.response) as unknown;
    } catch {
      result = record.response;
    }
  }
  return {
    key: record.key,
    scope: record.scope,
    device: record.device,
    action: record.action,
    position: record.position,
    state: record.state,
    code: record.code,
    faultCode: record.faultCode,
    detail: record.detail,
    fingerprint: record.fingerprint,
    received: {
      at: iso(received?.at ?? record.acceptedAt),
      intake: received?.intake ?? record.intake,
      scope: record.scope,
    },
    duplicates: hits(history, 'duplicate'),
    keyReuses: hits(history, 'key-reuse'),
    freshness: {
      issuedAt: iso(record.issuedAt),
      issuedAtSource: record.issuedAtSource,
      ttlMs: record.ttlMs,
      deadline: iso(record.deadline),
      ageAtAcceptMs: record.acceptedAt - record.issuedAt,
      marginAtDispatchMs:
        record.dispatchedAt === null ? null : record.deadline - record.dispatchedAt,
      refused: freshnessRefused,
    },
    clocks: dispatchEvent === undefined ? clockRefusal(record) : clocksOf(dispatchEvent.detail),
    dispatch:
      record.dispatchedAt === null
        ? null
        : { at: iso(record.dispatchedAt), seq: record.seq, attempts: record.attempts },
    readbacks,
    operator: events
      .filter((e) => e.kind === 'operator')
      .map((e) => ({ at: e.at, detail: e.detail, resolve: resolveWords(e) })),
    outcome:
      record.settledAt !== null
        ? {
            state: record.state,
            code: record.code,
            faultCode: record.faultCode,
            detail: record.detail,
            settledAt: iso(record.settledAt),
          }
        : null,
    history: events,
    result,
  };
}

/** A resolve's event: its detail is the outcome's, after its code (`RESOLVED_BY_OPERATOR: `). */
function resolveWords(event: StoryEvent): ResolveWords | null {
  const code = 'RESOLVED_BY_OPERATOR: ';
  return event.to === 'failed' && event.from !== event.to && event.detail.startsWith(code)
    ? readResolveDetail(event.detail.slice(code.length))
    : null;
}

function hits(history: readonly JournalEvent[], kind: 'duplicate' | 'key-reuse'): Hit[] {
  return history
    .filter((e) => classify(e) === kind)
    .map((e) => {
      const hit = repeatOf(e);
      return {
        at: iso(e.at),
        intake: e.intake,
        count: hit?.count ?? 1,
        firstAt: iso(hit?.firstAt ?? e.at),
      };
    });
}

/** The dispatch event reads `seq 7; gateway clock LOCKED (ptp); controller skew +3 ms ± 1 ms`. */
function clocksOf(detail: string): string | null {
  const rest = detail.replace(/^seq \d+;?\s*/, '');
  return rest === '' ? null : rest;
}

function clockRefusal(record: CommandRecord): string | null {
  return record.code === 'CLOCK_SKEW' ? record.detail : null;
}
