import { parseCommandKey, parseCommandRequest, type CommandRequest } from '../core/command.js';
import type { Readback } from '../core/driver.js';
import { InvalidCommandError, InvalidKeyError } from '../core/errors.js';
import { observe } from '../core/readback.js';
import { duplicateMember } from './json-members.js';

/**
 * The documents of the MQTT intake (SPEC §5, docs/mqtt-api.md): a command message as it comes
 * off `cmd/{device}`, the error answer for a message that is not a command, and the retained
 * state document. Pure functions; the intake does the I/O.
 */

/** Larger payloads are not parsed: a command is a few hundred bytes. */
export const MAX_COMMAND_BYTES = 16_384;

/** The MQTT 5 user property that may carry the key instead of the payload's `key`. */
export const KEY_PROPERTY = 'idempotency-key';

export type MessageErrorCode =
  | 'MISSING_IDEMPOTENCY_KEY'
  | 'INVALID_COMMAND'
  | 'UNKNOWN_DEVICE'
  | 'DEVICE_QUEUE_FULL'
  | 'IDEMPOTENCY_KEY_REUSED'
  | 'JOURNAL_UNAVAILABLE'
  | 'SHUTTING_DOWN'
  | 'INTERNAL_ERROR';

/** Why a message is not a command; `untimed` is an INVALID_COMMAND counted on its own. */
export type MalformedCause = 'key' | 'payload' | 'topic' | 'retained' | 'command' | 'untimed';

export type CommandMessage =
  | { readonly kind: 'command'; readonly key: string; readonly request: CommandRequest }
  | {
      readonly kind: 'malformed';
      readonly code: 'MISSING_IDEMPOTENCY_KEY' | 'INVALID_COMMAND';
      readonly cause: MalformedCause;
      /** The key as sent, when one can be read, so that the issuer can match the answer. */
      readonly key: string | null;
      readonly detail: string;
      readonly errors: readonly string[];
      /**
       * An untimed command's key and request (cause `untimed`, or `command` for one timed by a
       * Message Expiry Interval longer than the journal keeps a settled key): a retry of a
       * command the journal already holds starts nothing, so the intake answers it as the retry
       * it is.
       */
      readonly untimed?: { readonly key: string; readonly request: CommandRequest };
    };

