import { readFile } from 'node:fs/promises';
import { STATUS_CODES } from 'node:http';
import type { Server as HttpsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import {
  fastify,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type RouteGenericInterface,
} from 'fastify';
import type { SluiceConfig } from '../config/config.js';
import { isTerminal, parseCommandRequest, parseIdempotencyKey } from '../core/command.js';
import { systemClock, type Clock } from '../core/clock.js';
import {
  InvalidCommandError,
  InvalidKeyError,
  JournalUnavailableError,
  ShuttingDownError,
  SluiceError,
  UnknownDeviceError,
} from '../core/errors.js';
import type { Claim, CommandRecord, CommandRef } from '../core/journal.js';
import type { Logger } from '../core/logger.js';
import type { CommandPipeline } from '../core/pipeline.js';
import type { Metrics } from '../daemon/metrics.js';
import { authenticate } from './credentials.js';
import { deviceDocument } from './device-view.js';
import type { IdentityRegistry, NamedIdentity } from './identities.js';
import { readIdempotencyKey } from './idempotency-key.js';
import { httpResponseFor, problem, resultBody, type Problem } from './outcome.js';
import { parsePrefer, planWait } from './prefer.js';
import { RateLimiter } from './rate-limit.js';

/**
 * The HTTPS intake (SPEC §4): keyed commands over TLS 1.3 with bearer tokens or client
 * certificates, the command and device read API, and the health, readiness and metrics
 * endpoints. Every answer about a command comes from its journal record (httpResponseFor), so
 * a retry of a settled key replays the very bytes of the first answer.
 */

export type HttpsConfig = NonNullable<SluiceConfig['https']>;

export interface Readiness {
  readonly ready: boolean;
  readonly checks: Record<string, { readonly ok: boolean; readonly detail: string }>;
}

export interface HttpsIntakeOptions {
  readonly config: HttpsConfig;
  readonly pipeline: CommandPipeline;
  readonly identities: IdentityRegistry;
  readonly metrics: Metrics;
  readonly logger: Logger;
  readonly readiness: () => Readiness;
  /** Rate limiting and readback ages; the system clock by default. */
  readonly clock?: Clock;
  /** How long stop() lets in-flight responses finish before cutting connections (default 5 s). */
  readonly drainTimeoutMs?: number;
}

type Server = HttpsServer;
type Request<G extends RouteGenericInterface = RouteGenericInterface> = FastifyRequest<G, Server>;
type Reply = FastifyReply<RouteGenericInterface, Server>;
type App = FastifyInstance<Server>;

const JSON_TYPE = 'application/json';
const PROBLEM_TYPE = 'application/problem+json';
/** Polling interval suggested to clients of a command still in flight. */
const RETRY_IN_FLIGHT_S = 1;
/** What a client should wait before retrying after a shutdown: a restart under systemd. */
const RETRY_SHUTDOWN_S = 5;
/** A whole request (headers and body) must arrive within this; bounds slow-loris uploads. */
const REQUEST_TIMEOUT_MS = 30_000;
/** Keys are up to 255 characters; percent-encoded they may take three times that. */
const MAX_PARAM_LENGTH = 1024;
const METHODS = ['DELETE', 'GET', 'HEAD', 'OPTIONS', 'PATCH', 'POST', 'PUT'] as const;

/** Titles for the codes this intake adds to those outcome.ts knows. */
const EXTRA_TITLES: Record<string, string> = {
  BAD_REQUEST: 'Bad request',
  METHOD_NOT_ALLOWED: 'Method not allowed',
  URI_TOO_LONG: 'Request target too long',
  REQUEST_TIMEOUT: 'Request timeout',
  HEADERS_TOO_LARGE: 'Request header fields too large',
  INTERNAL_ERROR: 'Internal error',
};

function makeProblem(
  status: number,
  code: string,
  detail: string,
  extensions: Record<string, unknown> = {},
): Problem {
  const title = EXTRA_TITLES[code];
  return problem(status, code, detail, title === undefined ? extensions : { title, ...extensions });
}

/** Codes for the other 4xx errors fastify may raise, by status. */
const CLIENT_ERROR_CODES: Record<number, string> = {
  404: 'NOT_FOUND',
  405: 'METHOD_NOT_ALLOWED',
  408: 'REQUEST_TIMEOUT',
  413: 'PAYLOAD_TOO_LARGE',
  414: 'URI_TOO_LONG',
  415: 'UNSUPPORTED_MEDIA_TYPE',
  431: 'HEADERS_TOO_LARGE',
};

interface MappedError {
  readonly problem: Problem;
  readonly headers?: Record<string, string>;
}

/** The `code` and `statusCode` that fastify's own errors carry (FST_ERR_*). */
function frameworkFields(error: unknown): {
  code: string | undefined;
  statusCode: number | undefined;
} {
  if (typeof error !== 'object' || error === null)
    return { code: undefined, statusCode: undefined };
  const e = error as { code?: unknown; statusCode?: unknown };
  return {
    code: typeof e.code === 'string' ? e.code : undefined,
    statusCode: typeof e.statusCode === 'number' ? e.statusCode : undefined,
  };
}

function commandPath(key: string): string {
  return `/v1/commands/${encodeURIComponent(key)}`;
}

const iso = (ms: number): string => new Date(ms).toISOString();

/**
 * Sends a body as bytes: fastify appends `; charset=utf-8` to string bodies, and the content
 * type must be exactly the one httpResponseFor gives, like the body.
 */
function send(reply: Reply, status: number, contentType: string, body: string): Reply {
  return reply.code(status).header('content-type', contentType).send(Buffer.from(body, 'utf8'));
}

export class HttpsIntake {
  private readonly config: HttpsConfig;
  private readonly pipeline: CommandPipeline;
  private readonly identities: IdentityRegistry;
  private readonly metrics: Metrics;
  private readonly logger: Logger;
  private readonly readiness: () => Readiness;
  private readonly clock: Clock;
  private readonly drainTimeoutMs: number;
  private readonly limiter: RateLimiter;
  /** Who each authenticated request is; keyed by the raw request so nothing outlives it. */
  private readonly callers = new WeakMap<object, NamedIdentity>();
  private readonly stopping = new AbortController();
  private app: App | null = null;

  constructor(options: HttpsIntakeOptions) {
    this.config = options.config;
    this.pipeline = options.pipeline;
    this.identities = options.identities;
    this.metrics = options.metrics;
    this.logger = options.logger.child({ intake: 'https' });
    this.readiness = options.readiness;
    this.clock = options.clock ?? systemClock;
    this.drainTimeoutMs = options.drainTimeoutMs ?? 5_000;
    this.limiter = new RateLimiter(options.config.rateLimit, () => this.clock.now());
  }

  /** Reads the TLS material and listens; port 0 binds an ephemeral port. */
  async start(): Promise<{ host: string; port: number }> {
    if (this.app !== null) throw new Error('the HTTPS intake is already started');
    if (this.stopping.signal.aborted) throw new Error('the HTTPS intake was stopped');
    const { certFile, keyFile, clientCaFile } = this.config;
    const [cert, key, ca] = await Promise.all([
      readFile(certFile),
      readFile(keyFile),
      clientCaFile === undefined ? Promise.resolve(undefined) : readFile(clientCaFile),
    ]);
    const mutualTls = ca !== undefined;
    const app = fastify({
      https: {
        cert,
        key,
        // SPEC §4: TLS 1.3 only; an older client fails the handshake.
        minVersion: 'TLSv1.3',
        maxVersion: 'TLSv1.3',
        ...(mutualTls
          ? {
              ca,
              requestCert: true,
              // The handshake completes without a (valid) certificate so that a token can
              // still authenticate, and a bad certificate gets a 401 with its reason.
              rejectUnauthorized: false,
            }
          : {}),
      },
      logger: false,
      bodyLimit: this.config.bodyLimitBytes,
      requestTimeout: REQUEST_TIMEOUT_MS,
      // fastify's own 503 during close is not a problem document; the onRequest hook answers
      // SHUTTING_DOWN instead.
      return503OnClosing: false,
      routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
      // Router errors (a malformed percent-encoding, an over-long path segment) come here
      // instead of the error handler.
      frameworkErrors: (error, _request, reply) => {
        const mapped = this.mapError(error);
        void this.sendProblem(reply, mapped.problem, mapped.headers);
      },
      clientErrorHandler: (error, socket) => {
        this.answerClientError(error, socket);
      },
    });
    app.server.on('tlsClientError', (error: Error & { code?: string }) => {
      // A refused handshake (TLS 1.2, garbage) is the client's problem; keep it out of warn.
      this.logger.debug({ code: error.code, err: error.message }, 'TLS handshake refused');
    });
    this.routes(app, mutualTls);
    try {
      await app.listen({ host: this.config.host, port: this.config.port });
    } catch (error) {
      await app.close();
      throw error;
    }
    this.app = app;
    const address = app.server.address() as AddressInfo;
    this.logger.info(
      { host: address.address, port: address.port, mutualTls },
      'HTTPS intake listening',
    );
    return { host: address.address, port: address.port };
  }

  /**
   * Stops accepting connections, closes idle keep-alive connections, wakes requests waiting
   * for a command to settle (they answer 202 at once: the command stays journaled) and lets
   * in-flight responses finish; after the drain bound, remaining connections are cut.
   */
  async stop(): Promise<void> {
    this.stopping.abort();
    const app = this.app;
    if (app === null) return;
    this.app = null;
    const closed = app.close();
    const bound = new AbortController();
    const outcome = await Promise.race([
      Promise.resolve(closed).then(() => 'drained' as const),
      this.clock.sleep(this.drainTimeoutMs, bound.signal).then(() => 'bound' as const),
    ]);
    bound.abort();
    if (outcome === 'bound') {
      this.logger.warn(
        { drainTimeoutMs: this.drainTimeoutMs },
        'HTTPS connections still open after the drain bound; closing them',
      );
      app.server.closeAllConnections();
    }
    await closed;
    this.logger.info({}, 'HTTPS intake stopped');
  }

  private routes(app: App, mutualTls: boolean): void {
    // Only JSON is taken; without this, fastify would hand text/plain bodies to the handler.
    app.removeContentTypeParser('text/plain');

    app.addHook('onRequest', async (_request, reply) => {
      if (!this.stopping.signal.aborted) return;
      return this.sendProblem(
        reply,
        makeProblem(503, 'SHUTTING_DOWN', 'the gateway is shutting down; retry shortly'),
        { 'retry-after': String(RETRY_SHUTDOWN_S), connection: 'close' },
      );
    });
    app.addHook('onSend', async (_request, reply, payload) => {
      reply.header('cache-control', 'no-store');
      reply.header('x-content-type-options', 'nosniff');
      if (this.stopping.signal.aborted) reply.header('connection', 'close');
      return payload;
    });
    app.addHook('onResponse', async (request, reply) => {
      const route = request.routeOptions.url ?? 'unmatched';
      const status = reply.statusCode;
      this.metrics.httpResponses.inc({ route, status: String(status) });
      const line = { method: request.method, route, status, ms: Math.round(reply.elapsedTime) };
      if (status >= 500) this.logger.warn(line, 'HTTPS response');
      else this.logger.debug(line, 'HTTPS response');
    });
    app.setErrorHandler(async (error, _request, reply) => {
      const mapped = this.mapError(error);
      return this.sendProblem(reply, mapped.problem, mapped.headers);
    });
    app.setNotFoundHandler(async (request, reply) =>
      this.sendProblem(
        reply,
        makeProblem(
          404,
          'NOT_FOUND',
          `no route for ${request.method} ${request.url.split('?')[0] ?? ''}`,
        ),
      ),
    );

    const guard = {
      onRequest: async (request: Request, reply: Reply): Promise<Reply | undefined> =>
        this.guard(request, reply, mutualTls),
    };

    app.post('/v1/commands', guard, async (request, reply) => this.postCommand(request, reply));
    app.get<{ Params: { key: string } }>('/v1/commands/:key', guard, async (request, reply) =>
      this.getCommand(request, reply),
    );
    app.get('/v1/devices', guard, async (request, reply) => this.getDevices(request, reply));
    app.get<{ Params: { id: string } }>('/v1/devices/:id', guard, async (request, reply) =>
      this.getDevice(request, reply),
    );
    app.get('/healthz', async (_request, reply) =>
      send(reply, 200, JSON_TYPE, JSON.stringify({ status: 'ok' })),
    );
    app.get('/readyz', async (_request, reply) => this.getReady(reply));
    app.get('/metrics', async (_request, reply) => {
      const text = await this.metrics.registry.metrics();
      return send(reply, 200, this.metrics.registry.contentType, text);
    });

    // 405 for the other methods of every route, answered before authentication and body
    // parsing: the method is wrong whoever asks and whatever they send.
    const allowed: Record<string, string[]> = {
      '/v1/commands': ['POST'],
      '/v1/commands/:key': ['GET', 'HEAD'],
      '/v1/devices': ['GET', 'HEAD'],
      '/v1/devices/:id': ['GET', 'HEAD'],
      '/healthz': ['GET', 'HEAD'],
      '/readyz': ['GET', 'HEAD'],
      '/metrics': ['GET', 'HEAD'],
    };
    for (const [url, methods] of Object.entries(allowed)) {
      const allow = methods.join(', ');
      app.route({
        method: METHODS.filter((m) => !methods.includes(m)),
        url,
        onRequest: async (request, reply) =>
          this.sendProblem(
            reply,
            makeProblem(
              405,
              'METHOD_NOT_ALLOWED',
              `${request.method} is not allowed here; use ${allow}`,
            ),
            { allow },
          ),
        // Never reached: the onRequest hook has answered.
        handler: async (_request, reply) => reply,
      });
    }
  }

  /** Authentication, then the caller's rate limit: every /v1 route. */
  private guard(request: Request, reply: Reply, mutualTls: boolean): Reply | undefined {
    const auth = authenticate(
      request.headers.authorization,
      request.raw.socket,
      this.identities,
      mutualTls,
    );
    if (!auth.ok) {
      const challenge = auth.invalidToken
        ? 'Bearer realm="sluice", error="invalid_token"'
        : 'Bearer realm="sluice"';
      return this.sendProblem(reply, makeProblem(401, 'UNAUTHORIZED', auth.detail), {
        'www-authenticate': challenge,
      });
    }
    const decision = this.limiter.take(auth.identity.name);
    if (!decision.allowed) {
      return this.sendProblem(
        reply,
        makeProblem(
          429,
          'RATE_LIMITED',
          `more than ${String(this.config.rateLimit.perSecond)} requests per second (burst ${String(this.config.rateLimit.burst)}) for this identity`,
        ),
        { 'retry-after': String(decision.retryAfterS) },
      );
    }
    this.callers.set(request.raw, auth.identity);
    return undefined;
  }

  private caller(request: Request): NamedIdentity {
    const identity = this.callers.get(request.raw);
    // The guard runs before every /v1 handler; reaching here without it is a wiring bug.
    if (identity === undefined) throw new Error('request reached a /v1 handler unauthenticated');
    return identity;
  }

  private async postCommand(request: Request, reply: Reply): Promise<Reply> {
    const identity = this.caller(request);
    let claim: Claim;
    let key: string | undefined;
    let device: string | undefined;
    try {
      key = readIdempotencyKey(request.headers['idempotency-key']);
      const command = parseCommandRequest(request.body);
      device = command.device;
      claim = this.pipeline.submit({ key, identity, intake: 'https', request: command });
    } catch (error) {
      // Refusals are answered by the error handler; the log line carries what was known.
      this.metrics.accepted.inc({ intake: 'https', outcome: 'refused' });
      this.logger.info(
        {
          key,
          device,
          identity: identity.name,
          code: error instanceof SluiceError ? error.code : 'INTERNAL_ERROR',
        },
        'HTTPS command refused',
      );
      throw error;
    }
    this.metrics.accepted.inc({ intake: 'https', outcome: claim.kind });
    const log = this.logger.child({ key, device });
    switch (claim.kind) {
      case 'new': {
        const plan = planWait(parsePrefer(request.headers.prefer), this.config);
        const record = await this.settledWithin(claim.record, plan.waitMs);
        if (plan.applied !== null) reply.header('preference-applied', plan.applied);
        log.info(
          { identity: identity.name, state: record.state, code: record.code },
          'HTTPS command answered',
        );
        return this.sendRecord(reply, record, false);
      }
      case 'duplicate': {
        const record = claim.record;
        if (isTerminal(record.state)) {
          log.info(
            { identity: identity.name, state: record.state, code: record.code },
            'HTTPS command replayed',
          );
          return this.sendRecord(reply, record, true);
        }
        log.info({ identity: identity.name, state: record.state }, 'HTTPS retry while in flight');
        return this.sendProblem(
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
        log.warn({ identity: identity.name }, 'HTTPS idempotency key reused for another command');
        return this.sendProblem(
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

  /** The command once terminal, or as it stands after `waitMs` or when the intake stops. */
  private async settledWithin(record: CommandRecord, waitMs: number): Promise<CommandRecord> {
    const ref: CommandRef = { scope: record.scope, key: record.key };
    if (isTerminal(record.state) || waitMs <= 0 || this.stopping.signal.aborted) {
      return this.pipeline.get(ref) ?? record;
    }
    const signal = this.stopping.signal;
    let wake = (): void => undefined;
    const stopped = new Promise<undefined>((resolve) => {
      wake = () => {
        resolve(undefined);
      };
      signal.addEventListener('abort', wake, { once: true });
    });
    try {
      const settled = await Promise.race([this.pipeline.waitForSettled(ref, waitMs), stopped]);
      return settled ?? this.pipeline.get(ref) ?? record;
    } finally {
      signal.removeEventListener('abort', wake);
    }
  }

  private sendRecord(reply: Reply, record: CommandRecord, replayed: boolean): Reply {
    const response = httpResponseFor(record);
    if (replayed) reply.header('idempotent-replayed', 'true');
    if (response.status === 202) {
      reply.header('location', commandPath(record.key));
      reply.header('retry-after', String(RETRY_IN_FLIGHT_S));
    }
    return send(reply, response.status, response.contentType, response.body);
  }

  private getCommand(request: Request<{ Params: { key: string } }>, reply: Reply): Reply {
    const identity = this.caller(request);
    const notFound = (): Reply =>
      this.sendProblem(
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
    const record = this.pipeline.get(ref);
    if (record === undefined) return notFound();
    const history = this.pipeline.history(ref).map((event) => ({
      at: iso(event.at),
      from: event.from,
      to: event.to,
      intake: event.intake,
      detail: event.detail,
    }));
    const result = JSON.parse(resultBody(record)) as Record<string, unknown>;
    return send(reply, 200, JSON_TYPE, JSON.stringify({ ...result, history }));
  }

  private getDevices(request: Request, reply: Reply): Reply {
    const identity = this.caller(request);
    const now = this.clock.now();
    const devices = this.pipeline
      .devices()
      .map((view) => deviceDocument(view, this.identities.mayCommand(identity, view.id), now));
    return send(reply, 200, JSON_TYPE, JSON.stringify({ devices }));
  }

  private getDevice(request: Request<{ Params: { id: string } }>, reply: Reply): Reply {
    const identity = this.caller(request);
    const view = this.pipeline.device(request.params.id);
    if (view === undefined) {
      return this.sendProblem(
        reply,
        makeProblem(404, 'UNKNOWN_DEVICE', `unknown device "${request.params.id}"`),
      );
    }
    const body = deviceDocument(
      view,
      this.identities.mayCommand(identity, view.id),
      this.clock.now(),
    );
    return send(reply, 200, JSON_TYPE, JSON.stringify(body));
  }

  private getReady(reply: Reply): Reply {
    let readiness: Readiness;
    try {
      readiness = this.readiness();
    } catch (error) {
      // A readiness probe that throws is itself a reason not to be ready.
      readiness = {
        ready: false,
        checks: {
          readiness: { ok: false, detail: error instanceof Error ? error.message : String(error) },
        },
      };
    }
    const body = { status: readiness.ready ? 'ready' : 'not ready', checks: readiness.checks };
    return send(reply, readiness.ready ? 200 : 503, JSON_TYPE, JSON.stringify(body));
  }

  private sendProblem(reply: Reply, p: Problem, headers: Record<string, string> = {}): Reply {
    for (const [name, value] of Object.entries(headers)) reply.header(name, value);
    return send(reply, p.status, PROBLEM_TYPE, JSON.stringify(p));
  }

  /** Every error a request can raise, as the problem document SPEC §4 names for it. */
  private mapError(error: unknown): MappedError {
    if (error instanceof InvalidKeyError) {
      return { problem: makeProblem(400, 'MISSING_IDEMPOTENCY_KEY', error.message) };
    }
    if (error instanceof InvalidCommandError) {
      return {
        problem: makeProblem(400, 'INVALID_COMMAND', error.message, { errors: error.errors }),
      };
    }
    if (error instanceof UnknownDeviceError) {
      return {
        problem: makeProblem(404, 'UNKNOWN_DEVICE', error.message, { device: error.device }),
      };
    }
    if (error instanceof JournalUnavailableError) {
      // I5: fail closed. Nothing was claimed, so nothing will be written.
      this.metrics.journalFailures.inc();
      this.logger.error({ err: error.message }, 'journal unavailable; command refused');
      return {
        problem: makeProblem(
          503,
          'JOURNAL_UNAVAILABLE',
          'the journal cannot record commands now; nothing was accepted or written',
        ),
      };
    }
    if (error instanceof ShuttingDownError) {
      return {
        problem: makeProblem(503, 'SHUTTING_DOWN', error.message),
        headers: { 'retry-after': String(RETRY_SHUTDOWN_S) },
      };
    }
    const { code, statusCode } = frameworkFields(error);
    switch (code) {
      case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
        return {
          problem: makeProblem(
            415,
            'UNSUPPORTED_MEDIA_TYPE',
            'the request body must be application/json',
          ),
        };
      case 'FST_ERR_CTP_BODY_TOO_LARGE':
        return {
          problem: makeProblem(
            413,
            'PAYLOAD_TOO_LARGE',
            `the request body exceeds ${String(this.config.bodyLimitBytes)} bytes`,
          ),
        };
      case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      case 'FST_ERR_CTP_INVALID_JSON_BODY':
        return {
          problem: makeProblem(400, 'INVALID_COMMAND', 'the request body is not valid JSON', {
            errors: ['(body): is not valid JSON'],
          }),
        };
      case 'FST_ERR_CTP_INVALID_CONTENT_LENGTH':
        return {
          problem: makeProblem(400, 'BAD_REQUEST', 'the body length does not match Content-Length'),
        };
      case 'FST_ERR_BAD_URL':
        return { problem: makeProblem(400, 'BAD_REQUEST', 'the request path is not a valid URL') };
      case 'FST_ERR_MAX_PARAM_LENGTH':
        return { problem: makeProblem(414, 'URI_TOO_LONG', 'a path segment is too long') };
      default:
        break;
    }
    if (statusCode !== undefined && statusCode >= 400 && statusCode < 500) {
      return {
        problem: makeProblem(
          statusCode,
          CLIENT_ERROR_CODES[statusCode] ?? 'BAD_REQUEST',
          STATUS_CODES[statusCode] ?? 'bad request',
        ),
      };
    }
    // Unexpected: log it whole, answer without internals.
    this.logger.error({ err: error }, 'HTTPS request failed');
    return {
      problem: makeProblem(500, 'INTERNAL_ERROR', 'the request failed; see the gateway log'),
    };
  }

  /**
   * Errors before a request exists (malformed HTTP, oversized headers, request timeout) are
   * answered on the raw socket, as a problem document like every other error.
   */
  private answerClientError(error: Error & { code?: string }, socket: Socket): void {
    if (error.code === 'ECONNRESET' || socket.destroyed) return;
    const [status, code] =
      error.code === 'ERR_HTTP_REQUEST_TIMEOUT'
        ? [408, 'REQUEST_TIMEOUT']
        : error.code === 'HPE_HEADER_OVERFLOW'
          ? [431, 'HEADERS_TOO_LARGE']
          : [400, 'BAD_REQUEST'];
    this.logger.debug({ code: error.code, status }, 'HTTP client error');
    if (socket.writable) {
      const body = JSON.stringify(makeProblem(status, code, 'the request could not be read'));
      socket.write(
        `HTTP/1.1 ${String(status)} ${STATUS_CODES[status] ?? ''}\r\n` +
          `Content-Type: ${PROBLEM_TYPE}\r\nContent-Length: ${String(Buffer.byteLength(body))}\r\n` +
          `Connection: close\r\n\r\n${body}`,
      );
    }
    socket.destroy(error);
  }
}
