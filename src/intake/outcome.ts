import type { ResultCode } from '../core/command.js';
import { isTerminal } from '../core/command.js';
import type { CommandRecord } from '../core/journal.js';
import { renderResult, toResult } from '../core/result.js';

/**
 * What a command's journaled state means to an intake: the HTTP status of SPEC §4, and the
 * result documents both intakes send (SPEC §2: the same shape on HTTP and MQTT).
 */

const REJECTED_STATUS: Partial<Record<ResultCode, number>> = { FORBIDDEN_DEVICE: 403 };

/** The HTTP status for a command as journaled now (SPEC §4). */
export function httpStatusFor(record: CommandRecord): number {
  switch (record.state) {
    case 'confirmed':
      return 200;
    case 'accepted':
    case 'dispatched':
      return 202;
    case 'rejected':
      return REJECTED_STATUS[record.code ?? 'ILLEGAL_TRANSITION'] ?? 409;
    case 'failed':
      return 502;
  }
}

/**
 * The result body for a command: the stored one once it is settled (so that every replay is
 * byte-identical), otherwise the current state rendered afresh.
 */
export function resultBody(record: CommandRecord): string {
  if (isTerminal(record.state) && record.response !== null) return record.response;
  return renderResult(record);
}

/**
 * The HTTP response body for a command. A confirmed or unfinished command is its result
 * (`application/json`); a rejected or failed one is an RFC 9457 problem document whose
 * extension members are the whole result, so it is both: the same fields as on MQTT, and a
 * problem with `type`, `title`, `status` and `code`. Derived from the stored result alone, so
 * a replay is byte-identical.
 */
export function httpResponseFor(record: CommandRecord): {
  status: number;
  contentType: string;
  body: string;
} {
  const status = httpStatusFor(record);
  const body = resultBody(record);
  if (record.state !== 'rejected' && record.state !== 'failed') {
    return { status, contentType: 'application/json', body };
  }
  const code = record.code ?? 'DEVICE_FAULT';
  const head = JSON.stringify({
    type: `urn:sluice:problem:${code.toLowerCase().replaceAll('_', '-')}`,
    title: OUTCOME_TITLES[code] ?? code,
    status,
  });
  // `{"type":…,"status":409}` + `{"key":…}` → `{"type":…,"status":409,"key":…}`
  return {
    status,
    contentType: 'application/problem+json',
    body: `${head.slice(0, -1)},${body.slice(1)}`,
  };
}

const OUTCOME_TITLES: Partial<Record<ResultCode, string>> = {
  ILLEGAL_TRANSITION: 'Rejected: illegal state transition (0x88)',
  LOCAL_MODE: 'Rejected: device in local mode',
  STALE_COMMAND: 'Rejected: command past its deadline',
  // Not only the issuer's: an unsynced gateway clock and a controller clock beyond its bound
  // end CLOCK_SKEW too (SPEC §6); the detail says which.
  CLOCK_SKEW:
    'Rejected: a clock is out of bounds (issuedAt ahead, gateway clock unsynced, or controller clock off)',
  FORBIDDEN_DEVICE: 'Rejected: device not allowed for this identity',
  SUPERSEDED: 'Rejected: superseded by a stop before it was written',
  READBACK_TIMEOUT: 'Failed: no confirming readback in time',
  READBACK_MISMATCH: 'Failed: readback shows another state',
  DEVICE_UNREACHABLE: 'Failed: device unreachable',
  DEVICE_FAULT: 'Failed: device fault',
  INTERRUPTED: 'Failed: interrupted by a stop',
  RESOLVED_BY_OPERATOR: 'Failed: resolved by an operator',
};

/** The result for an MQTT replay: the stored result, marked `replayed: true`. */
export function replayedResultBody(record: CommandRecord): string {
  if (record.response === null) return JSON.stringify(toResult(record, true));
  const stored = JSON.parse(record.response) as Record<string, unknown>;
  return JSON.stringify({ ...stored, replayed: true });
}

/** An RFC 9457 problem document with Sluice's stable `code`. */
export interface Problem {
  readonly type: string;
  readonly title: string;
  readonly status: number;
  readonly code: string;
  readonly detail: string;
  readonly [extension: string]: unknown;
}

const TITLES: Record<string, string> = {
  MISSING_IDEMPOTENCY_KEY: 'Missing or malformed idempotency key',
  INVALID_COMMAND: 'Invalid command',
  UNAUTHORIZED: 'Missing or invalid credentials',
  FORBIDDEN_DEVICE: 'Device not allowed for this identity',
  UNKNOWN_DEVICE: 'Unknown device',
  UNKNOWN_COMMAND: 'Unknown command',
  IN_PROGRESS: 'Command still in progress',
  IDEMPOTENCY_KEY_REUSED: 'Idempotency key reused with a different command',
  RATE_LIMITED: 'Too many requests',
  DEVICE_QUEUE_FULL: 'Too many commands waiting for this device',
  PAYLOAD_TOO_LARGE: 'Request body too large',
  UNSUPPORTED_MEDIA_TYPE: 'Request body must be application/json',
  JOURNAL_UNAVAILABLE: 'Journal unavailable',
  SHUTTING_DOWN: 'Gateway shutting down',
  NOT_FOUND: 'Not found',
};

export function problem(
  status: number,
  code: string,
  detail: string,
  extensions: Record<string, unknown> = {},
): Problem {
  return {
    type: `urn:sluice:problem:${code.toLowerCase().replaceAll('_', '-')}`,
    title: TITLES[code] ?? code,
    status,
    code,
    detail,
    ...extensions,
  };
}
