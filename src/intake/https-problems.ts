import { STATUS_CODES, type IncomingMessage, type ServerResponse } from 'node:http';
import type { Socket } from 'node:net';
import {
  DeviceQueueFullError,
  InvalidCommandError,
  InvalidKeyError,
  JournalUnavailableError,
  ShuttingDownError,
  UnknownDeviceError,
} from '../core/errors.js';
import type { Logger } from '../core/logger.js';
import { BodyCodingError, BodyNotUtf8Error } from './https-body.js';
import type { HttpsMetrics, Reply } from './https-types.js';
import { problem, type Problem } from './outcome.js';

/**
 * How the HTTPS intake answers errors: every refusal is an RFC 9457 problem document with a
 * stable `code` (SPEC §4), whether it comes from the core, from fastify, from the router or from
 * Node's HTTP parser before a request exists.
 */

export const JSON_TYPE = 'application/json';
export const PROBLEM_TYPE = 'application/problem+json';
/** What a client should wait before retrying after a shutdown: a restart under systemd. */
export const RETRY_SHUTDOWN_S = 5;

/** Titles for the codes this intake adds to those outcome.ts knows. */
const EXTRA_TITLES: Record<string, string> = {
  BAD_REQUEST: 'Bad request',
  METHOD_NOT_ALLOWED: 'Method not allowed',
  NOT_IMPLEMENTED: 'Method not implemented',
  EXPECTATION_FAILED: 'Expectation failed',
  URI_TOO_LONG: 'Request target too long',
  REQUEST_TIMEOUT: 'Request timeout',
  HEADERS_TOO_LARGE: 'Request header fields too large',
  INTERNAL_ERROR: 'Internal error',
};

export function makeProblem(
  status: number,
  code: string,
  detail: string,
  extensions: Record<string, unknown> = {},
): Problem {
  const title = EXTRA_TITLES[code];
  return problem(status, code, detail, title === undefined ? extensions : { title, ...extensions });
}

/**
 * Sends a body as bytes: fastify appends `; charset=utf-8` to string bodies, and the content
 * type must be exactly the one httpResponseFor gives, like the body.
 */
export function send(reply: Reply, status: number, contentType: string, body: string): Reply {
  return reply.code(status).header('content-type', contentType).send(Buffer.from(body, 'utf8'));
}

export function sendProblem(reply: Reply, p: Problem, headers: Record<string, string> = {}): Reply {
  for (const [name, value] of Object.entries(headers)) reply.header(name, value);
  return send(reply, p.status, PROBLEM_TYPE, JSON.stringify(p));
}

