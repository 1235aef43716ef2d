import { createHash } from 'node:crypto';
import { z } from 'zod';
import { InvalidCommandError, InvalidKeyError } from './errors.js';

export const ACTIONS = ['open', 'close', 'stop', 'reset', 'move'] as const;
export type Action = (typeof ACTIONS)[number];

export const COMMAND_STATES = [
  'accepted',
  'dispatched',
  'confirmed',
  'rejected',
  'failed',
] as const;
export type CommandState = (typeof COMMAND_STATES)[number];
export type OpenState = 'accepted' | 'dispatched';
export type TerminalState = 'confirmed' | 'rejected' | 'failed';

export const REJECT_CODES = [
  'ILLEGAL_TRANSITION',
  'LOCAL_MODE',
  'STALE_COMMAND',
  'CLOCK_SKEW',
  'FORBIDDEN_DEVICE',
  'SUPERSEDED',
] as const;
export type RejectCode = (typeof REJECT_CODES)[number];

export const FAIL_CODES = [
  'READBACK_TIMEOUT',
  'READBACK_MISMATCH',
  'DEVICE_UNREACHABLE',
  'DEVICE_FAULT',
  'INTERRUPTED',
  'RESOLVED_BY_OPERATOR',
] as const;
export type FailCode = (typeof FAIL_CODES)[number];

export type ResultCode = 'OK' | RejectCode | FailCode;

export function isTerminal(state: CommandState): state is TerminalState {
  return state === 'confirmed' || state === 'rejected' || state === 'failed';
}

/** Longest TTL a command may ask for: a day. Longer-lived "commands" are schedules, not commands. */
export const MAX_TTL_MS = 24 * 60 * 60 * 1000;

/** A command as the issuer asked for it, validated and in canonical form. */
export interface CommandRequest {
  readonly device: string;
  readonly action: Action;
  /** Setpoint in percent for `move`; null for every other action. */
  readonly position: number | null;
  /** Canonical RFC 3339 (ISO 8601, UTC, milliseconds), or null when the issuer gave none. */
  readonly issuedAt: string | null;
  /** Null when the issuer gave none: the device profile's default applies. */
  readonly ttlMs: number | null;
}

