import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, writeSync } from 'node:fs';
import type { CommandRecord } from '../../src/core/journal.js';
import { tempDir } from '../helpers/fixtures.js';
import { isRoot, realComponent } from '../helpers/real.js';
import type { Site, Violation } from './site.js';

/**
 * Small tools shared by the fault, storm and fuzz campaigns (test/reliability/*.test.ts): they
 * read the daemon's answers and the ground truth (the simulators and the journal), and wait for
 * the events that prove something happened instead of sleeping.
 */

export const TERMINAL = new Set(['confirmed', 'rejected', 'failed']);

/** A result document as HTTPS and MQTT carry it (SPEC §2), with the fields the campaigns read. */
export interface ResultDoc {
  readonly key: string;
  readonly device: string;
  readonly action: string;
  readonly state: string;
  readonly code: string;
  readonly faultCode: string | null;
  readonly detail?: string;
  readonly seq: number | null;
  readonly replayed?: boolean;
  readonly observed?: { state: string; position: number; seq: number | null } | null;
  readonly history?: { at: number | string; from: string | null; to: string; detail: string }[];
}

export const nowIso = (): string => new Date().toISOString();

export async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls until the probe returns a value (not undefined); throws naming `what` after `ms`. */
export async function until<T>(
  probe: () => T | undefined | Promise<T | undefined>,
  ms: number,
  what: string,
  everyMs = 20,
): Promise<T> {
  const end = Date.now() + ms;
  for (;;) {
    const value = await probe();
    if (value !== undefined) return value;
    if (Date.now() > end) throw new Error(`${what}: not reached within ${ms} ms`);
    await sleep(everyMs);
  }
}

/** The command's result as the daemon reports it (GET), once terminal; bounded. */
export async function settledResult(site: Site, key: string, ms = 20_000): Promise<ResultDoc> {
  return until(
    async () => {
      const answer = await site.https('GET', `/v1/commands/${encodeURIComponent(key)}`);
      if (answer.status !== 200) return undefined;
      const doc = JSON.parse(answer.body) as ResultDoc;
      return TERMINAL.has(doc.state) ? doc : undefined;
    },
    ms,
    `a terminal state for ${key}`,
    50,
  );
}

/** The journal record of a key (ground truth on the daemon's side), if any. */
export function recordOf(site: Site, key: string): CommandRecord | undefined {
  return site.records().find((r) => r.key === key);
}

/** Waits (bounded) until the journal shows the key in one of the given states. */
export async function journalState(
  site: Site,
  key: string,
  states: readonly string[],
  ms = 10_000,
  everyMs = 5,
): Promise<CommandRecord> {
  return until(
    () => {
      const record = recordOf(site, key);
      return record !== undefined && states.includes(record.state) ? record : undefined;
    },
    ms,
    `${key} ${states.join('|')} in the journal`,
    everyMs,
  );
}

/** Waits (bounded) until the journal shows the key settled: neither accepted nor dispatched. */
export async function settledRecord(
  site: Site,
  key: string,
  ms: number,
  everyMs = 5,
): Promise<CommandRecord> {
  return until(
    () => {
      const record = recordOf(site, key);
      return record !== undefined && record.state !== 'accepted' && record.state !== 'dispatched'
        ? record
        : undefined;
    },
    ms,
    `${key} to settle`,
    everyMs,
  );
}

/** Formats violations with the command's history and the daemon's last lines, for a failure. */
export function describeViolations(site: Site, violations: readonly Violation[]): string {
  return [
    ...violations.map(
      (v) =>
        `${v.invariant} ${v.device} ${v.key ?? '-'}: ${v.message}\n    ${v.history
          .map((e) => `${new Date(e.at).toISOString()} ${e.from ?? '-'}→${e.to} ${e.detail}`)
          .join('\n    ')}`,
    ),
    '--- daemon log (last 40 lines) ---',
    ...site.logs.slice(-40),
  ].join('\n');
}

/** The invariants from ground truth; throws with the evidence when any is violated. */
export function assertInvariants(site: Site): void {
  const violations = site.verify();
  if (violations.length > 0) throw new Error(describeViolations(site, violations));
}

/** The valve action that moves a valve from where the simulator says it is now. */
export function moving(site: Site, device: string): 'open' | 'close' {
  const state = site.plant.device(device).state;
  return state === 'OPEN' || state === 'OPENING' ? 'close' : 'open';
}

/** Controller writes that carried a sequence number (the simulator's count, I1). */
export function writesOf(site: Site, device: string, seq: number | null): number {
  return seq === null ? 0 : site.plant.device(device).writesWithSeq(seq);
}

/** Controller writes a device received in total. */
export function writesReceived(site: Site, device: string): number {
  return site.plant.device(device).counters.writesReceived;
}

/** All controller writes of the plant. */
export function plantWrites(site: Site): number {
  return site.plant.devices().reduce((n, d) => n + d.counters.writesReceived, 0);
}

/** The daemon's resident set from /proc/<pid>/status (bytes), or null when unavailable. */
export function residentBytes(pid: number | null): number | null {
  if (pid === null) return null;
  try {
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    const m = /^VmRSS:\s+(\d+)\s+kB$/m.exec(status);
    return m === null ? null : Number(m[1]) * 1024;
  } catch {
    return null;
  }
}

/** A number from the daemon's /metrics (the first sample of the series that matches). */
export async function metric(site: Site, series: string): Promise<number | null> {
  const answer = await site.https('GET', '/metrics');
  for (const line of answer.body.split('\n')) {
    if (line.startsWith(`${series} `)) return Number(line.slice(series.length + 1));
  }
  return null;
}

/**
 * A real tmpfs can be mounted for the site's state directory (root with CAP_SYS_ADMIN). Skips
 * with a message otherwise; under SLUICE_REQUIRE_REAL=1 a missing capability fails.
 */
export function tmpfsAvailable(): boolean {
  return realComponent(
    'a mountable tmpfs (root with CAP_SYS_ADMIN)',
    isRoot && canMountTmpfs(),
    'run as root',
  );
}

function canMountTmpfs(): boolean {
  const { dir: probe, cleanup: done } = tempDir('sluice-mount-probe-');
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe], { stdio: 'ignore' });
    execFileSync('umount', [probe], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  } finally {
    done();
  }
}

export function mountTmpfs(dir: string, size: string): void {
  execFileSync('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir]);
}

export function remount(dir: string, mode: 'ro' | 'rw'): void {
  execFileSync('mount', ['-o', `remount,${mode}`, dir]);
}

export function unmount(dir: string): void {
  try {
    execFileSync('umount', ['-l', dir], { stdio: 'ignore' });
  } catch {
    // Not mounted (a skipped suite, or already unmounted).
  }
}

/** Fills a filesystem with a file at `path` until it is full (ENOSPC), its last kilobytes too. */
export function fillFilesystem(path: string): void {
  const fd = openSync(path, 'w');
  try {
    for (const size of [64 * 1024, 512]) {
      const chunk = Buffer.alloc(size, 0x55);
      try {
        for (;;) writeSync(fd, chunk);
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'ENOSPC') throw error;
      }
    }
  } finally {
    closeSync(fd);
  }
}
