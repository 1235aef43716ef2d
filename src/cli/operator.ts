import { hostname, userInfo } from 'node:os';
import { AdminClient, AnswerLostError } from './admin-client.js';
import type { CliContext } from './context.js';
import { CliError, EXIT, UsageError, type ExitCode } from './errors.js';
import { isResultDocument, resultFields, type ResultDocument } from './result-view.js';
import { renderFields } from './table.js';
import { keyWords, sluicectlWords } from './typed-back.js';

/**
 * `reverify` and `resolve`: the operator's two ways to settle an open command, both through the
 * daemon (docs/admin-api.md), which journals them with who did it.
 */

/** Who acts: the login behind sudo, else the user, at this host (`alice@gw-7`). */
export function operatorName(env: NodeJS.ProcessEnv): string {
  const sudo = env.SUDO_USER;
  const user =
    sudo !== undefined && sudo !== ''
      ? sudo
      : env.USER !== undefined && env.USER !== ''
        ? env.USER
        : safeUserName();
  return `${user}@${hostname()}`;
}

function safeUserName(): string {
  try {
    return userInfo().username;
  } catch {
    return 'unknown';
  }
}

export const MAX_REASON = 500;

function commandPath(key: string, action: 'reverify' | 'resolve'): string {
  return `/v1/commands/${encodeURIComponent(key)}/${action}`;
}

function resultOf(body: unknown): ResultDocument {
  const result = (body as { result?: unknown } | null)?.result;
  if (!isResultDocument(result)) throw new CliError('the daemon answered without a result');
  return result;
}

export async function runReverify(
  ctx: CliContext,
  key: string,
  scope: string | undefined,
): Promise<ExitCode> {
  const by = operatorName(ctx.io.env);
  const answer = await new AdminClient(ctx.adminEndpoint())
    .post(commandPath(key, 'reverify'), {
      ...(scope === undefined ? {} : { scope }),
      by,
    })
    .catch((error: unknown) => {
      if (!(error instanceof AnswerLostError)) throw error;
      throw new CliError(
        `${error.message}. The reverify may have been noted in the command's history, and the command may have settled since: ${showLine(ctx, key, scope)}`,
      );
    });
  const body = (answer.body ?? {}) as {
    settled?: unknown;
    byReadback?: unknown;
    detail?: unknown;
  };
  const result = resultOf(answer.body);
  const settled = body.settled === true;
  // Whether a readback taken after the request settled it: the command may have ended
  // otherwise while the reverify waited (its confirm timeout with no read answering, its
  // deadline, another operator's resolve). Null from a daemon that does not say.
  const byReadback = typeof body.byReadback === 'boolean' ? body.byReadback : null;
  const detail = typeof body.detail === 'string' ? body.detail : null;
  if (ctx.json) {
    ctx.outJson({ key, by, settled, byReadback, detail, result });
    return EXIT.OK;
  }
  if (settled) {
    const outcome = `${result.state}${result.code === null ? '' : ` ${result.code}`}`;
    ctx.out(
      byReadback === false
        ? `${ctx.style.paint('SETTLED', 'warn')} while the reverify waited, not by a fresh readback (no read of the device taken since the request settled it): ${outcome}; its detail says how it ended\n`
        : `${ctx.style.paint('SETTLED', 'good')}${byReadback === true ? ' by a fresh readback' : ''}: ${outcome}\n`,
    );
  } else {
    // The daemon says why (a device still travelling, a device no longer configured).
    ctx.out(
      `${ctx.style.paint('NOT SETTLED', 'warn')}: the command stays ${result.state}` +
        `${detail === null ? '' : `; ${detail}`}\n`,
    );
  }
  ctx.out(renderFields(resultFields(result, ctx.now()), ctx.style));
  return EXIT.OK;
}

