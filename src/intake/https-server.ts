import type { IncomingMessage, ServerResponse } from 'node:http';
import type { SecureContextOptions } from 'node:tls';
import { fastify } from 'fastify';
import type { Clock } from '../core/clock.js';
import type { Logger } from '../core/logger.js';
import { takeOnlyUtf8Json } from './https-body.js';
import {
  FIRST_REQUEST_TIMEOUT_MS,
  HANDSHAKE_TIMEOUT_MS,
  limitConnections,
} from './https-connections.js';
import { settleUnreadBody, type DrainLimits } from './https-drain.js';
import { AnswersOwed } from './https-owed.js';
import { notFoundOnEmptyParameters } from './https-params.js';
import { boundAnswers, boundUnreadInKernel } from './https-unread.js';
import { readIdempotencyKey } from './idempotency-key.js';
import {
  answerClientError,
  answerExpectationFailed,
  makeProblem,
  mapError,
  RETRY_SHUTDOWN_S,
  sendProblem,
} from './https-problems.js';
import type { App, HandshakeFailure, HttpsConfig, HttpsMetrics, Request } from './https-types.js';

/**
 * The HTTPS server under the intake's routes: TLS 1.3 (SPEC §4) with optional client
 * certificates, request limits, strict UTF-8 JSON bodies, and what every request goes through —
 * the shutdown answer, the response headers, the access metrics and log, and errors as problem
 * documents. The routes are added by their own modules.
 */

/** A whole request (headers and body) must arrive within this; bounds slow-loris uploads. */
export const REQUEST_TIMEOUT_MS = 30_000;
/**
 * How often Node looks for requests past that bound (its default, 30 s, let a request live up
 * to a whole interval past it). A pass walks the open connections: at most maxConnections.
 */
const TIMEOUT_CHECK_INTERVAL_MS = 1_000;
/** Keys are up to 255 characters; percent-encoded they may take three times that. */
const MAX_PARAM_LENGTH = 1024;

/**
 * How long a connection may take over each step (defaults: HANDSHAKE_TIMEOUT_MS,
 * FIRST_REQUEST_TIMEOUT_MS, REQUEST_TIMEOUT_MS). Not configurable for a site: the tests of the
 * timeouts shorten them, to wait seconds rather than minutes.
 */
export interface HttpsTimeouts {
  readonly handshakeMs: number;
  readonly firstRequestMs: number;
  readonly requestMs: number;
}

export const HTTPS_TIMEOUTS: HttpsTimeouts = {
  handshakeMs: HANDSHAKE_TIMEOUT_MS,
  firstRequestMs: FIRST_REQUEST_TIMEOUT_MS,
  requestMs: REQUEST_TIMEOUT_MS,
};

/**
 * The server's certificate, key and client CA as PEM text, read and checked by the caller
 * (src/config/preflight.ts readHttpsTlsFiles, at start and at a reload): the intake never
 * reads the files itself, so what it serves is what was checked.
 */
export interface TlsMaterial {
  readonly cert: Buffer | string;
  readonly key: Buffer | string;
  /** The CA client certificates must chain to; mutual TLS is on when it is present. */
  readonly ca: Buffer | string | undefined;
}

/**
 * What the server's TLS context is made of: the material and the protocol versions. One
 * function for the start and for a reload (HttpsIntake.replaceTlsMaterial): Node's
 * `setSecureContext` takes the versions from its argument too, and a context made without them
 * would take TLS 1.2 from then on.
 */
export function secureContextOptions(tls: TlsMaterial): SecureContextOptions {
  return {
    cert: tls.cert,
    key: tls.key,
    // SPEC §4: TLS 1.3 only; an older client fails the handshake.
    minVersion: 'TLSv1.3',
    maxVersion: 'TLSv1.3',
    ...(tls.ca !== undefined ? { ca: tls.ca } : {}),
  };
}

export interface ServerOptions {
  readonly config: HttpsConfig;
  readonly tls: TlsMaterial;
  readonly metrics: HttpsMetrics;
  readonly logger: Logger;
  /** The intake's clock: the connection limits' warnings are rate-limited on its `elapsed()`. */
  readonly clock: Clock;
  /** Aborted when the intake stops: new requests are answered 503 SHUTTING_DOWN. */
  readonly stopping: AbortSignal;
  readonly timeouts?: HttpsTimeouts;
  /** The bounds on draining an unread body (https-drain.ts defaults); a test shortens them. */
  readonly bodyDrain?: DrainLimits;
}

