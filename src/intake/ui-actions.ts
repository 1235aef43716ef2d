import type { Clock } from '../core/clock.js';
import { settledByReadback } from '../core/reverify-verdict.js';
import { parseIdempotencyKey } from '../core/command.js';
import { AlreadySettledError, InvalidKeyError, UnknownCommandError } from '../core/errors.js';
import type { CommandRef } from '../core/journal.js';
import type { Logger } from '../core/logger.js';
import { resolveAndSync, type ResolveAnswer } from '../core/operator-resolve.js';
import type { CommandPipeline } from '../core/pipeline.js';
import { toResult } from '../core/result.js';
import { clientAddress } from './client-address.js';
import { makeProblem, sendProblem } from './https-problems.js';
import type { Reply, Request } from './https-types.js';
import type { UiSession } from './ui-session.js';

/**
 * The status page's two operator actions on an open command, reverify and resolve
 * (docs/http-api.md#operator-status-page): the same pipeline calls as `sluicectl`
 * (docs/admin-api.md), journaled with who asked from where. Their routes, and the session,
 * origin, CSRF and role checks in front of them, are ui-routes.ts's.
 */

/** How long reverify waits for the fresh readback's verdict, as `sluicectl reverify` does. */
const REVERIFY_WAIT_MS = 10_000;
const MAX_REASON = 500;

/**
 * A command is named in the path (`/ui/api/commands/{scope}/{key}`) or in the query
 * (`/ui/api/command?scope=…&key=…`), which the page uses: `.` and `..` are legal keys (SPEC),
 * and a browser resolves them as path segments before the request leaves it, percent-encoded
 * (`%2E`) or not — `/ui/api/commands/ops/..` is sent as `/ui/api/commands/`.
 */
export interface KeyParams {
  Params: { scope?: string; key?: string };
  /** An array when a parameter is given more than once. */
  Querystring: { scope?: string | string[]; key?: string | string[] };
}

export interface OperatorActionsOptions {
  readonly pipeline: CommandPipeline;
  readonly clock: Clock;
  readonly logger: Logger;
  /** The session the route's checks found for the request. */
  readonly sessionOf: (request: Request) => UiSession;
  /** The session is still live (UiSessions.alive): a lapse found here ends it. */
  readonly sessionAlive: (session: UiSession) => boolean;
  /**
   * Aborted once the session ends, by a logout or a reload or by lapsing (its certificate
   * expiring, its idle or maximum age reached) at that moment (UiSessions.watch); released
   * once the wait is over.
   */
  readonly watchSession: (session: UiSession) => {
    readonly ended: AbortSignal;
    readonly release: () => void;
  };
  /** The 401 of a request whose session is gone. */
  readonly unauthorized: (reply: Reply, detail?: string) => Reply;
  readonly json: (reply: Reply, status: number, body: unknown) => Reply;
}

/** An operator action's route handler. */
type ActionHandler = (
  request: Request<KeyParams & { Body: unknown }>,
  reply: Reply,
) => Promise<Reply>;

