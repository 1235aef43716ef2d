import { InvalidCommandError } from '../core/errors.js';
import type { App } from './https-types.js';
import { duplicateMember } from './json-members.js';

/**
 * Request bodies: JSON in UTF-8 only (RFC 8259 §8.1), decoded strictly. fastify decodes a body
 * with `Buffer#toString`, which turns every invalid byte into U+FFFD: a command whose bytes were
 * damaged on the way would be taken as some other command. The MQTT intake refuses such a
 * payload (mqtt-message.ts); the HTTPS intake refuses it the same way, before the command is
 * read, so nothing is journaled and nothing is written.
 */

// `fatal`: overlong forms, encoded surrogates, code points past U+10FFFF and truncated
// sequences all throw (WHATWG Encoding). `ignoreBOM` keeps a leading BOM in the text so that
// the JSON parser drops exactly one, as RFC 8259 §8.1 allows and MQTT's decoder does.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/**
 * The errors this parser refused a body with. An InvalidCommandError of its own (empty, a name
 * twice, prototype poisoning) is otherwise the route's own refusal of a command; only this set
 * tells them apart (isBodyRefusal). Filled on refusals alone.
 */
const parserRefusals = new WeakSet<Error>();

function refuse(error: Error): Error {
  parserRefusals.add(error);
  return error;
}

/**
 * Whether `error` refused a request's body before its route ran: this parser's refusals, and
 * fastify's own (FST_ERR_CTP_*: no parser for its media type, past the body limit, a length
 * that does not match Content-Length, not JSON).
 */
export function isBodyRefusal(error: unknown): boolean {
  if (!(error instanceof Error)) return false;
  if (parserRefusals.has(error)) return true;
  const code = (error as { code?: unknown }).code;
  return typeof code === 'string' && code.startsWith('FST_ERR_CTP_');
}

export class BodyNotUtf8Error extends Error {
  constructor() {
    super('the request body is not valid UTF-8');
    this.name = 'BodyNotUtf8Error';
  }
}

/**
 * A body whose coding the gateway does not undo: a `Content-Encoding` (gzip, deflate, …: 415,
 * RFC 9110 §8.4.1) or a transfer coding other than `chunked` (501, RFC 9112 §6.1). Node's parser
 * undoes `chunked` only and hands the rest on as it came, so a body declared gzip-coded was read
 * as JSON all the same: plain JSON sent under such a header ran as a command its sender declared
 * to be something else, and a really compressed one was refused as "not valid UTF-8", as if it
 * had been damaged on the way.
 */
export class BodyCodingError extends Error {
  constructor(
    readonly status: 415 | 501,
    readonly code: 'UNSUPPORTED_MEDIA_TYPE' | 'NOT_IMPLEMENTED',
    message: string,
  ) {
    super(message);
    this.name = 'BodyCodingError';
  }
}

/** The coding of a request's body that nothing here undoes, as an error; null when none. */
function unsupportedCoding(headers: Record<string, unknown>): BodyCodingError | null {
  const codings = (value: unknown): string[] =>
    typeof value === 'string'
      ? value
          .split(',')
          .map((coding) => coding.trim().toLowerCase())
          .filter((coding) => coding !== '')
      : [];
  const content = codings(headers['content-encoding']).filter((c) => c !== 'identity');
  if (content.length > 0) {
    return new BodyCodingError(
      415,
      'UNSUPPORTED_MEDIA_TYPE',
      `the request body is sent with Content-Encoding: ${content.join(', ')}, which the gateway does not decode; send the JSON without a Content-Encoding`,
    );
  }
  const transfer = codings(headers['transfer-encoding']).filter((c) => c !== 'chunked');
  if (transfer.length > 0) {
    return new BodyCodingError(
      501,
      'NOT_IMPLEMENTED',
      `the request body is sent with the transfer coding ${transfer.join(', ')}, which the gateway does not decode; send it with Content-Length or chunked alone`,
    );
  }
  return null;
}

/**
 * Replaces fastify's body parsers with one for `application/json` (with or without parameters)
 * that decodes strictly and then parses with fastify's own JSON parser, prototype-poisoning
 * checks included, and refuses an object with a member name given twice (400 INVALID_COMMAND).
 * Any other media type has no parser and is answered 415.
 */
export function takeOnlyUtf8Json(app: App): void {
  const parseJson = app.getDefaultJsonParser('error', 'error');
  app.removeContentTypeParser(['application/json', 'text/plain']);
  app.addContentTypeParser('application/json', { parseAs: 'buffer' }, (request, body, done) => {
    const coded = unsupportedCoding(request.headers);
    if (coded !== null) {
      done(refuse(coded), undefined);
      return;
    }
    let text: string;
    try {
      text = utf8.decode(body as Buffer);
    } catch {
      done(refuse(new BodyNotUtf8Error()), undefined);
      return;
    }
    // fastify's JSON parser answers through `done` and returns nothing.
    void parseJson(request, text, (error, parsed) => {
      if (error !== null) {
        done(refuse(refusal(error, text)), undefined);
        return;
      }
      const name = duplicateMember(text);
      if (name !== undefined) {
        // A body whose meaning depends on the parser that reads it is refused (json-members.ts).
        const twice = new InvalidCommandError([`${name}: is given more than once in an object`]);
        done(refuse(twice), undefined);
        return;
      }
      done(error, parsed);
    });
  });
}

/**
 * Why fastify's parser refused a body, said as it is: it answers "not valid JSON" for an empty
 * body and for valid JSON it refuses (a `__proto__` member, or `constructor` holding
 * `prototype`: prototype poisoning), which would send an issuer looking for a syntax error
 * that is not there.
 */
function refusal(error: Error, text: string): Error {
  if (text.trim().length === 0) {
    return new InvalidCommandError(['(body): is empty; a command is a JSON object']);
  }
  try {
    // As fastify's parser does, one leading BOM is not part of the JSON (RFC 8259 §8.1).
    JSON.parse(text.startsWith('\uFEFF') ? text.slice(1) : text);
  } catch {
    return error;
  }
  return new InvalidCommandError([
    '(body): has a member "__proto__", or "constructor" holding "prototype": refused (prototype poisoning), and neither is a field of a command',
  ]);
}