export interface MappedError {
  readonly problem: Problem;
  readonly headers?: Record<string, string>;
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

export interface ErrorMapOptions {
  readonly metrics: HttpsMetrics;
  readonly logger: Logger;
  readonly bodyLimitBytes: number;
}

/** Every error a request can raise, as the problem document SPEC §4 names for it. */
export function mapError(error: unknown, options: ErrorMapOptions): MappedError {
  if (error instanceof InvalidKeyError) {
    return { problem: makeProblem(400, 'MISSING_IDEMPOTENCY_KEY', error.message) };
  }
  if (error instanceof InvalidCommandError) {
    return {
      problem: makeProblem(400, 'INVALID_COMMAND', error.message, { errors: error.errors }),
    };
  }
  if (error instanceof BodyNotUtf8Error) {
    return {
      problem: makeProblem(400, 'INVALID_COMMAND', error.message, {
        errors: ['(body): is not valid UTF-8'],
      }),
    };
  }
  if (error instanceof BodyCodingError) {
    const title = error.status === 501 ? { title: 'Transfer coding not implemented' } : {};
    return { problem: makeProblem(error.status, error.code, error.message, title) };
  }
  if (error instanceof UnknownDeviceError) {
    return {
      problem: makeProblem(404, 'UNKNOWN_DEVICE', error.message, { device: error.device }),
    };
  }
  if (error instanceof JournalUnavailableError) {
    // I5: fail closed. Nothing was claimed, so nothing will be written (a failure once the key
    // is in the journal is answered by the command route, which says what the key holds).
    return {
      problem: journalUnavailable(
        error,
        options,
        'the journal cannot record commands now; nothing was accepted or written',
      ),
    };
  }
  if (error instanceof DeviceQueueFullError) {
    // SPEC §4 "rate limited": the device's queue, not the identity's rate. Nothing was journaled.
    return {
      problem: makeProblem(429, 'DEVICE_QUEUE_FULL', error.message, { device: error.device }),
      headers: { 'retry-after': String(error.retryAfterS) },
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
          `the request body exceeds ${String(options.bodyLimitBytes)} bytes`,
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
  options.logger.error({ err: error }, 'HTTPS request failed');
  return {
    problem: makeProblem(500, 'INTERNAL_ERROR', 'the request failed; see the gateway log'),
  };
}

/** Counts and logs a journal failure, and makes its 503 problem with `detail`. */
export function journalUnavailable(
  error: Error,
  options: Pick<ErrorMapOptions, 'metrics' | 'logger'>,
  detail: string,
  extensions: Record<string, unknown> = {},
): Problem {
  options.metrics.journalFailures.inc();
  options.logger.error({ err: error.message }, 'journal unavailable; command refused');
  return makeProblem(503, 'JOURNAL_UNAVAILABLE', detail, extensions);
}

/** A parser error as Node raises it: where in the chunk it stopped, and the chunk. */
type ParserError = Error & { code?: string; bytesParsed?: unknown; rawPacket?: unknown };

/** RFC 9110 §5.1: a field name is a token. */
const FIELD_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/**
 * The header whose value Node's parser refused, and the byte it refused: the parser stops at
 * that byte (`bytesParsed` counts the chunk up to it), so its line in the chunk names the
 * header. Null when the chunk does not show it (the line began in an earlier chunk).
 */
function refusedHeaderValue(error: ParserError): { name: string; byte: number } | null {
  const raw = error.rawPacket;
  const at = error.bytesParsed;
  if (!Buffer.isBuffer(raw) || typeof at !== 'number' || at <= 0 || at >= raw.length) return null;
  const lineStart = raw.lastIndexOf(0x0a, at - 1) + 1;
  const colon = raw.indexOf(0x3a, lineStart);
  if (lineStart === 0 || colon === -1 || colon >= at) return null;
  const name = raw.toString('latin1', lineStart, colon);
  const byte = raw[at];
  return FIELD_NAME.test(name) && byte !== undefined ? { name, byte } : null;
}

/** What Node's HTTP parser refused, as a status, code and detail. */
function clientErrorStatus(error: ParserError): readonly [number, string, string] {
  switch (error.code) {
    case 'ERR_HTTP_REQUEST_TIMEOUT':
      return [408, 'REQUEST_TIMEOUT', 'the request could not be read'];
    case 'HPE_HEADER_OVERFLOW':
      return [431, 'HEADERS_TOO_LARGE', 'the request could not be read'];
    case 'HPE_INVALID_METHOD':
      // RFC 9110 §9.1: a method the server does not recognise is 501. Node's parser knows
      // every registered method (node:http METHODS); anything else never becomes a request.
      return [501, 'NOT_IMPLEMENTED', 'the request method is not one this server knows'];
    case 'HPE_INVALID_HEADER_TOKEN': {
      // A control character in a header value (RFC 9110 §5.5) is refused by the parser before
      // the request exists; "could not be read" left the client guessing which header, and a
      // key with one is the malformed key SPEC §4 answers MISSING_IDEMPOTENCY_KEY.
      const refused = refusedHeaderValue(error);
      if (refused === null) break;
      const hex = `0x${refused.byte.toString(16).toUpperCase().padStart(2, '0')}`;
      const said = `the ${refused.name} header holds the byte ${hex}, which HTTP does not allow in a header value`;
      if (refused.name.toLowerCase() === 'idempotency-key') {
        return [
          400,
          'MISSING_IDEMPOTENCY_KEY',
          `${said}: an idempotency key is 1-255 printable ASCII characters without spaces`,
        ];
      }
      return [400, 'BAD_REQUEST', said];
    }
    default:
      break;
  }
  return [400, 'BAD_REQUEST', 'the request could not be read'];
}

/**
 * Errors before a request exists (malformed HTTP, an unknown method, oversized headers, request
 * timeout) are answered on the raw socket, as a problem document like every other error, and
 * counted among the responses as route `unparsed`: no request reaches fastify's hooks.
 */
export function answerClientError(
  error: ParserError,
  socket: Socket,
  options: Pick<ErrorMapOptions, 'metrics' | 'logger'>,
): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  const [status, code, detail] = clientErrorStatus(error);
  options.logger.debug({ code: error.code, status }, 'HTTP client error');
  if (socket.writable) {
    options.metrics.httpResponses.inc({ route: 'unparsed', status: String(status) });
    const body = JSON.stringify(makeProblem(status, code, detail));
    socket.write(
      `HTTP/1.1 ${String(status)} ${STATUS_CODES[status] ?? ''}\r\n` +
        `Content-Type: ${PROBLEM_TYPE}\r\nContent-Length: ${String(Buffer.byteLength(body))}\r\n` +
        `Cache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\nConnection: close\r\n\r\n${body}`,
    );
  }
  socket.destroy(error);
}

/**
 * Answers a request whose `Expect` header asks for anything but `100-continue` (RFC 9110 §10.1.1:
 * 417). Node answers it itself when nothing listens for `checkExpectation`, with a bare 417 that
 * bypasses every hook: no problem document, no `Cache-Control: no-store`, counted nowhere. The
 * request never reaches a route; its body, unread, is not waited for (`Connection: close`, as
 * Node's own answer).
 */
export function answerExpectationFailed(
  request: IncomingMessage,
  response: ServerResponse,
  options: Pick<ErrorMapOptions, 'metrics' | 'logger'>,
): void {
  const expect = request.headers.expect ?? '';
  options.logger.debug({ expect, method: request.method }, 'HTTPS request refused: Expect');
  options.metrics.httpResponses.inc({ route: 'unmatched', status: '417' });
  const body = JSON.stringify(
    makeProblem(
      417,
      'EXPECTATION_FAILED',
      `the Expect header asks for ${JSON.stringify(expect)}; only 100-continue is supported`,
    ),
  );
  response.writeHead(417, {
    'content-type': PROBLEM_TYPE,
    'content-length': String(Buffer.byteLength(body)),
    'cache-control': 'no-store',
    'x-content-type-options': 'nosniff',
    connection: 'close',
  });
  response.end(body);
}
