import { isTerminal, parseCommandRequest, type IntakeFields } from '../core/command.js';
import { InvalidCommandError, JournalUnavailableError, SluiceError } from '../core/errors.js';
import { claimRef, type ClaimRef, type CommandRecord } from '../core/journal.js';
import type { Logger } from '../core/logger.js';
import type { CommandPipeline, SubmitOutcome } from '../core/pipeline.js';
import { isBodyRefusal } from './https-body.js';
import type { CallerGuard } from './https-guard.js';
import { refusedWhileStopping } from './https-server.js';
import { journalUnavailable, makeProblem, send, sendProblem } from './https-problems.js';
import type { App, HttpsMetrics, Reply, Request } from './https-types.js';
import { readIdempotencyKey } from './idempotency-key.js';
import { httpResponseFor } from './outcome.js';
import { parsePrefer, planWait, type WaitPolicy } from './prefer.js';

/**
 * `POST /v1/commands` (SPEC §4): a keyed command is claimed in the journal, then answered from
 * its journal record once it settles or its wait runs out (httpResponseFor), so a retry of a
 * settled key replays the very bytes of the first answer.
 */

/** Polling interval suggested to clients of a command still in flight. */
const RETRY_IN_FLIGHT_S = 1;

/**
 * The body is the command alone (SPEC §2, §4): the key is a header here. A body `key` is
 * refused with where it goes, rather than ignored: one that differs from the header would be a
 * command journaled under another key than the issuer believes.
 */
const HTTPS_FIELDS: IntakeFields = {
  elsewhere: { key: 'the key goes in the Idempotency-Key header' },
};

export interface CommandRoutesOptions {
  readonly pipeline: CommandPipeline;
  readonly waitPolicy: WaitPolicy;
  readonly metrics: HttpsMetrics;
  readonly logger: Logger;
  readonly guard: CallerGuard;
  /** Aborted when the intake stops: requests waiting for a command answer at once. */
  readonly stopping: AbortSignal;
}

export function commandPath(key: string): string {
  // `.` and `..` are keys, and dot-segments of a path: a client that resolves the Location as
  // RFC 3986 §5.2.4 asks (curl -L, Python, Go, Java) would poll `/v1/commands/` or `/v1/`
  // instead, and find no command. Percent-encoded they are segments like any other, which the
  // router decodes back to the key. (A WHATWG URL parser, a browser's, takes `%2E` for a dot
  // too: no path reaches these keys from one.)
  const segment = key === '.' || key === '..' ? '%2E'.repeat(key.length) : encodeURIComponent(key);
  return `/v1/commands/${segment}`;
}

export function registerCommandRoutes(app: App, options: CommandRoutesOptions): void {
  // The requests waiting for their command, woken together when the intake stops: one
  // listener on the signal for all of them (an EventTarget walks its listeners on every add
  // and remove, which at a hundred waiting requests cost more than the request itself).
  const waiting = new Set<() => void>();
  options.stopping.addEventListener(
    'abort',
    () => {
      for (const wake of waiting) wake();
    },
    { once: true },
  );
  app.post(
    '/v1/commands',
    {
      // Over the rate limit, a command is refused once its body shows it is not a stop.
      ...options.guard.commandHooks,
      // A body the parser refused (not JSON, not UTF-8, the wrong media type, too large) never
      // reaches postCommand, which counts the commands it refuses itself: counted here.
      onError: async (_request, _reply, error) => {
        if (!isBodyRefusal(error)) return;
        options.metrics.accepted.inc({ intake: 'https', outcome: 'refused' });
      },
      // Nor does a command that came while the intake stops, answered 503 SHUTTING_DOWN before
      // any hook of this route (https-server.ts): refused all the same (docs/http-api.md).
      onResponse: (request, _reply, done) => {
        if (refusedWhileStopping(request)) {
          options.metrics.accepted.inc({ intake: 'https', outcome: 'refused' });
        }
        done();
      },
    },
    async (request, reply) => postCommand(options, waiting, request, reply),
  );
}

