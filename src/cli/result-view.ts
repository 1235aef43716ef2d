import type { Observation } from '../core/journal.js';
import { relative } from './durations.js';
import { stateTone, type Field } from './table.js';

/** How a readback reads in one line: `OPEN 100% seq 7 (read 3s ago, controller time …)`. */
export function observationText(o: Observation, now: number): string {
  const parts = [o.state];
  if (o.position !== null) parts.push(`${o.position}%`);
  if (o.seq !== null) parts.push(`seq ${o.seq}`);
  if (o.faultCode !== null) parts.push(`fault ${o.faultCode}`);
  const read = Date.parse(o.readAt);
  const when = Number.isNaN(read) ? o.readAt : `read ${o.readAt} (${relative(read, now)})`;
  const source = o.sourceTime === null ? '' : `, controller time ${o.sourceTime}`;
  return `${parts.join(' ')}  ${when}${source}`;
}

/** `confirmed OK`, `failed DEVICE_FAULT 0x81`. */
export function outcomeText(state: string, code: string | null, faultCode: string | null): string {
  return [state, code, faultCode].filter((p) => p !== null && p !== '').join(' ');
}

/** The result document (SPEC §2) as fields, for `send` and `reverify`/`resolve`. */
export interface ResultDocument {
  readonly key: string;
  readonly device: string;
  readonly action: string;
  readonly position?: number;
  readonly state: string;
  readonly code: string | null;
  readonly faultCode: string | null;
  readonly detail?: string | null;
  readonly observed?: Observation | null;
  readonly issuedAt?: string;
  readonly issuedAtSource?: string;
  readonly deadline?: string;
  readonly seq?: number | null;
  readonly acceptedAt?: string;
  readonly dispatchedAt?: string | null;
  readonly settledAt?: string | null;
  readonly replayed?: boolean;
}

export function isResultDocument(value: unknown): value is ResultDocument {
  if (typeof value !== 'object' || value === null) return false;
  const v = value as Record<string, unknown>;
  return typeof v.key === 'string' && typeof v.state === 'string' && typeof v.device === 'string';
}

const at = (value: string | null | undefined, now: number): string => {
  if (value === null || value === undefined) return '-';
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? value : `${value} (${relative(ms, now)})`;
};

export function resultFields(r: ResultDocument, now: number): Field[] {
  const fields: Field[] = [
    ['key', r.key],
    ['device', r.device],
    ['action', r.position === undefined ? r.action : `${r.action} ${r.position}%`],
    ['state', outcomeText(r.state, r.code, r.faultCode), stateTone(r.state)],
  ];
  if (r.detail !== undefined && r.detail !== null) fields.push(['detail', r.detail]);
  if (r.observed !== undefined && r.observed !== null) {
    fields.push(['observed', observationText(r.observed, now)]);
  }
  if (r.seq !== undefined)
    fields.push(['seq', r.seq === null ? '- (nothing written)' : String(r.seq)]);
  if (r.issuedAt !== undefined) {
    const source = r.issuedAtSource === 'gateway' ? ' (gateway receive time)' : '';
    fields.push(['issued', `${r.issuedAt}${source}`]);
  }
  if (r.deadline !== undefined) fields.push(['deadline', at(r.deadline, now)]);
  if (r.acceptedAt !== undefined) fields.push(['accepted', at(r.acceptedAt, now)]);
  if (r.dispatchedAt !== undefined) fields.push(['dispatched', at(r.dispatchedAt, now)]);
  if (r.settledAt !== undefined) fields.push(['settled', at(r.settledAt, now)]);
  return fields;
}