// RFC 3339 date-time: a full date, a time, optional fractions and a mandatory offset. Any
// number of fraction digits (`time-secfrac = "." 1*DIGIT`): the instant keeps milliseconds.
const RFC3339 =
  /^(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(\.\d+)?([Zz]|([+-])(\d{2}):(\d{2}))$/;

/**
 * Whether every field of an RFC 3339 date-time is in range: `Date.parse` rolls 30 February over
 * into 2 March, so the calendar is checked here (RFC 3339 §5.7; a leap second is refused, since
 * JavaScript time has none).
 */
function isCalendarValid(value: string): boolean {
  const m = RFC3339.exec(value);
  // Not the format at all: the pattern's own message says so, and "day, month or time out of
  // range" next to it would send the issuer looking for a wrong date in a date without offset.
  if (m === null) return true;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const leap = (year % 4 === 0 && year % 100 !== 0) || year % 400 === 0;
  const days = [31, leap ? 29 : 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31][month - 1];
  if (days === undefined || day < 1 || day > days) return false;
  if (hour > 23 || minute > 59 || second > 59) return false;
  if (m[9] !== undefined && (Number(m[10]) > 23 || Number(m[11]) > 59)) return false;
  return !Number.isNaN(rfc3339Instant(value));
}

/**
 * The instant of an RFC 3339 date-time, epoch milliseconds (the fraction cut to the
 * millisecond), read from its fields; NaN when it is not one. Not `Date.parse`: it reads only
 * ECMAScript's own format (`T`) by the standard and hands anything else to V8's legacy parser,
 * which takes RFC 3339's space separator (§5.6 NOTE) but guesses at a year below 100:
 * `0012-03-26 18:10:00Z` (12 March of the year 12) was read as 2026-12-03T18:10:00Z, a command
 * stale for two thousand years judged fresh (I3), `0099-12-03 …` as 1999 and
 * `0026-12-03 …` not at all.
 */
function rfc3339Instant(value: string): number {
  const m = RFC3339.exec(value);
  if (m === null) return Number.NaN;
  const [year, month, day, hour, minute, second] = m.slice(1, 7).map(Number) as [
    number,
    number,
    number,
    number,
    number,
    number,
  ];
  const ms = m[7] === undefined ? 0 : Number(m[7].slice(1, 4).padEnd(3, '0'));
  const offsetMinutes =
    m[9] === undefined ? 0 : (m[9] === '-' ? -1 : 1) * (Number(m[10]) * 60 + Number(m[11]));
  const at = new Date(0);
  // setUTCFullYear, not Date.UTC: Date.UTC maps the years 0-99 to 1900-1999.
  at.setUTCFullYear(year, month - 1, day);
  at.setUTCHours(hour, minute, second, ms);
  return at.getTime() - offsetMinutes * 60_000;
}

/** The first and last instants whose UTC date-time has a four-digit year. */
const EARLIEST_UTC = rfc3339Instant('0000-01-01T00:00:00.000Z');
const LATEST_UTC = rfc3339Instant('9999-12-31T23:59:59.999Z');

/**
 * Whether the instant, in UTC, can be written as RFC 3339 (a four-digit year), and so can the
 * deadline that follows it by at most MAX_TTL_MS: `issuedAt` and `deadline` are kept and shown
 * in UTC, and `9999-12-31T23:59:59-23:59` would be `+010000-01-01T23:58:59Z` (ECMAScript's
 * extended year) in the result and the journal, which no RFC 3339 parser reads.
 */
function isWritableInUtc(value: string): boolean {
  const at = rfc3339Instant(value);
  // Not a date-time at all: the checks before say so.
  if (Number.isNaN(at)) return true;
  return at >= EARLIEST_UTC && at <= LATEST_UTC - MAX_TTL_MS;
}

/**
 * Fields of a result document (SPEC §2) that no command carries. A result is never taken for a
 * command, e.g. one published to a topic that another gateway reads as commands.
 */
const RESULT_ONLY_FIELDS = ['state', 'code', 'observed', 'settledAt', 'replayed'] as const;

/** The message for a required field left out; zod's own for every other problem. */
function required(issue: { readonly input: unknown }): string | undefined {
  return issue.input === undefined ? 'is required' : undefined;
}

const commandSchema = z
  .object({
    // "is required" rather than zod's "expected string, received undefined".
    device: z.string({ error: required }).min(1).max(128),
    action: z.enum(ACTIONS, { error: required }),
    // One message per field, saying what is allowed: zod's own checks each add one, so 1e21
    // was both "expected int to be <=9007199254740991" and "expected number to be <=86400000".
    position: z
      .number()
      .refine((v) => v >= 0 && v <= 100, 'must be a percentage from 0 to 100')
      .optional(),
    issuedAt: z
      .string()
      .regex(RFC3339, 'must be an RFC 3339 date-time with an offset')
      .refine(isCalendarValid, 'is not a valid date-time (day, month or time out of range)')
      .refine(
        isWritableInUtc,
        'lies outside the years 0000-9999 in UTC (with a day for its deadline), which an RFC 3339 result cannot show',
      )
      .optional(),
    ttlMs: z
      .number()
      .refine(
        (v) => Number.isInteger(v) && v >= 1 && v <= MAX_TTL_MS,
        `must be a whole number of milliseconds from 1 to ${String(MAX_TTL_MS)} (a day)`,
      )
      .optional(),
  })
  // Names outside the command are refused by parseCommandRequest (unknownFields), which knows
  // the intake's own fields; the schema lets them through so that it reports the rest at once.
  .loose()
  .superRefine((value, ctx) => {
    for (const field of RESULT_ONLY_FIELDS) {
      if (Object.hasOwn(value, field)) {
        ctx.addIssue({
          code: 'custom',
          path: [field],
          message: 'is a field of a result document, not of a command; refusing it as a command',
        });
      }
    }
    if (value.action === 'move' && value.position === undefined) {
      ctx.addIssue({ code: 'custom', path: ['position'], message: 'is required for move' });
    }
    if (value.action !== 'move' && value.position !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['position'], message: 'is only allowed for move' });
    }
  });