export function createServer(options: ServerOptions): App {
  const { config, tls, metrics, logger, clock, stopping } = options;
  const timeouts = options.timeouts ?? HTTPS_TIMEOUTS;
  const errors = { metrics, logger, bodyLimitBytes: config.bodyLimitBytes };
  const app = fastify({
    https: {
      ...secureContextOptions(tls),
      handshakeTimeout: timeouts.handshakeMs,
      // Not Node's default headers timeout (60 s): one longer than the request timeout makes
      // Node swap the two, and a body trickled or stalled after its headers lived 60 s (90 s
      // with the default check interval) instead of the 30 s the intake promises.
      headersTimeout: timeouts.requestMs,
      connectionsCheckingInterval: TIMEOUT_CHECK_INTERVAL_MS,
      ...(tls.ca !== undefined
        ? {
            requestCert: true,
            // The handshake completes without a (valid) certificate so that a token can
            // still authenticate, and a bad certificate gets a 401 with its reason.
            rejectUnauthorized: false,
          }
        : {}),
    },
    logger: false,
    // request.ip: the connection's peer, or, from a proxy the site trusts, the last hop of its
    // X-Forwarded-For that is not one of them (fastify's trustProxy, proxy-addr). Never by
    // default: any client may send the header.
    ...(config.trustedProxies.length > 0 ? { trustProxy: [...config.trustedProxies] } : {}),
    bodyLimit: config.bodyLimitBytes,
    requestTimeout: timeouts.requestMs,
    // fastify's own 503 during close is not a problem document; the onRequest hook answers
    // SHUTTING_DOWN instead.
    return503OnClosing: false,
    routerOptions: { maxParamLength: MAX_PARAM_LENGTH },
    // Router errors (a malformed percent-encoding, an over-long path segment) come here
    // instead of the error handler, and their answers pass none of the hooks below: counted
    // here, with no route (the router could not read the path), and given the headers the
    // onSend hook gives every other answer.
    frameworkErrors: (error, request, reply) => {
      const mapped = mapError(error, errors);
      metrics.httpResponses.inc({ route: 'unmatched', status: String(mapped.problem.status) });
      void sendProblem(reply, mapped.problem, {
        'cache-control': 'no-store',
        'x-content-type-options': 'nosniff',
        ...(answersOwed.isLastOwed(request.raw) ? { connection: 'close' } : {}),
        ...mapped.headers,
      });
    },
    clientErrorHandler: (error, socket) => {
      // The client's FIN in the body of a request already answered: nothing to answer.
      if (answersOwed.endedInAnsweredBody(socket, error)) return;
      // After the answers owed to the requests read before the bytes that failed: answered at
      // once, the failure's answer would come first, where the client reads its command's.
      answersOwed.afterAnswered(socket, () => {
        answerClientError(error, socket, errors);
      });
    },
    // No route declares a JSON schema: commands are validated with zod (src/core/command.ts)
    // and answers are plain JSON. fastify's default compilers (ajv, fast-json-stringify) would
    // be loaded for nothing at every start (about 90 ms here); these refuse a schema instead.
    schemaController: { compilersFactory: { buildValidator: noSchema, buildSerializer: noSchema } },
  });
  const answersOwed = new AnswersOwed(app.server);
  limitConnections(app.server, {
    maxConnections: config.maxConnections,
    maxConnectionsPerAddress: config.maxConnectionsPerAddress,
    firstRequestTimeoutMs: timeouts.firstRequestMs,
    logger,
    clock,
    refused: metrics.httpsConnectionsRefused,
    idleClosed: metrics.httpsConnectionsIdleClosed,
  });
  // The answer going out is bounded as the request coming in is: a client that never reads
  // (half-closed or not) would otherwise hold its connection for as long as it likes.
  boundAnswers(app.server, timeouts.requestMs, () => {
    metrics.httpsConnectionsIdleClosed.inc({ stage: 'answer_unread' });
  });
  // And so is what the kernel took of it: a client whose answers fit in the kernel's buffers
  // never made Node's buffer back up.
  boundUnreadInKernel(app.server, timeouts.requestMs, () => {
    metrics.httpsConnectionsIdleClosed.inc({ stage: 'answer_unread' });
  });
  app.server.on('checkExpectation', (request: IncomingMessage, response: ServerResponse) => {
    answerExpectationFailed(request, response, errors);
  });
  app.server.on('tlsClientError', (error: Error & { code?: string }) => {
    // A connection that sat through the handshake timeout sending nothing (or too little) is
    // closed without an answer: only this counter shows it (a scanner, a stuck client).
    if (error.code === 'ERR_TLS_HANDSHAKE_TIMEOUT') {
      metrics.httpsConnectionsIdleClosed.inc({ stage: 'handshake' });
    } else {
      // Counted by reason: a client that cannot connect (http:// for https://, TLS 1.2 only,
      // not trusting the gateway's certificate) shows on the gateway, not only on itself.
      metrics.httpsTlsHandshakesFailed.inc({ reason: handshakeFailure(error.code) });
    }
    // A refused handshake (TLS 1.2, garbage) is the client's problem; keep it out of warn.
    logger.debug({ code: error.code, err: error.message }, 'TLS handshake refused');
  });

  takeOnlyUtf8Json(app);

  app.addHook('onRequest', async (request, reply) => {
    if (!stopping.aborted) return;
    answeredStopping.add(request.raw);
    return sendProblem(
      reply,
      makeProblem(503, 'SHUTTING_DOWN', 'the gateway is shutting down; retry shortly'),
      { 'retry-after': String(RETRY_SHUTDOWN_S), connection: 'close' },
    );
  });
  // A path whose key, device id or scope is empty is unknown: checked by the routes with a
  // parameter alone (https-params.ts).
  notFoundOnEmptyParameters(app);
  app.addHook('onSend', async (request, reply, payload) => {
    reply.header('cache-control', 'no-store');
    reply.header('x-content-type-options', 'nosniff');
    if (stopping.aborted) reply.header('connection', 'close');
    else {
      // Answered before its body was read: the client may still be sending it (https-drain.ts).
      const unread = settleUnreadBody(request.raw, options.bodyDrain);
      // fastify closes the connection after any body parser error, for a client that "may send
      // more data"; the parser here reads the whole body before it refuses one (not JSON, not
      // UTF-8, a name twice), so nothing is left to send and the connection serves on, as after
      // any other 400.
      if (answersOwed.isLastOwed(request.raw)) {
        // The client half-closed, and this is the last answer it is owed: the connection is
        // closed once it is written (https-owed.ts), and the answer says so (RFC 9112 §9.6).
        reply.header('connection', 'close');
      } else if (unread === 'drained' || (unread === 'complete' && request.raw.complete)) {
        // A client that asked for the connection to close (`Connection: close`, HTTP/1.0) is
        // told it closes (RFC 9112 §9.6); removed, Node closed it all the same, unsaid.
        if (reply.raw.shouldKeepAlive) reply.removeHeader('connection');
        else reply.header('connection', 'close');
      } else if (unread === 'close') reply.header('connection', 'close');
    }
    return payload;
  });
  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    const status = reply.statusCode;
    metrics.httpResponses.inc({ route, status: String(status) });
    const line = { method: request.method, route, status, ms: Math.round(reply.elapsedTime) };
    if (answeredStopping.has(request.raw)) {
      // Every stop and restart answers the requests that come meanwhile so (the client retries
      // after Retry-After): expected, not a fault to warn of, one line per request at the level
      // the MQTT intake says the same of a command, with its key when it had a valid one.
      logger.info(
        { ...line, code: 'SHUTTING_DOWN', ...stoppingKey(request) },
        'HTTPS request refused: the gateway is stopping',
      );
    } else if (status >= 500) logger.warn(line, 'HTTPS response');
    else logger.debug(line, 'HTTPS response');
  });
  app.setErrorHandler(async (error, _request, reply) => {
    const mapped = mapError(error, errors);
    return sendProblem(reply, mapped.problem, mapped.headers);
  });
  app.setNotFoundHandler(async (request, reply) =>
    sendProblem(
      reply,
      makeProblem(
        404,
        'NOT_FOUND',
        `no route for ${request.method} ${request.url.split('?')[0] ?? ''}`,
      ),
    ),
  );
  return app;
}

