import type { Action, CommandState, ResultCode } from './command.js';
import type { CommandRecord, IssuedAtSource, Observation } from './journal.js';

/** The command result: the same shape on HTTP and MQTT (SPEC §2). */
export interface CommandResult {
  readonly key: string;
  readonly device: string;
  readonly action: Action;
  readonly position?: number;
  readonly state: CommandState;
  readonly code: ResultCode | null;
  readonly faultCode: string | null;
  readonly detail: string | null;
  readonly observed: Observation | null;
  readonly issuedAt: string;
  readonly issuedAtSource: IssuedAtSource;
  readonly deadline: string;
  readonly seq: number | null;
  readonly acceptedAt: string;
  readonly dispatchedAt: string | null;
  readonly settledAt: string | null;
  readonly replayed: boolean;
}

const iso = (ms: number | null): string | null => (ms === null ? null : new Date(ms).toISOString());

export function toResult(record: CommandRecord, replayed = false): CommandResult {
  return {
    key: record.key,
    device: record.device,
    action: record.action,
    ...(record.position === null ? {} : { position: record.position }),
    state: record.state,
    code: record.code,
    faultCode: record.faultCode,
    detail: record.detail,
    observed: record.observed,
    issuedAt: new Date(record.issuedAt).toISOString(),
    issuedAtSource: record.issuedAtSource,
    deadline: new Date(record.deadline).toISOString(),
    seq: record.seq,
    acceptedAt: new Date(record.acceptedAt).toISOString(),
    dispatchedAt: iso(record.dispatchedAt),
    settledAt: iso(record.settledAt),
    replayed,
  };
}

export function renderResult(record: CommandRecord): string {
  return JSON.stringify(toResult(record, false));
}