/** The fields of a command (SPEC §2), in the order an answer names them. */
export const COMMAND_FIELDS = ['device', 'action', 'position', 'issuedAt', 'ttlMs'] as const;

/** What an intake's body may carry besides the command's own fields. */
export interface IntakeFields {
  /** Fields the intake reads itself (the MQTT payload's `key`): taken, not part of the command. */
  readonly own?: readonly string[];
  /**
   * Fields that belong elsewhere on this intake, with where (HTTPS: `key` goes in the
   * Idempotency-Key header): refused, and the answer says where to put them.
   */
  readonly elsewhere?: Readonly<Record<string, string>>;
}

/** At most this many unknown fields are named one by one; the rest are counted. */
const MAX_NAMED_UNKNOWN = 8;

/**
 * Validates an issuer's command body; every problem is reported at once, with its path.
 *
 * A field that is not a command field (nor one of the intake's own) is refused, never ignored:
 * SPEC §2's optional fields have defaults, so a misspelt `"ttl": 5000` or `"issuedat"` would
 * otherwise be a command that waits the profile's default TTL instead of five seconds, or one
 * that is not checked for staleness at all (I3) — a command other than the one the operator
 * wrote, accepted without a word (docs/spec-notes.md).
 */
export function parseCommandRequest(input: unknown, intake: IntakeFields = {}): CommandRequest {
  const parsed = commandSchema.safeParse(input);
  // Unknown names first: a misspelt name often explains the problems after it ("posiiton",
  // then "position: is required for move").
  const unknown = unknownFields(input, intake);
  if (!parsed.success || unknown.length > 0) {
    throw new InvalidCommandError([
      ...unknown,
      ...(parsed.success ? [] : parsed.error.issues).map((issue) => {
        const path = issue.path.length > 0 ? issue.path.join('.') : '(body)';
        return `${path}: ${issue.message}`;
      }),
    ]);
  }
  const v = parsed.data;
  return {
    device: v.device,
    action: v.action,
    // JSON's -0 is the number 0 (RFC 8259 §6 gives a sign to no zero an issuer could mean):
    // canonical as 0, so that the fingerprint, the journal and the setpoint written (a float32
    // or Double register would carry the sign bit) never depend on how the issuer spelt it.
    position: v.position === undefined ? null : v.position + 0,
    issuedAt: v.issuedAt === undefined ? null : new Date(rfc3339Instant(v.issuedAt)).toISOString(),
    ttlMs: v.ttlMs ?? null,
  };
}

/** One error per member of `input` that is neither a command field nor the intake's own. */
function unknownFields(input: unknown, intake: IntakeFields): string[] {
  if (typeof input !== 'object' || input === null || Array.isArray(input)) return [];
  const own = intake.own ?? [];
  const allowed: readonly string[] = [...COMMAND_FIELDS, ...own];
  const known = new Set<string>([...allowed, ...RESULT_ONLY_FIELDS]);
  // Own names only (JSON.parse makes every member one, `__proto__` included).
  const names = Object.keys(input).filter((name) => !known.has(name));
  const fields = allowed.join(', ');
  const errors = names.slice(0, MAX_NAMED_UNKNOWN).map((name) => {
    const path = fieldPath(name);
    const elsewhere = intake.elsewhere?.[name];
    if (elsewhere !== undefined) return `${path}: does not go in the body here; ${elsewhere}`;
    const meant = likelyMeant(name, allowed);
    const hint = meant === undefined ? '' : ` (did you mean "${meant}"?)`;
    return `${path}: is not a field of a command${hint}; the fields are ${fields}: a field that is not understood is refused, not ignored`;
  });
  if (names.length > MAX_NAMED_UNKNOWN) {
    errors.push(
      `(body): ${String(names.length - MAX_NAMED_UNKNOWN)} more fields that are not fields of a command`,
    );
  }
  return errors;
}