async function postCommand(
  options: CommandRoutesOptions,
  waiting: Set<() => void>,
  request: Request,
  reply: Reply,
): Promise<Reply> {
  const { pipeline, metrics, logger } = options;
  const identity = options.guard.caller(request);
  let claim: SubmitOutcome;
  let key: string | undefined;
  let device: string | undefined;
  try {
    key = readIdempotencyKey(request.raw.headersDistinct['idempotency-key']);
    // No body at all (nor a media type to parse one with): said so, rather than the validator's
    // "expected object, received undefined", which names no JSON value and no fix.
    if (request.body === undefined) {
      throw new InvalidCommandError([
        '(body): is missing; a command is a JSON object, sent with Content-Type: application/json',
      ]);
    }
    const command = parseCommandRequest(request.body, HTTPS_FIELDS);
    device = command.device;
    claim = pipeline.submit({ key, identity, intake: 'https', request: command });
  } catch (error) {
    // Refusals are answered by the error handler; the log line carries what was known, and
    // why (as the MQTT intake logs a refused message's detail): a client's "400" is then
    // explained in the gateway's log without its request.
    metrics.accepted.inc({ intake: 'https', outcome: 'refused' });
    logger.info(
      {
        key,
        device,
        identity: identity.name,
        code: error instanceof SluiceError ? error.code : 'INTERNAL_ERROR',
        ...(error instanceof SluiceError ? { detail: error.message } : {}),
      },
      'HTTPS command refused',
    );
    throw error;
  }
  metrics.accepted.inc({ intake: 'https', outcome: receivedOutcome(claim) });
  const log = logger.child({ key, device });
  try {
    return await answerClaim(options, waiting, request, reply, claim, identity.name, log);
  } catch (error) {
    // A reuse is refused whatever the journal does: its key's command is another one.
    if (!(error instanceof JournalUnavailableError) || claim.kind === 'reused') throw error;
    const kept = pipeline.claimed(claimRef(claim.record));
    // The claim itself was not kept (its key names no command, or another one claimed since):
    // nothing was accepted (the error handler says so).
    if (kept === undefined) throw error;
    // The key is in the journal from before this failure — a retry of a command accepted
    // earlier (its duplicate event lost with its batch, or not journaled at all: the journal
    // could not be written, SubmitOutcome.unrecorded), or this request's claim made durable
    // with the command's dispatch — so the command goes on and may well have been written.
    // "Nothing was accepted" would invite an operator to send it again under a new key: the
    // one thing that would actuate twice.
    log.warn({ identity: identity.name, state: kept.state }, 'HTTPS answer not journaled');
    const stands = isTerminal(kept.state)
      ? `is ${kept.state} in the journal`
      : `is ${kept.state} in the journal and goes on (it may have been written)`;
    return sendProblem(
      reply,
      journalUnavailable(
        error,
        options,
        `the journal cannot record this answer now, but the command with this key ${stands}: retry with the same key for its outcome, never with a new key (a retry never writes it again)`,
        { key: kept.key, state: kept.state },
      ),
      { 'retry-after': String(RETRY_IN_FLIGHT_S), location: commandPath(kept.key) },
    );
  }
}

/** The answer to a claim, once the journal has taken it (new, duplicate or reused). */
async function answerClaim(
  options: CommandRoutesOptions,
  waiting: Set<() => void>,
  request: Request,
  reply: Reply,
  claim: SubmitOutcome,
  identityName: string,
  log: Logger,
): Promise<Reply> {
  const { pipeline, metrics } = options;
  const key = claim.record.key;
  switch (claim.kind) {
    case 'new': {
      const plan = planWait(parsePrefer(request.headers.prefer), options.waitPolicy);
      const client = watchClient(reply);
      let record: CommandRecord;
      try {
        record = await settledWithin(options, waiting, claim.record, plan.waitMs, client.gone);
      } finally {
        client.stopWatching();
      }
      // Group commit: nothing is answered before what it reports (the claim, the settlement,
      // a duplicate's event) is on disk — one barrier, just before the answer, so that the
      // command runs meanwhile (none for a settlement announced, which followed its own); a
      // failed sync is a JournalUnavailableError, answered 503.
      await pipeline.durableFor(record);
      if (plan.applied !== null) reply.header('preference-applied', plan.applied);
      if (client.left) {
        // The client's connection was reset or broke while its command ran (one that only
        // half-closed it is still answered: https-owed.ts AnswersOwed): no fault of the
        // gateway's, and the command goes on, so info; never "answered", which would tell an
        // operator looking for a lost answer that it was sent. A retry with the key gets it.
        // Counted as well: clients that keep leaving before their answer are often clients
        // whose own timeout is shorter than the wait they ask for (Prefer: wait).
        metrics.httpsClientsGone.inc();
        log.info(
          { identity: identityName, state: record.state, code: record.code },
          'HTTPS client gone before its answer; the command goes on, a retry with its key gets the outcome',
        );
      } else {
        // A client that half-closed its connection is answered, but TCP cannot tell it from one
        // that closed its socket, whose answer is lost (https-owed.ts): said, for an operator
        // looking for a lost answer.
        const halfClosed = request.raw.socket.readableEnded ? { halfClosed: true } : {};
        log.info(
          { identity: identityName, state: record.state, code: record.code, ...halfClosed },
          'HTTPS command answered',
        );
      }
      return sendRecord(reply, record, false);
    }
    case 'duplicate': {
      const record = claim.record;
      if (isTerminal(record.state)) {
        await pipeline.durableReplay(record);
        log.info(
          { identity: identityName, state: record.state, code: record.code },
          'HTTPS command replayed',
        );
        return sendRecord(reply, record, true);
      }
      // Its retry could not be journaled (the journal cannot be written): answered as the
      // catch in postCommand answers a retry whose event a failed commit lost, 503 with the
      // command's key and state, not 409 as though the journal had taken it.
      if (claim.unrecorded !== undefined) throw claim.unrecorded;
      await pipeline.durable();
      log.info({ identity: identityName, state: record.state }, 'HTTPS retry while in flight');
      return sendProblem(
        reply,
        makeProblem(
          409,
          'IN_PROGRESS',
          `the command with this key is ${record.state}; poll its Location or retry later`,
          { key, state: record.state },
        ),
        { 'retry-after': String(RETRY_IN_FLIGHT_S), location: commandPath(key) },
      );
    }
    case 'reused':
      await pipeline.durable();
      log.warn({ identity: identityName }, 'HTTPS idempotency key reused for another command');
      return sendProblem(
        reply,
        makeProblem(
          422,
          'IDEMPOTENCY_KEY_REUSED',
          'this key was already used for a different command; use a new key for a new command',
          { key },
        ),
      );
  }
}