export interface CommandMessageInput {
  /** The device named by the topic `cmd/{device}` (`''` for `cmd/`). */
  readonly device: string;
  readonly payload: Buffer;
  /**
   * The payload's size as published, when the intake kept only its start (an oversized MQTT
   * 3.1.1 command cut as it came, mqtt-inbound-cut.ts); otherwise `payload`'s.
   */
  readonly payloadBytes?: number | undefined;
  /** MQTT 5 user properties (a name sent twice arrives as an array). */
  readonly userProperties?: Readonly<Record<string, string | string[]>> | undefined;
  /** The retain flag as delivered: set only for a message replayed from the retained store. */
  readonly retained: boolean;
  /**
   * The MQTT 5 Message Expiry Interval as delivered (what was left of it, in seconds), when
   * the issuer set one: the broker bounded how long the message could wait.
   */
  readonly messageExpiryS?: number | undefined;
  /** `mqtt.acceptUntimedCommands`: take commands with neither issuedAt nor message expiry. */
  readonly acceptUntimed?: boolean;
  /**
   * How long the journal keeps a settled key (`journal.retentionHours`), in seconds: a command
   * timed by its Message Expiry Interval (no issuedAt) whose interval is longer is refused. The
   * broker may deliver the message again until the interval runs out (a PUBACK lost to a power
   * cut after the claim), and a command timed from its receipt is fresh at every delivery: once
   * its key is purged, a redelivery would run as a new command (I1). Unset: no bound.
   */
  readonly keysKeptS?: number | undefined;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Reads a command message: the SPEC §2 command plus `key` (or the `idempotency-key` user
 * property). The topic names the device; a payload `device`, when present, must agree. A
 * command must carry its age (SPEC §5): `issuedAt`, or an MQTT 5 Message Expiry Interval,
 * unless the site accepts untimed commands.
 */
export function parseCommandMessage(input: CommandMessageInput): CommandMessage {
  const propertyKeys = keyProperty(input.userProperties);
  const malformed = (
    code: 'MISSING_IDEMPOTENCY_KEY' | 'INVALID_COMMAND',
    cause: MalformedCause,
    key: string | null,
    errors: readonly string[],
  ): CommandMessage => ({
    kind: 'malformed',
    code,
    cause,
    key: readableKey(key),
    detail: errors.join('; '),
    errors,
  });
  const payloadBytes = input.payloadBytes ?? input.payload.length;
  if (payloadBytes > MAX_COMMAND_BYTES) {
    // Not parsed, but its key is looked for at its start: over MQTT 3.1.1 (no user property, no
    // Maximum Packet Size to keep it at the broker) an oversized command was answered nowhere,
    // its issuer left waiting for a result, and its log line named no key.
    return malformed(
      'INVALID_COMMAND',
      'payload',
      propertyKeys[0] ?? leadingKey(input.payload.subarray(0, MAX_COMMAND_BYTES)),
      [
        `(body): ${payloadBytes} bytes; a command is at most ${MAX_COMMAND_BYTES} bytes; nothing was written`,
      ],
    );
  }
  let body: unknown;
  let text: string;
  try {
    text = utf8.decode(input.payload);
    body = JSON.parse(text);
  } catch {
    return malformed('INVALID_COMMAND', 'payload', propertyKeys[0] ?? null, [
      '(body): not a JSON document (UTF-8)',
    ]);
  }
  if (typeof body !== 'object' || body === null || Array.isArray(body)) {
    return malformed('INVALID_COMMAND', 'payload', propertyKeys[0] ?? null, [
      '(body): must be a JSON object',
    ]);
  }
  const fields = body as Record<string, unknown>;
  // As over HTTPS (json-members.ts): a member given twice is refused, not read as the last one.
  const twice = duplicateMember(text);
  if (twice !== undefined) {
    // The key for the answer, unless the key itself is the member given twice.
    const readable = twice === 'key' || typeof fields.key !== 'string' ? null : fields.key;
    return malformed('INVALID_COMMAND', 'payload', propertyKeys[0] ?? readable, [
      `${twice}: is given more than once in an object`,
    ]);
  }
  const payloadKey = fields.key;
  const shownKey = typeof payloadKey === 'string' ? payloadKey : (propertyKeys[0] ?? null);

  let key: string;
  try {
    if (propertyKeys.length > 1) {
      throw new InvalidKeyError(`the user property ${KEY_PROPERTY} is given more than once`);
    }
    if (payloadKey !== undefined && typeof payloadKey !== 'string') {
      // Said as it is: "required" would send the issuer looking for a key it did send.
      throw new InvalidKeyError(
        `must be a JSON string of 1-255 printable ASCII characters, not ${jsonKind(payloadKey)}`,
      );
    }
    const propertyKey = propertyKeys[0];
    if (payloadKey !== undefined && propertyKey !== undefined && payloadKey !== propertyKey) {
      throw new InvalidKeyError(
        `the payload's key and the user property ${KEY_PROPERTY} differ; send one key`,
      );
    }
    // The same rule as the HTTPS header's (no quote in a key), so that a key means one command
    // whichever intake carries it.
    key = parseCommandKey(payloadKey ?? propertyKey);
  } catch (error) {
    if (error instanceof InvalidKeyError) {
      return malformed('MISSING_IDEMPOTENCY_KEY', 'key', shownKey, [`key: ${error.message}`]);
    }
    throw error;
  }

  if (input.device.length === 0) {
    return malformed('INVALID_COMMAND', 'topic', key, [
      '(topic): names no device; publish commands to cmd/{device}',
    ]);
  }
  if (input.retained) {
    // A retained message is replayed to every new subscription, long after it was meant.
    return malformed('INVALID_COMMAND', 'retained', key, [
      '(message): retained; commands are never executed from the retained store, publish them with retain off',
    ]);
  }
  if (fields.device !== undefined && fields.device !== input.device) {
    // An object or array is named by its kind, not serialised: JSON.stringify recurses, and
    // 8 000 nested arrays (within the 16 KiB a command may have) overflowed the stack. The
    // throw made the message an internal error, withheld and redelivered on every connection,
    // and the commands behind it with it.
    const shown =
      typeof fields.device === 'object' && fields.device !== null
        ? jsonKind(fields.device)
        : JSON.stringify(fields.device);
    return malformed('INVALID_COMMAND', 'command', key, [
      `device: ${shown} does not match the topic's device "${input.device}"`,
    ]);
  }
  let request: CommandRequest;
  try {
    // The payload's `key` is the intake's own field; any other unknown name is refused.
    request = parseCommandRequest({ ...fields, device: input.device }, { own: ['key'] });
  } catch (error) {
    if (error instanceof InvalidCommandError) {
      return malformed('INVALID_COMMAND', 'command', key, error.errors);
    }
    throw error;
  }
  if (
    request.issuedAt === null &&
    input.messageExpiryS === undefined &&
    input.acceptUntimed !== true
  ) {
    // A broker keeps QoS 1 messages for an absent gateway: without its age, a command could
    // run as long after it was meant as the gateway was away (SPEC §5, I3).
    return {
      ...malformed('INVALID_COMMAND', 'untimed', key, [
        'issuedAt: required over MQTT (or an MQTT 5 Message Expiry Interval): a command without its age may have waited at the broker while the gateway was offline; nothing was written',
      ]),
      untimed: { key, request },
    } as CommandMessage;
  }
  if (
    request.issuedAt === null &&
    input.messageExpiryS !== undefined &&
    input.keysKeptS !== undefined &&
    input.messageExpiryS > input.keysKeptS
  ) {
    // Timed from its receipt, the command is fresh at every delivery; the broker may deliver it
    // again until its interval runs out, and by then its key must still be in the journal (I1).
    // A retry of a key the journal holds starts nothing: answered as the retry it is (untimed),
    // not "nothing was written" of a command that may have run.
    return {
      ...malformed('INVALID_COMMAND', 'command', key, [
        `Message Expiry Interval ${input.messageExpiryS} s without issuedAt: longer than this gateway keeps a settled key (journal.retentionHours, ${input.keysKeptS} s), so a redelivery after the key is purged would run as a new command; send issuedAt, or an interval of at most ${input.keysKeptS} s; nothing was written`,
      ]),
      untimed: { key, request },
    } as CommandMessage;
  }
  return { kind: 'command', key, request };
}

const lenientUtf8 = new TextDecoder('utf-8');

/**
 * The `key` member of the object `head` starts with — the beginning of a payload too large to be
 * parsed — when it is a string among the members that `head` holds whole; otherwise null. Only
 * the outer object's members are read (a `key` inside a nested value is not the command's), and
 * anything that is not JSON ends the search. A key given twice is not told: the first counts, for
 * an answer only (the message is refused whatever its key).
 */
export function leadingKey(head: Buffer): string | null {
  // Not fatal: the cut may fall inside a character, after the members looked at.
  const text = lenientUtf8.decode(head);
  let i = 0;
  const skipSpace = (): void => {
    while (i < text.length && ' \t\n\r'.includes(text.charAt(i))) i += 1;
  };
  /** The JSON string at `i` (moved past it), or undefined when there is none whole. */
  const readString = (): string | undefined => {
    if (text.charAt(i) !== '"') return undefined;
    let end = i + 1;
    while (end < text.length && text.charAt(end) !== '"') end += text.charAt(end) === '\\' ? 2 : 1;
    if (end >= text.length) return undefined;
    const literal = text.slice(i, end + 1);
    i = end + 1;
    try {
      return JSON.parse(literal) as string;
    } catch {
      return undefined;
    }
  };
  /** Moves past the value at `i`; false when it is not whole in `text`. */
  const skipValue = (): boolean => {
    const c = text.charAt(i);
    if (c === '"') return readString() !== undefined;
    if (c === '{' || c === '[') {
      let depth = 0;
      while (i < text.length) {
        const d = text.charAt(i);
        if (d === '"') {
          if (readString() === undefined) return false;
          continue;
        }
        if (d === '{' || d === '[') depth += 1;
        else if (d === '}' || d === ']') depth -= 1;
        i += 1;
        if (depth === 0) return true;
      }
      return false;
    }
    const start = i;
    while (i < text.length && !',}] \t\n\r'.includes(text.charAt(i))) i += 1;
    return i > start && i < text.length;
  };
  // The decoder drops one leading BOM, as when a payload is parsed.
  skipSpace();
  if (text.charAt(i) !== '{') return null;
  i += 1;
  for (;;) {
    skipSpace();
    const name = readString();
    if (name === undefined) return null;
    skipSpace();
    if (text.charAt(i) !== ':') return null;
    i += 1;
    skipSpace();
    if (name === 'key') return text.charAt(i) === '"' ? (readString() ?? null) : null;
    if (!skipValue()) return null;
    skipSpace();
    if (text.charAt(i) !== ',') return null;
    i += 1;
  }
}

function keyProperty(
  properties: Readonly<Record<string, string | string[]>> | undefined,
): readonly string[] {
  if (properties === undefined) return [];
  const values: string[] = [];
  // User property names are case-sensitive in MQTT; header-style capitals are taken too.
  for (const [name, value] of Object.entries(properties)) {
    if (name.toLowerCase() !== KEY_PROPERTY) continue;
    for (const v of Array.isArray(value) ? value : [value]) {
      if (!values.includes(v)) values.push(v);
    }
  }
  return values;
}

function jsonKind(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  return typeof value === 'object' ? 'an object' : `a ${typeof value}`;
}

/** An unreadable key is not echoed; a long one is cut to the longest a key may be. */
/**
 * The key an answer names. A key too long to be one is cut, and the cut marked with '…': cut
 * alone, its first 255 characters are a valid key, possibly another command's, and the answer
 * would seem to be about that one. With the mark it cannot be a key.
 */
function readableKey(key: string | null): string | null {
  if (key === null || key.length === 0) return null;
  return key.length <= 255 ? key : `${key.slice(0, 254)}…`;
}

/** The answer to a message that did not become (or join) a command. */
export interface MessageError {
  readonly key: string | null;
  readonly device: string;
  readonly code: MessageErrorCode;
  readonly detail: string;
  readonly errors?: readonly string[];
  readonly receivedAt: string;
}

export function errorDocument(error: MessageError): string {
  return JSON.stringify({
    key: error.key,
    device: error.device,
    code: error.code,
    detail: error.detail,
    ...(error.errors === undefined || error.errors.length === 0 ? {} : { errors: error.errors }),
    receivedAt: error.receivedAt,
  });
}

/** The retained `state/{device}` document: the pipeline's mirror of the controller. */
export function stateDocument(device: string, readback: Readback): string {
  return JSON.stringify({ device, ...observe(readback) });
}