/**
 * Why a TLS handshake failed, from the error's code (OpenSSL's reason, as Node names it): a
 * handful of reasons an operator can act on, so that the counter's labels stay few.
 */
export function handshakeFailure(code: string | undefined): HandshakeFailure {
  switch (code) {
    case 'ERR_SSL_HTTP_REQUEST':
      return 'plain_http';
    case 'ERR_SSL_WRONG_VERSION_NUMBER':
    case 'ERR_SSL_PACKET_LENGTH_TOO_LONG':
    case 'ERR_SSL_HTTPS_PROXY_REQUEST':
    case 'ERR_SSL_RECORD_LENGTH_MISMATCH':
      return 'not_tls';
    case 'ERR_SSL_UNSUPPORTED_PROTOCOL':
    case 'ERR_SSL_NO_PROTOCOLS_AVAILABLE':
    case 'ERR_SSL_VERSION_TOO_LOW':
      return 'version';
    case 'ERR_SSL_TLSV1_ALERT_UNKNOWN_CA':
    case 'ERR_SSL_SSLV3_ALERT_BAD_CERTIFICATE':
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_UNKNOWN':
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_EXPIRED':
    case 'ERR_SSL_SSLV3_ALERT_CERTIFICATE_REVOKED':
    case 'ERR_SSL_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE':
      // The client's alert: it does not trust the gateway's certificate (curl, OpenSSL).
      return 'untrusted';
    case 'ECONNRESET':
      // The client hung up mid-handshake: a Node.js client refusing the gateway's certificate
      // closes without an alert, and the server sees only the close.
      return 'aborted';
    default:
      return 'other';
  }
}

/**
 * The requests the stopping hook answered 503 SHUTTING_DOWN, before their route's own hooks and
 * handler ran: a route that counts its refusals counts these too (refusedWhileStopping).
 */
const answeredStopping = new WeakSet<object>();

/** The command key of a request refused while stopping, for its log line: only a valid one. */
function stoppingKey(request: Request): { key?: string } {
  try {
    return { key: readIdempotencyKey(request.raw.headersDistinct['idempotency-key']) };
  } catch {
    return {};
  }
}

/** Whether `request` was answered 503 SHUTTING_DOWN before its route ran. */
export function refusedWhileStopping(request: Request): boolean {
  return answeredStopping.has(request.raw);
}

/** The compilers' factory for routes with a JSON schema, which this server does not take. */
function noSchema(): never {
  throw new Error('routes of the HTTPS intake take no JSON schema: validate with zod');
}
