import type { Clock } from './clock.js';
import { AlreadySettledError, JournalUnavailableError } from './errors.js';
import type { CommandRecord, CommandRef } from './journal.js';
import { isResolveOf } from './resolve-detail.js';

/**
 * An operator's resolve as both of its doors answer it — the admin endpoint for `sluicectl`
 * (docs/admin-api.md) and the status page (docs/http-api.md#operator-status-page): what is true
 * once the journal's sync is done, or failed, or still running after RESOLVE_SYNC_WAIT_MS. The
 * resolve takes effect in the daemon at once (the command's worker stops, the journal's
 * connection holds the outcome) and only its durability waits, so a failed or slow sync must
 * not be answered as a failed resolve; nor may the same resolve asked again (a retry after a
 * timeout) be answered as someone else's (ALREADY_SETTLED): it is this one, and its answer says
 * so and whether it is on disk.
 */

/**
 * How long a resolve waits for the journal's sync before it answers that the resolve took
 * effect but is not on disk yet: sluicectl gives up after 30 s, and an operator who then hears
 * nothing (or a page that shows nothing) would take the resolve for failed although the daemon
 * acts on it.
 */
export const RESOLVE_SYNC_WAIT_MS = 5_000;

/** What a resolve needs from the pipeline. */
export interface ResolvePipeline {
  resolve(ref: CommandRef, by: string, reason: string): CommandRecord;
  get(ref: CommandRef): CommandRecord | undefined;
  durable(): Promise<void>;
}

export type ResolveAnswer =
  /** On disk: `detail` is set for the same resolve asked again. */
  | {
      readonly kind: 'durable';
      readonly record: CommandRecord;
      readonly replayed: boolean;
      readonly detail: string | null;
    }
  /** Took effect, not on disk yet: answered 503 with the result, `detail` says so and why. */
  | {
      readonly kind: 'unsynced';
      readonly record: CommandRecord;
      readonly replayed: boolean;
      readonly detail: string;
      readonly why: string;
    }
  /** Did not take effect (409 ALREADY_SETTLED: another outcome; 503: the journal). */
  | {
      readonly kind: 'refused';
      readonly status: 409 | 503;
      readonly code: 'ALREADY_SETTLED' | 'JOURNAL_UNAVAILABLE';
      readonly detail: string;
    };

/**
 * Resolves `ref` as `by` with `reason` and waits at most `waitMs` for it to be on disk. An
 * unknown command throws UnknownCommandError, as pipeline.resolve does; `resolved` is called
 * once when this call is the one that resolved it (not a replay), for the caller's log line.
 */
export async function resolveAndSync(
  pipeline: ResolvePipeline,
  clock: Clock,
  request: {
    readonly ref: CommandRef;
    readonly by: string;
    readonly reason: string;
    readonly waitMs?: number;
  },
  resolved: (record: CommandRecord) => void,
): Promise<ResolveAnswer> {
  const { ref, by, reason } = request;
  const waitMs = request.waitMs ?? RESOLVE_SYNC_WAIT_MS;
  let record: CommandRecord;
  let replayed = false;
  try {
    record = pipeline.resolve(ref, by, reason);
    resolved(record);
  } catch (error) {
    const current = error instanceof AlreadySettledError ? pipeline.get(ref) : undefined;
    if (current !== undefined && resolvedBy(current, by, reason)) {
      record = current;
      replayed = true;
    } else if (error instanceof AlreadySettledError && current !== undefined) {
      return {
        kind: 'refused',
        status: 409,
        code: 'ALREADY_SETTLED',
        detail: settledDetail(current),
      };
    } else if (error instanceof JournalUnavailableError) {
      return {
        kind: 'refused',
        status: 503,
        code: 'JOURNAL_UNAVAILABLE',
        detail: `the resolve did not take effect: ${error.message}; the command is as it was and the daemon goes on with it`,
      };
    } else throw error;
  }
  const when = new Date(record.settledAt ?? clock.now()).toISOString();
  const same = replayed ? `already resolved by this same request at ${when}` : null;
  const unsynced = await syncedWithin(pipeline, waitMs);
  if (unsynced === null) {
    return {
      kind: 'durable',
      record,
      replayed,
      detail: same === null ? null : `${same}; it is on disk`,
    };
  }
  let now: CommandRecord | undefined;
  try {
    now = pipeline.get(ref);
  } catch {
    now = undefined;
  }
  if (now !== undefined && resolvedBy(now, by, reason)) {
    return {
      kind: 'unsynced',
      record: now,
      replayed,
      why: unsynced,
      detail: `the resolve took effect (${same ?? `resolved at ${when}`}): the command is failed RESOLVED_BY_OPERATOR and the daemon does nothing more for it, but it is not on disk yet: ${unsynced}. A stop or crash of the daemon before the journal has made it durable (after a failed sync: written its log anew and synced it) would leave the command open again, to be settled by reading the controller. Ask for the same resolve again to learn when it is on disk`,
    };
  }
  // The batch that held it was lost (its commit failed): the journal kept nothing of it.
  return {
    kind: 'refused',
    status: 503,
    code: 'JOURNAL_UNAVAILABLE',
    detail: `the resolve did not take effect: the journal lost it (${unsynced}); the command is ${now === undefined ? 'as the journal holds it' : now.state} and the daemon goes on with it`,
  };
}

/** The resolve of this operator with this reason (resolve-detail.ts), on disk or not. */
function resolvedBy(record: CommandRecord, by: string, reason: string): boolean {
  return (
    record.code === 'RESOLVED_BY_OPERATOR' &&
    record.detail !== null &&
    isResolveOf(record.detail, by, reason)
  );
}

/** An ALREADY_SETTLED answer that says when and how: an operator's resolve names who and why. */
function settledDetail(record: CommandRecord): string {
  const at = record.settledAt === null ? '' : ` at ${new Date(record.settledAt).toISOString()}`;
  return `command "${record.key}" is already ${record.state}${record.code === null ? '' : ` (${record.code})`}${at}: ${record.detail ?? ''}`;
}

/**
 * Waits for the journal's sync, at most `ms`: null once every write so far is on disk,
 * otherwise why not (the sync failed, or it has not returned yet).
 */
async function syncedWithin(pipeline: ResolvePipeline, ms: number): Promise<string | null> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<string>((resolve) => {
    timer = setTimeout(() => {
      resolve(`the journal's sync has not returned within ${ms / 1000} s (a slow or stalled disk)`);
    }, ms);
  });
  try {
    return await Promise.race([
      pipeline.durable().then(
        () => null,
        (error: unknown) => (error instanceof Error ? error.message : String(error)),
      ),
      late,
    ]);
  } finally {
    clearTimeout(timer);
  }
}