/** A member name as an error path: as it is when plain, else quoted, and never very long. */
function fieldPath(name: string): string {
  const shown = name.length > 64 ? `${name.slice(0, 64)}…` : name;
  return /^[A-Za-z_$][\w$-]*$/.test(name) ? shown : JSON.stringify(shown);
}

/**
 * The field a misspelt name most likely stands for: the same letters in another case or with
 * separators (`ttl_ms`, `IssuedAt`), a shortening or lengthening of it (`ttl`, `ttlMsec`), or
 * one or two letters off (`positon`).
 */
function likelyMeant(name: string, fields: readonly string[]): string | undefined {
  const plain = (s: string): string => s.toLowerCase().replace(/[^a-z0-9]/g, '');
  const given = plain(name);
  if (given.length < 3) return undefined;
  return fields.find((field) => {
    const f = plain(field);
    return (
      given === f ||
      f.startsWith(given) ||
      given.startsWith(f) ||
      (f.length >= 5 && Math.abs(given.length - f.length) <= 2 && editDistance(given, f) <= 2)
    );
  });
}

/** Levenshtein distance (both strings are short member names). */
function editDistance(a: string, b: string): number {
  let row = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const next = [i];
    for (let j = 1; j <= b.length; j++) {
      const substitute = (row[j - 1] ?? 0) + (a[i - 1] === b[j - 1] ? 0 : 1);
      next.push(Math.min((row[j] ?? 0) + 1, (next[j - 1] ?? 0) + 1, substitute));
    }
    row = next;
  }
  return row[b.length] ?? 0;
}

const KEY = /^[\x21-\x7e]{1,255}$/;

/** Keys are 1–255 printable ASCII characters (SPEC §2); spaces and control characters are refused. */
export function parseIdempotencyKey(key: unknown): string {
  if (typeof key !== 'string' || key.length === 0) {
    throw new InvalidKeyError('an idempotency key is required');
  }
  if (!KEY.test(key)) {
    throw new InvalidKeyError(
      'an idempotency key is 1-255 printable ASCII characters without spaces',
    );
  }
  return key;
}

/**
 * The key of a new command, as both intakes take it: an idempotency key without a double
 * quote. The Idempotency-Key header is a Structured Field string, in which quotes delimit the
 * key (`"k"` is the key `k`, draft-ietf-httpapi-idempotency-key-header §2), while in an MQTT
 * payload or user property they would be part of it: `"k"` would name one command over HTTPS
 * and another over MQTT (I1: one key, one identity, one command on both intakes), and `""`
 * would be a key over MQTT only. Keys journaled before this rule stay readable: reads take
 * any key (parseIdempotencyKey).
 */
export function parseCommandKey(key: unknown): string {
  const parsed = parseIdempotencyKey(key);
  if (parsed.includes('"')) {
    throw new InvalidKeyError(
      'an idempotency key has no double quote ("): the Idempotency-Key header uses quotes around a key ("k" is the key k), so a key with quotes would name a different command on each intake',
    );
  }
  return parsed;
}

/**
 * The fingerprint of a command: a hash of its canonical form. Absent fields stay absent (null)
 * rather than taking their defaults, so a retry that omits the same fields matches.
 */
export function fingerprint(request: CommandRequest): string {
  const canonical = JSON.stringify([
    request.device,
    request.action,
    request.position,
    request.issuedAt,
    request.ttlMs,
  ]);
  return createHash('sha256').update(canonical).digest('hex');
}

export interface FreshnessPolicy {
  /** How far in the future an issuer's `issuedAt` may lie (issuer clock ahead of the gateway's). */
  readonly maxIssuerSkewMs: number;
}

export type FreshnessVerdict = 'FRESH' | 'STALE_COMMAND' | 'CLOCK_SKEW';

/** I3: a command past its deadline, or issued too far in the future, is never written. */
export function checkFreshness(
  command: { readonly issuedAt: number; readonly deadline: number },
  now: number,
  policy: FreshnessPolicy,
): FreshnessVerdict {
  if (command.issuedAt - now > policy.maxIssuerSkewMs) return 'CLOCK_SKEW';
  if (now >= command.deadline) return 'STALE_COMMAND';
  return 'FRESH';
}