export function operatorActions(options: OperatorActionsOptions): {
  readonly reverify: ActionHandler;
  readonly resolve: ActionHandler;
} {
  const { pipeline, clock, logger, sessionOf, sessionAlive, watchSession, unauthorized, json } =
    options;

  /**
   * A reverify is a read, and what it reads settles the command as any readback does (its
   * worker, or the sweep's, makes the same read; it writes nothing). What it answers is the
   * session's: a session that ends while the readback runs — above all a reload that replaced
   * its token (64a403a), which refuses everything else of it there and then, or its lapse as its
   * client certificate expires or it times out — is answered 401 at once, not told the verdict
   * later as if it still had the authority to ask; the readback goes on for the command's sake
   * and is journaled as any other. A session found ended before the reverify starts asks for
   * nothing.
   */
  async function reverify(
    request: Request<KeyParams & { Body: unknown }>,
    reply: Reply,
  ): Promise<Reply> {
    const session = sessionOf(request);
    const ref = refOf(request);
    if (ref === null) return unknownCommand(reply);
    if (!sessionAlive(session)) return unauthorized(reply);
    const watch = watchSession(session);
    const by = operatorName(session, clientAddress(request));
    let outcome: Awaited<ReturnType<CommandPipeline['reverify']>> | 'ended';
    const askedAt = clock.now();
    // Its device, for the log line of a session that ends while the readback runs.
    let device: string | undefined;
    try {
      device = pipeline.get(ref)?.device;
      outcome = await untilEnded(pipeline.reverify(ref, by, REVERIFY_WAIT_MS), watch.ended).finally(
        watch.release,
      );
    } catch (error) {
      return actionError(reply, error);
    }
    if (outcome === 'ended' || !sessionAlive(session)) {
      logger.warn(
        { key: ref.key, device, scope: ref.scope, identity: session.identity, by },
        'reverify from the status page not answered: its session ended while the readback ran; the readback goes on and settles the command as any readback does',
      );
      return unauthorized(
        reply,
        'the session ended while the reverify ran (logged out, its token replaced by a reload, its client certificate expired or the session timed out): its verdict is not given to it; log in again and read the command',
      );
    }
    const { record, detail } = outcome;
    const settled = record.state !== 'accepted' && record.state !== 'dispatched';
    logger.warn(
      { key: record.key, device: record.device, by, settled },
      'reverify from the status page',
    );
    return json(reply, 200, {
      key: record.key,
      by,
      settled,
      byReadback: settledByReadback(record, askedAt),
      detail,
      result: toResult(record),
    });
  }

  async function resolve(
    request: Request<KeyParams & { Body: unknown }>,
    reply: Reply,
  ): Promise<Reply> {
    const session = sessionOf(request);
    const ref = refOf(request);
    if (ref === null) return unknownCommand(reply);
    const body = request.body;
    const fields =
      typeof body === 'object' && body !== null && !Array.isArray(body)
        ? (body as Record<string, unknown>)
        : {};
    const reason = typeof fields.reason === 'string' ? fields.reason.trim() : '';
    const errors: string[] = [];
    if (fields.as !== undefined && fields.as !== 'failed') {
      errors.push('as: only "failed": only a readback can confirm a command');
    }
    if (reason === '' || reason.length > MAX_REASON) {
      errors.push(`reason: required, 1–${MAX_REASON} characters`);
    }
    if (errors.length > 0) {
      return sendProblem(
        reply,
        makeProblem(400, 'INVALID_REQUEST', errors.join('; '), {
          title: 'Invalid request',
          errors,
        }),
      );
    }
    const by = operatorName(session, clientAddress(request));
    // Answered as sluicectl's resolve is (operator-resolve.ts): a sync that stalls or fails
    // is a resolve that took effect and is not on disk yet, never a failed one, and the same
    // resolve asked again is this one.
    let answer: ResolveAnswer;
    try {
      answer = await resolveAndSync(pipeline, clock, { ref, by, reason }, (r) => {
        logger.warn({ key: r.key, device: r.device, by }, 'resolved from the status page');
      });
    } catch (error) {
      return actionError(reply, error);
    }
    switch (answer.kind) {
      case 'durable':
        return json(reply, 200, {
          key: answer.record.key,
          by,
          reason,
          result: toResult(answer.record),
          ...(answer.detail === null ? {} : { replayed: true, detail: answer.detail }),
        });
      case 'unsynced':
        logger.error(
          { key: answer.record.key, device: answer.record.device, by, err: answer.why },
          'resolve from the status page not yet on disk',
        );
        return sendProblem(
          reply,
          makeProblem(503, 'JOURNAL_UNAVAILABLE', answer.detail, {
            title: 'Resolved, not yet on disk',
            key: answer.record.key,
            by,
            reason,
            result: toResult(answer.record),
          }),
        );
      case 'refused':
        return sendProblem(
          reply,
          makeProblem(answer.status, answer.code, answer.detail, {
            title:
              answer.code === 'ALREADY_SETTLED'
                ? 'Command already settled'
                : 'Resolve did not take effect',
          }),
        );
    }
  }

  return { reverify, resolve };
}

export /** Who acted, as the history records it: the identity, and that it was the page, from where. */
function operatorName(session: UiSession, ip: string): string {
  return `${session.identity} (status page, ${ip})`;
}

export function refOf(request: Request<KeyParams>): CommandRef | null {
  const named = request.params.key === undefined ? request.query : request.params;
  // Given more than once in the query (an array): no one command is named.
  if (typeof named.scope !== 'string' || typeof named.key !== 'string') return null;
  try {
    return { scope: named.scope, key: parseIdempotencyKey(named.key) };
  } catch (error) {
    if (error instanceof InvalidKeyError) return null;
    throw error;
  }
}

export function unknownCommand(reply: Reply): Reply {
  return sendProblem(
    reply,
    makeProblem(404, 'UNKNOWN_COMMAND', 'no command with this key in this scope'),
  );
}

/**
 * `work`'s value, or 'ended' as soon as `ended` aborts, whichever comes first; `work` goes on
 * either way, and a failure of it after the end is dropped (nobody waits for it any more).
 */
async function untilEnded<T>(work: Promise<T>, ended: AbortSignal): Promise<T | 'ended'> {
  if (ended.aborted) {
    work.catch(() => undefined);
    return 'ended';
  }
  let stop: (() => void) | undefined;
  const stopped = new Promise<'ended'>((resolve) => {
    stop = () => {
      resolve('ended');
    };
    ended.addEventListener('abort', stop, { once: true });
  });
  try {
    return await Promise.race([work, stopped]);
  } finally {
    if (stop !== undefined) ended.removeEventListener('abort', stop);
    work.catch(() => undefined);
  }
}

function actionError(reply: Reply, error: unknown): Reply {
  if (error instanceof UnknownCommandError) return unknownCommand(reply);
  if (error instanceof AlreadySettledError) {
    return sendProblem(
      reply,
      makeProblem(409, 'ALREADY_SETTLED', error.message, { title: 'Command already settled' }),
    );
  }
  throw error;
}
