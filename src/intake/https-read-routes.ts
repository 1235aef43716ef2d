import type { Clock } from '../core/clock.js';
import { isTerminal, parseIdempotencyKey } from '../core/command.js';
import { InvalidKeyError, JournalUnavailableError } from '../core/errors.js';
import type { CommandRef } from '../core/journal.js';
import type { CommandPipeline } from '../core/pipeline.js';
import { deviceDocument } from './device-view.js';
import { commandPath } from './https-command-routes.js';
import type { CallerGuard } from './https-guard.js';
import { JSON_TYPE, makeProblem, send, sendProblem } from './https-problems.js';
import type { App, HttpsMetrics, Readiness, Reply, Request } from './https-types.js';
import type { IdentityRegistry } from './identities.js';
import { resultBody } from './outcome.js';

/**
 * The read side of the HTTPS intake: a caller's command with its history, the devices as the
 * gateway mirrors them (behind the guard), and health, readiness and metrics (open: keep them on
 * a management network). Nothing here changes state.
 */

export interface ReadRoutesOptions {
  readonly pipeline: CommandPipeline;
  readonly identities: IdentityRegistry;
  readonly metrics: HttpsMetrics;
  readonly readiness: () => Readiness;
  readonly clock: Clock;
  readonly guard: CallerGuard;
}

const iso = (ms: number): string => new Date(ms).toISOString();

export function registerReadRoutes(app: App, options: ReadRoutesOptions): void {
  const { guard } = options;
  app.get<{ Params: { key: string } }>('/v1/commands/:key', guard.hooks, async (request, reply) =>
    getCommand(options, request, reply),
  );
  app.get('/v1/devices', guard.hooks, async (request, reply) =>
    getDevices(options, request, reply),
  );
  app.get<{ Params: { id: string } }>('/v1/devices/:id', guard.hooks, async (request, reply) =>
    getDevice(options, request, reply),
  );
  app.get('/healthz', async (_request, reply) =>
    send(reply, 200, JSON_TYPE, JSON.stringify({ status: 'ok' })),
  );
  app.get('/readyz', async (_request, reply) => getReady(options.readiness, reply));
  app.get('/metrics', async (_request, reply) => {
    const text = await options.metrics.registry.metrics();
    return send(reply, 200, options.metrics.registry.contentType, text);
  });
}

async function getCommand(
  options: ReadRoutesOptions,
  request: Request<{ Params: { key: string } }>,
  reply: Reply,
): Promise<Reply> {
  const identity = options.guard.caller(request);
  const notFound = (): Reply =>
    sendProblem(
      reply,
      makeProblem(404, 'UNKNOWN_COMMAND', 'no command with this key for this identity'),
    );
  let key: string;
  try {
    key = parseIdempotencyKey(request.params.key);
  } catch (error) {
    if (error instanceof InvalidKeyError) return notFound();
    throw error;
  }
  const ref: CommandRef = { scope: identity.scope, key };
  // What is answered must be on disk (group commit: it may have settled a moment ago).
  try {
    await options.pipeline.durable();
  } catch (error) {
    if (!(error instanceof JournalUnavailableError)) throw error;
    // Counted as every request the journal refused is (sluice_journal_unavailable_total).
    options.metrics.journalFailures.inc();
    return unsyncedRead(options.pipeline, ref, reply);
  }
  const record = options.pipeline.get(ref);
  if (record === undefined) return notFound();
  const history = options.pipeline.history(ref).map((event) => ({
    at: iso(event.at),
    from: event.from,
    to: event.to,
    intake: event.intake,
    detail: event.detail,
  }));
  const result = JSON.parse(resultBody(record)) as Record<string, unknown>;
  return send(reply, 200, JSON_TYPE, JSON.stringify({ ...result, history }));
}

/** Polling interval suggested while the journal cannot vouch for what it holds. */
const RETRY_UNSYNCED_S = 1;

/**
 * A read while the journal cannot make what it holds durable (a failed sync, a lost commit):
 * 503, as nothing it holds can be vouched for, but never the intake's "nothing was accepted or
 * written" — this is the poll of a command that was answered 202 and goes on, perhaps written
 * already, and that sentence would invite its issuer to send it again under a new key, the one
 * thing that would actuate twice (I1). Said instead: what the key holds, and to poll again.
 */
function unsyncedRead(pipeline: CommandPipeline, ref: CommandRef, reply: Reply): Reply {
  const kept = pipeline.get(ref);
  const headers = { 'retry-after': String(RETRY_UNSYNCED_S) };
  if (kept === undefined) {
    return sendProblem(
      reply,
      makeProblem(
        503,
        'JOURNAL_UNAVAILABLE',
        'the journal cannot make what it holds durable now, so this read cannot be answered; ask again shortly',
      ),
      headers,
    );
  }
  const stands = isTerminal(kept.state)
    ? `is ${kept.state} in the journal, not yet on disk`
    : `is ${kept.state} in the journal and goes on (it may have been written)`;
  return sendProblem(
    reply,
    makeProblem(
      503,
      'JOURNAL_UNAVAILABLE',
      `the journal cannot make what it holds durable now, but the command with this key ${stands}: poll again for its outcome, and retry it with the same key, never with a new key (a retry never writes it again)`,
      { key: kept.key, state: kept.state },
    ),
    { ...headers, location: commandPath(kept.key) },
  );
}

function getDevices(options: ReadRoutesOptions, request: Request, reply: Reply): Reply {
  const identity = options.guard.caller(request);
  const devices = options.pipeline
    .devices()
    .map((view) => deviceDocument(view, options.identities.mayCommand(identity, view.id)));
  return send(reply, 200, JSON_TYPE, JSON.stringify({ devices }));
}

function getDevice(
  options: ReadRoutesOptions,
  request: Request<{ Params: { id: string } }>,
  reply: Reply,
): Reply {
  const identity = options.guard.caller(request);
  const view = options.pipeline.device(request.params.id);
  if (view === undefined) {
    // As `POST /v1/commands` names it (docs/http-api.md: UNKNOWN_DEVICE has `device`), so that
    // a client reads the device from one member whichever route refused it.
    return sendProblem(
      reply,
      makeProblem(404, 'UNKNOWN_DEVICE', `unknown device "${request.params.id}"`, {
        device: request.params.id,
      }),
    );
  }
  const body = deviceDocument(view, options.identities.mayCommand(identity, view.id));
  return send(reply, 200, JSON_TYPE, JSON.stringify(body));
}

function getReady(readiness: () => Readiness, reply: Reply): Reply {
  let state: Readiness;
  try {
    state = readiness();
  } catch (error) {
    // A readiness probe that throws is itself a reason not to be ready.
    state = {
      ready: false,
      checks: {
        readiness: { ok: false, detail: error instanceof Error ? error.message : String(error) },
      },
    };
  }
  const body = { status: state.ready ? 'ready' : 'not ready', checks: state.checks };
  return send(reply, state.ready ? 200 : 503, JSON_TYPE, JSON.stringify(body));
}