/** `sluicectl show KEY [--scope S]`, as it can be typed back. */
function showLine(ctx: CliContext, key: string, scope: string | undefined): string {
  return `${sluicectlWords(ctx)} show ${keyWords(key, scope)}`;
}

export interface ResolveOptions {
  readonly as: string;
  readonly reason?: string;
  readonly scope?: string;
}

export async function runResolve(
  ctx: CliContext,
  key: string,
  options: ResolveOptions,
): Promise<ExitCode> {
  if (options.as !== 'failed') {
    throw new UsageError(
      `--as: only "failed" is supported (RESOLVED_BY_OPERATOR), not "${options.as}"`,
    );
  }
  const reason = options.reason?.trim() ?? '';
  if (reason === '') {
    throw new UsageError(
      'resolve needs --reason "…": why this command is settled by hand (it is recorded in its history)',
    );
  }
  if (reason.length > MAX_REASON) {
    throw new UsageError(
      `--reason: at most ${MAX_REASON} characters (this one has ${reason.length})`,
    );
  }
  const by = operatorName(ctx.io.env);
  // 503 with a result: the resolve took effect, but the journal has not made it durable (its
  // sync failed or stalls): said as such, not as a refusal (docs/admin-api.md).
  const answer = await new AdminClient(ctx.adminEndpoint())
    .post(
      commandPath(key, 'resolve'),
      {
        ...(options.scope === undefined ? {} : { scope: options.scope }),
        as: 'failed',
        reason,
        by,
      },
      [503],
    )
    .catch((error: unknown) => {
      if (!(error instanceof AnswerLostError)) throw error;
      // The daemon answers a retry of this very resolve (same who and reason) as this one.
      throw new CliError(
        `${error.message}. The resolve may have taken effect, and may not be on disk yet: run the same resolve again, with the same --reason, to learn (a retry of this resolve is answered as it, not refused as already settled); or look: ${showLine(ctx, key, options.scope)}`,
      );
    });
  const body = (answer.body ?? {}) as { code?: unknown; detail?: unknown; replayed?: unknown };
  const detail = typeof body.detail === 'string' ? body.detail : null;
  if (answer.status === 503 && !isResultDocument((answer.body as { result?: unknown }).result)) {
    const code = typeof body.code === 'string' ? body.code : 'HTTP_503';
    throw new CliError(`the daemon refused: ${code}: ${detail ?? ''}`, EXIT.ERROR, code);
  }
  const result = resultOf(answer.body);
  const durable = answer.status !== 503;
  if (ctx.json) {
    ctx.outJson({
      key,
      by,
      reason,
      durable,
      replayed: body.replayed === true,
      ...(detail === null ? {} : { detail }),
      result,
    });
    return durable ? EXIT.OK : EXIT.ERROR;
  }
  if (!durable) {
    ctx.out(
      `${ctx.style.paint('RESOLVED, NOT YET ON DISK', 'bad')} by ${by}: ${result.state} ${result.code ?? ''}; ${detail ?? ''}\n`,
    );
    ctx.out(renderFields(resultFields(result, ctx.now()), ctx.style));
    return EXIT.ERROR;
  }
  // A retry of this very resolve (the first answer lost, e.g. to a timeout): said as such.
  const again =
    body.replayed === true ? ` (${detail ?? 'already resolved by this same request'})` : '';
  // A command dispatched before the resolve had its own write sent, or on its way: the resolve
  // wrote nothing, but "nothing was written" would tell the operator the valve was not commanded.
  const written =
    result.seq === null || result.seq === undefined
      ? 'nothing was written to the controller'
      : `the resolve wrote nothing to the controller; the command had been dispatched (seq ${result.seq}): its detail says what is known of its write`;
  ctx.out(
    `${ctx.style.paint('RESOLVED', 'warn')} by ${by}: ${result.state} ${result.code ?? ''}; ${written}${again}\n`,
  );
  ctx.out(renderFields(resultFields(result, ctx.now()), ctx.style));
  return EXIT.OK;
}