/**
 * `sluice_commands_received_total{intake="https"}` counts in the MQTT intake's words
 * (docs/mqtt-api.md), so that one query covers both intakes: a duplicate of a settled command
 * is a replay, of an open one a retry in flight.
 */
function receivedOutcome(claim: SubmitOutcome): 'new' | 'replayed' | 'in_flight' | 'key_reused' {
  switch (claim.kind) {
    case 'new':
      return 'new';
    case 'duplicate':
      return isTerminal(claim.record.state) ? 'replayed' : 'in_flight';
    case 'reused':
      return 'key_reused';
  }
}

/**
 * Whether the client left before its answer: the connection closed (a reset, a broken
 * connection; a FIN only half-closes it, and the answer is still sent) with the answer not
 * sent. `gone` resolves then, so that a request whose client left stops waiting.
 */
interface ClientWatch {
  readonly gone: Promise<undefined>;
  readonly left: boolean;
  stopWatching(): void;
}

function watchClient(reply: Reply): ClientWatch {
  const response = reply.raw;
  let left = false;
  let onClose = (): void => undefined;
  const gone = new Promise<undefined>((resolve) => {
    onClose = () => {
      if (response.writableFinished) return;
      left = true;
      resolve(undefined);
    };
  });
  response.once('close', onClose);
  // A connection already gone when the handler runs emits no more 'close'.
  if (reply.request.raw.socket.destroyed) onClose();
  return {
    gone,
    get left() {
      return left || reply.request.raw.socket.destroyed;
    },
    stopWatching: () => {
      response.off('close', onClose);
    },
  };
}

/**
 * The command once terminal, or as it stands after `waitMs`, when the intake stops or when its
 * client has gone (`gone`).
 */
async function settledWithin(
  options: CommandRoutesOptions,
  waiting: Set<() => void>,
  record: CommandRecord,
  waitMs: number,
  gone: Promise<undefined>,
): Promise<CommandRecord> {
  const { pipeline, stopping } = options;
  // The claim, not the key alone: should its batch be lost at its COMMIT, the key may be
  // claimed again for another command before the wait ends, whose outcome is not this one's.
  const ref = claimRef(record);
  if (isTerminal(record.state) || waitMs <= 0 || stopping.aborted) {
    return journaled(pipeline, ref);
  }
  let wake = (): void => undefined;
  const stopped = new Promise<undefined>((resolve) => {
    wake = () => {
      resolve(undefined);
    };
    waiting.add(wake);
  });
  try {
    const settled = await Promise.race([pipeline.waitForSettled(ref, waitMs), stopped, gone]);
    return settled ?? journaled(pipeline, ref);
  } finally {
    waiting.delete(wake);
  }
}

/**
 * The command as the journal holds it now — never the claim as it was returned: with group
 * commit a claim whose batch could not be committed (a disk full at that moment) is not in
 * the journal, and while nothing waited on its barrier, no barrier failed for it. Answered
 * 503, it is retried and claimed again; answered with the old record, it would be an
 * acknowledgement of nothing (I5). Read by the claim (readClaim): the key may have been
 * claimed again since for another command, whose outcome or state, answered here, told the
 * client that its own command was confirmed or accepted (an audit of 2026-12-07).
 */
function journaled(pipeline: CommandPipeline, ref: ClaimRef): CommandRecord {
  const current = pipeline.claimed(ref);
  if (current === undefined) {
    throw new JournalUnavailableError(
      `journal unavailable: the claim of ${ref.key} was not kept (its commit failed); send it again`,
    );
  }
  return current;
}

function sendRecord(reply: Reply, record: CommandRecord, replayed: boolean): Reply {
  const response = httpResponseFor(record);
  if (replayed) reply.header('idempotent-replayed', 'true');
  if (response.status === 202) {
    reply.header('location', commandPath(record.key));
    reply.header('retry-after', String(RETRY_IN_FLIGHT_S));
  }
  return send(reply, response.status, response.contentType, response.body);
}
