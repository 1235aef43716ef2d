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
] as const;
export type RejectCode = (typeof REJECT_CODES)[number];

export const FAIL_CODES = [
  'READBACK_TIMEOUT',
  'READBACK_MISMATCH',
  'DEVICE_UNREACHABLE',
  'DEVICE_FAULT',
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

// RFC 3339 date-time: a full date, a time, optional fractions and a mandatory offset.
const RFC3339 = /^\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})$/;

const commandSchema = z
  .object({
    device: z.string().min(1).max(128),
    action: z.enum(ACTIONS),
    position: z.number().min(0).max(100).optional(),
    issuedAt: z
      .string()
      .regex(RFC3339, 'must be an RFC 3339 date-time with an offset')
      .refine((s) => !Number.isNaN(Date.parse(s)), 'is not a valid date-time')
      .optional(),
    ttlMs: z.number().int().min(1).max(MAX_TTL_MS).optional(),
  })
  // Intakes may carry their own fields (the MQTT payload's `key`); they are not part of the command.
  .loose()
  .superRefine((value, ctx) => {
    if (value.action === 'move' && value.position === undefined) {
      ctx.addIssue({ code: 'custom', path: ['position'], message: 'is required for move' });
    }
    if (value.action !== 'move' && value.position !== undefined) {
      ctx.addIssue({ code: 'custom', path: ['position'], message: 'is only allowed for move' });
    }
  });

/** Validates an issuer's command body; every problem is reported at once, with its path. */
export function parseCommandRequest(input: unknown): CommandRequest {
  const parsed = commandSchema.safeParse(input);
  if (!parsed.success) {
    throw new InvalidCommandError(
      parsed.error.issues.map((issue) => {
        const path = issue.path.length > 0 ? issue.path.join('.') : '(body)';
        return `${path}: ${issue.message}`;
      }),
    );
  }
  const v = parsed.data;
  return {
    device: v.device,
    action: v.action,
    position: v.position ?? null,
    issuedAt: v.issuedAt === undefined ? null : new Date(Date.parse(v.issuedAt)).toISOString(),
    ttlMs: v.ttlMs ?? null,
  };
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
