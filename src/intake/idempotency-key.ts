import { parseCommandKey } from '../core/command.js';
import { InvalidKeyError } from '../core/errors.js';

/**
 * Reads the `Idempotency-Key` request header. The IETF draft
 * (draft-ietf-httpapi-idempotency-key-header §2) defines the value as a Structured Field
 * string, i.e. quoted: `Idempotency-Key: "8e03978e-…"`; many clients send it bare. Both are
 * accepted and mean the same key, so that a key quoted on HTTPS and bare in an MQTT payload is
 * one command (SPEC §2: keys are per identity, whichever intake carries them). A key never
 * holds a quote itself (parseCommandKey): `"k"` is the key `k` here and would be `"k"` over
 * MQTT, so that the quotes are either the Structured Field's own or refused on both intakes.
 *
 * `given` is every Idempotency-Key header of the request, one entry each (Node's
 * `headersDistinct`), or a single value. Node joins repeated headers with ", ", and a comma is
 * a key character: `abc` followed by an empty header would be read as the key `abc,`, a new
 * command rather than the retry of `abc` it looks like.
 */
export function readIdempotencyKey(given: string | readonly string[] | undefined): string {
  if (given === undefined) throw new InvalidKeyError('an Idempotency-Key header is required');
  if (typeof given !== 'string' && given.length !== 1) {
    throw new InvalidKeyError(
      `the request has ${String(given.length)} Idempotency-Key headers; exactly one is allowed`,
    );
  }
  const header = typeof given === 'string' ? given : (given[0] ?? '');
  // Only HTTP's optional whitespace (SP, HTAB: RFC 9110 §5.5): String#trim would also strip a
  // no-break space (0xA0, as Node decodes header bytes), turning `k<0xA0>` into another key.
  const value = header.replace(/^[ \t]+|[ \t]+$/g, '');
  return parseCommandKey(
    value.length >= 2 && value.startsWith('"') && value.endsWith('"') ? unquote(value) : value,
  );
}

/** RFC 8941 §4.2.5: inside a string, only `\"` and `\\` are escapes. */
function unquote(quoted: string): string {
  const inner = quoted.slice(1, -1);
  let out = '';
  for (let i = 0; i < inner.length; i++) {
    const c = inner.charAt(i);
    if (c === '\\') {
      const next = inner.charAt(i + 1);
      if (next !== '"' && next !== '\\') {
        throw new InvalidKeyError('the quoted Idempotency-Key has an invalid escape');
      }
      out += next;
      i++;
    } else if (c === '"') {
      throw new InvalidKeyError('the quoted Idempotency-Key has an unescaped quote');
    } else {
      out += c;
    }
  }
  return out;
}
