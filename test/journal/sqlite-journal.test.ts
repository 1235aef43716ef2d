import { execFileSync } from 'node:child_process';
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { Worker } from 'node:worker_threads';
import BetterSqlite3 from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import {
  JournalConflictError,
  JournalUnavailableError,
  JournalVersionError,
} from '../../src/core/errors.js';
import {
  MAX_DISPATCHES,
  type CommandRecord,
  type CommandRef,
  type NewCommand,
  type Observation,
} from '../../src/core/journal.js';
import { allocateSeq } from '../../src/core/sequence.js';
import { renderResult } from '../../src/core/result.js';
import { LATEST_VERSION } from '../../src/journal/migrations.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { workerEntry } from '../helpers/entry.js';
import { ROOT, openJournal, tempDir } from '../helpers/fixtures.js';
import { fillFilesystem, tmpfsAvailable } from '../reliability/support.js';

let dir: string;
let cleanup: () => void;
const journals: SqliteJournal[] = [];

beforeEach(() => {
  ({ dir, cleanup } = tempDir());
});
afterEach(() => {
  for (const j of journals.splice(0)) j.close();
  cleanup();
});

function open(path = join(dir, 'journal.db')): SqliteJournal {
  const j = openJournal(path);
  journals.push(j);
  return j;
}

const T0 = Date.parse('2026-11-23T17:00:00.000Z');

function command(key: string, over: Partial<NewCommand> = {}): NewCommand {
  return {
    scope: 'plant',
    key,
    fingerprint: 'f-open',
    device: 'inlet-valve',
    action: 'open',
    position: null,
    issuedAt: T0,
    issuedAtSource: 'issuer',
    ttlMs: 30_000,
    deadline: T0 + 30_000,
    intake: 'https',
    acceptedAt: T0,
    ...over,
  };
}

const seen: Observation = {
  state: 'CLOSED',
  position: 0,
  seq: 0,
  faultCode: null,
  sourceTime: null,
  readAt: new Date(T0).toISOString(),
};

/** The pipeline's dispatch: the core's allocation rule inside the journal's commit. */
function dispatch(
  j: SqliteJournal,
  ref: CommandRef,
  at: number,
  before: Observation,
  intake: string,
): CommandRecord {
  return j.markDispatched(ref, at, before, intake, (last, open) =>
    allocateSeq(last, before.seq, open),
  );
}

function confirm(j: SqliteJournal, rec: CommandRecord, at = T0 + 2000): CommandRecord {
  const d = dispatch(j, rec, at - 1500, seen, 'pipeline');
  return j.settle(d, 'dispatched', {
    to: 'confirmed',
    code: 'OK',
    faultCode: null,
    observed: { ...seen, state: 'OPEN', position: 100, seq: d.seq },
    detail: 'readback shows OPEN',
    at,
    intake: 'pipeline',
  });
}

describe('claim', () => {
  it('inserts a key once and records the acceptance', () => {
    const j = open();
    const claim = j.claim(command('k1'));
    expect(claim.kind).toBe('new');
    expect(claim.record).toMatchObject({ key: 'k1', state: 'accepted', attempts: 0, seq: null });
    expect(j.history(claim.record)).toEqual([
      { at: T0, from: null, to: 'accepted', intake: 'https', detail: 'accepted' },
    ]);
  });

  it('returns the existing record for a duplicate and records the hit in its history', () => {
    const j = open();
    j.claim(command('k1'));
    const dup = j.claim(command('k1', { intake: 'mqtt', acceptedAt: T0 + 5 }));
    expect(dup.kind).toBe('duplicate');
    expect(dup.record.intake).toBe('https');
    expect(j.history(dup.record).at(-1)).toMatchObject({ intake: 'mqtt', detail: 'duplicate' });
  });

  it('keeps a history of bounded size however often a settled key is retried, with the count and the last time', () => {
    const path = join(dir, 'journal.db');
    const j = open(path);
    const settled = confirm(j, j.claim(command('retried')).record);
    const size = (): number => {
      // The file as it stands once the log is copied into it.
      const db = new BetterSqlite3(path);
      try {
        db.pragma('wal_checkpoint(TRUNCATE)');
        return statSync(path).size;
      } finally {
        db.close();
      }
    };
    const retry = (i: number): void => {
      // A client retrying over HTTPS, another over MQTT, and one reusing the key.
      expect(j.claim(command('retried', { acceptedAt: T0 + 10_000 + i })).kind).toBe('duplicate');
      expect(
        j.claim(command('retried', { intake: 'mqtt', acceptedAt: T0 + 10_000 + i })).kind,
      ).toBe('duplicate');
      expect(
        j.claim(command('retried', { fingerprint: 'f-close', acceptedAt: T0 + 10_000 + i })).kind,
      ).toBe('reused');
    };
    for (let i = 0; i < 10; i++) retry(i);
    const early = size();
    for (let i = 10; i < 300; i++) retry(i);
    const first = new Date(T0 + 10_000).toISOString();
    const last = T0 + 10_000 + 299;
    // Before: 900 events, one per retry, and the file grew with them.
    expect(j.history(settled).slice(3)).toEqual([
      {
        at: last,
        from: 'confirmed',
        to: 'confirmed',
        intake: 'https',
        detail: `duplicate ×300 (first ${first})`,
      },
      {
        at: last,
        from: 'confirmed',
        to: 'confirmed',
        intake: 'mqtt',
        detail: `duplicate ×300 (first ${first})`,
      },
      {
        at: last,
        from: 'confirmed',
        to: 'confirmed',
        intake: 'https',
        detail: `key reuse refused: different payload ×300 (first ${first})`,
      },
    ]);
    expect(size()).toBe(early);
    // Another event ends the run: hits after it are counted from one again, after it.
    j.note(settled, T0 + 20_000, 'operator looked', 'admin');
    j.claim(command('retried', { acceptedAt: T0 + 20_001 }));
    expect(j.history(settled).slice(-2)).toMatchObject([
      { detail: 'operator looked' },
      { at: T0 + 20_001, intake: 'https', detail: 'duplicate' },
    ]);
    expect(j.history(settled)).toHaveLength(8);
  });

  it('refuses a reused key with a different fingerprint and never changes the original', () => {
    const j = open();
    j.claim(command('k1'));
    const reuse = j.claim(command('k1', { fingerprint: 'f-close', action: 'close' }));
    expect(reuse.kind).toBe('reused');
    expect(j.get({ scope: 'plant', key: 'k1' })).toMatchObject({
      action: 'open',
      fingerprint: 'f-open',
    });
    expect(j.history(reuse.record).at(-1)?.detail).toMatch(/key reuse/);
  });

  it("writes a command's dispatch, re-dispatch, settlement and notes to no row of another command", () => {
    // A command's claim lost with its batch, its key claimed since for another command: the lost
    // command still runs from the record it was taken up with, and each of its writes carries
    // that record's fingerprint (CommandOf). The row the key names now is left as it is.
    const j = open();
    const k = { scope: 'plant', key: 'k1' };
    const lost = { ...k, fingerprint: 'f-close' };
    const claimed = j.claim(command('k1')).record;
    const conflict = /key k1 names another command now \(open on inlet-valve, accepted\)/;
    expect(() => dispatch(j, lost, T0 + 100, seen, 'pipeline')).toThrow(JournalConflictError);
    expect(() => dispatch(j, lost, T0 + 100, seen, 'pipeline')).toThrow(conflict);
    expect(() => {
      j.note(lost, T0 + 100, 'no connection to its controller', 'pipeline');
    }).toThrow(conflict);
    expect(() =>
      j.settle(lost, 'accepted', {
        to: 'confirmed',
        code: 'OK',
        faultCode: null,
        observed: seen,
        detail: 'confirmed: no-op: the controller shows CLOSED',
        at: T0 + 100,
        intake: 'pipeline',
      }),
    ).toThrow(conflict);
    expect(j.get(k)).toEqual(claimed);
    expect(j.history(k).map((e) => e.to)).toEqual(['accepted']);

    // Dispatched for its own command (fingerprint f-open): the lost one neither re-dispatches
    // nor settles it, nor notes in its history.
    const d = dispatch(j, claimed, T0 + 200, seen, 'pipeline');
    const dispatchedConflict =
      /key k1 names another command now \(open on inlet-valve, dispatched\)/;
    expect(() =>
      j.markRedispatched({ ...lost, attempts: d.attempts }, T0 + 300, 'write lost', 'pipeline'),
    ).toThrow(dispatchedConflict);
    expect(() =>
      j.settle(lost, 'dispatched', {
        to: 'failed',
        code: 'DEVICE_UNREACHABLE',
        faultCode: null,
        observed: null,
        detail: 'no readback',
        at: T0 + 300,
        intake: 'pipeline',
      }),
    ).toThrow(dispatchedConflict);
    expect(() => {
      j.note(lost, T0 + 300, 'late echo', 'pipeline');
    }).toThrow(dispatchedConflict);
    expect(j.get(k)).toEqual(d);
    expect(j.history(k).map((e) => e.to)).toEqual(['accepted', 'dispatched']);

    // The same writes for the command the row is (its fingerprint, or by key alone) apply.
    j.note(d, T0 + 400, 'operator looked', 'admin');
    j.note(k, T0 + 401, 'by key', 'admin');
    expect(j.history(k).map((e) => e.detail)).toEqual(
      expect.arrayContaining(['operator looked', 'by key']),
    );
    const settled = j.settle(d, 'dispatched', {
      to: 'confirmed',
      code: 'OK',
      faultCode: null,
      observed: { ...seen, state: 'OPEN', position: 100, seq: d.seq },
      detail: 'readback shows OPEN',
      at: T0 + 500,
      intake: 'pipeline',
    });
    expect(settled).toMatchObject({ state: 'confirmed', fingerprint: 'f-open' });
  });

  it('scopes keys by identity', () => {
    const j = open();
    expect(j.claim(command('k1')).kind).toBe('new');
    expect(j.claim(command('k1', { scope: 'other' })).kind).toBe('new');
    expect(
      j
        .findByKey('k1')
        .map((r) => r.scope)
        .sort(),
    ).toEqual(['other', 'plant']);
  });

  it('gives exactly one winner among many concurrent claims from separate connections', async () => {
    const path = join(dir, 'journal.db');
    open(path).close();
    const start = new Int32Array(new SharedArrayBuffer(4));
    const { script, execArgv } = workerEntry('test/helpers/claim-worker.ts');
    const workers = Array.from(
      { length: 8 },
      () =>
        new Worker(script, {
          workerData: { path, key: 'contended', fingerprint: 'f-open', start },
          execArgv,
        }),
    );
    const ready = workers.map(
      (w) =>
        new Promise<void>((resolve) =>
          w.once('message', () => {
            resolve();
          }),
        ),
    );
    const results = workers.map(
      (w) =>
        new Promise<string>((resolve, reject) => {
          w.on('message', (m: { kind?: string }) => {
            if (m.kind !== undefined) resolve(m.kind);
          });
          w.once('error', reject);
        }),
    );
    await Promise.all(ready);
    Atomics.store(start, 0, 1);
    Atomics.notify(start, 0);
    const kinds = await Promise.all(results);
    await Promise.all(workers.map((w) => w.terminate()));
    expect(kinds.filter((k) => k === 'new')).toHaveLength(1);
    expect(kinds.filter((k) => k === 'duplicate')).toHaveLength(7);
    const j = open(path);
    // Accepted, and the seven duplicates over one intake as one event that counts them.
    const history = j.history({ scope: 'plant', key: 'contended' });
    expect(history).toHaveLength(2);
    expect(history[1]?.detail).toMatch(/^duplicate ×7 \(first /);
  });
});

describe('transitions', () => {
  it('allocates per-device sequence numbers in the dispatch commit, wrapping 65535 to 1', () => {
    const j = open();
    const a = dispatch(j, j.claim(command('a')).record, T0, seen, 'pipeline');
    const b = dispatch(j, j.claim(command('b')).record, T0, seen, 'pipeline');
    const c = dispatch(j, j.claim(command('c', { device: 'drain-valve' })).record, T0, seen, 'p');
    expect([a.seq, b.seq, c.seq]).toEqual([1, 2, 1]);
    expect(a).toMatchObject({ state: 'dispatched', attempts: 1, observedBefore: seen });
    // The record the dispatch returns is the row as stored, read back by a lookup.
    expect(a).toEqual(j.get(a));
    const withUndefined = { ...seen, sourceTime: undefined } as unknown as Observation;
    const e = dispatch(j, j.claim(command('e')).record, T0 + 7, withUndefined, 'pipeline');
    expect(e).toEqual(j.get(e));
    expect(e.dispatchedAt).toBe(T0 + 7);
    const raw = new BetterSqlite3(join(dir, 'journal.db'));
    raw.prepare("UPDATE device_seq SET last_seq = 65535 WHERE device = 'inlet-valve'").run();
    raw.close();
    // 1 and 2 still belong to the open commands a and b: the wrap skips them.
    expect(dispatch(j, j.claim(command('d')).record, T0, seen, 'p').seq).toBe(4);
  });

  it("numbers a renamed device's first dispatch past its former id's kept writes, and none of them after a wrap", () => {
    const j = open();
    const raw = new BetterSqlite3(join(dir, 'journal.db'));
    // The new id's own count is 65535 (the id was used before), and the former id's write the
    // controller may still take is number 1: the next number, after the wrap, would be it.
    const before = dispatch(j, j.claim(command('before')).record, T0, seen, 'pipeline');
    j.settle(before, 'dispatched', {
      to: 'failed',
      code: 'READBACK_TIMEOUT',
      faultCode: null,
      observed: null,
      detail: 'x',
      at: T0,
      intake: 'pipeline',
    });
    raw.prepare("UPDATE device_seq SET last_seq = 65535 WHERE device = 'inlet-valve'").run();
    const first = j.markDispatched(j.claim(command('first')).record, T0, seen, 'p', (last, o) =>
      allocateSeq(last, seen.seq, o, [1]),
    );
    // 1 is the former write's: 2 is the first number free.
    expect(first.seq).toBe(2);
    // Past the highest of the former numbers when that is above the new id's own count.
    raw.prepare("UPDATE device_seq SET last_seq = 3 WHERE device = 'inlet-valve'").run();
    raw.close();
    const next = j.markDispatched(j.claim(command('next')).record, T0, seen, 'p', (last, o) =>
      allocateSeq(last, seen.seq, o, [40, 7]),
    );
    expect(next.seq).toBe(41);
  });

  it('returns from each write the row as stored, with its history on that command', () => {
    const j = open();
    // Another command first, so that rowids and keys cannot line up by accident.
    j.claim(command('other'));
    const claimed = j.claim(command('k1', { position: 40, acceptedAt: T0 + 1 })).record;
    expect(claimed).toEqual(j.get(claimed));
    const dispatched = dispatch(j, claimed, T0 + 2, seen, 'pipeline');
    expect(dispatched).toEqual(j.get(claimed));
    const settled = j.settle(dispatched, 'dispatched', {
      to: 'confirmed',
      code: 'OK',
      faultCode: null,
      observed: { ...seen, state: 'OPEN', position: 40, seq: dispatched.seq },
      detail: 'readback shows OPEN',
      at: T0 + 3,
      intake: 'pipeline',
    });
    expect(settled).toEqual(j.get(claimed));
    expect(settled.response).toEqual(renderResult(settled));
    j.note(claimed, T0 + 4, 'looked at', 'admin');
    expect(j.history(claimed).map((e) => [e.at, e.to, e.detail])).toEqual([
      [T0 + 1, 'accepted', 'accepted'],
      [T0 + 2, 'dispatched', `seq ${dispatched.seq}`],
      [T0 + 3, 'confirmed', 'OK: readback shows OPEN'],
      [T0 + 4, 'confirmed', 'looked at'],
    ]);
    expect(j.history({ scope: 'plant', key: 'other' })).toHaveLength(1);
  });

  it('after a wrap, never hands out the sequence number of a command still open on the device', () => {
    const j = open();
    const old = dispatch(j, j.claim(command('old')).record, T0, seen, 'pipeline');
    expect(old.seq).toBe(1);
    const raw = new BetterSqlite3(join(dir, 'journal.db'));
    raw.prepare("UPDATE device_seq SET last_seq = 65534 WHERE device = 'inlet-valve'").run();
    raw.close();
    expect(dispatch(j, j.claim(command('x')).record, T0, seen, 'p').seq).toBe(65535);
    // Next would be 1, but `old` is still open with it: its echo would confirm the new one.
    expect(dispatch(j, j.claim(command('y')).record, T0, seen, 'p').seq).toBe(2);
    // Once `old` is settled, 1 is free again at the next wrap.
    j.settle(old, 'dispatched', {
      to: 'failed',
      code: 'READBACK_TIMEOUT',
      faultCode: null,
      observed: null,
      detail: 'x',
      at: T0,
      intake: 'pipeline',
    });
    const raw2 = new BetterSqlite3(join(dir, 'journal.db'));
    raw2.prepare("UPDATE device_seq SET last_seq = 65535 WHERE device = 'inlet-valve'").run();
    raw2.close();
    expect(dispatch(j, j.claim(command('z')).record, T0, seen, 'p').seq).toBe(1);
  });

  it('never allocates the sequence number the controller echoes right now', () => {
    const j = open();
    // A fresh journal in front of a controller that last took sequence number 1.
    const echoing1 = { ...seen, seq: 1 };
    expect(dispatch(j, j.claim(command('a')).record, T0, echoing1, 'p').seq).toBe(2);
    expect(dispatch(j, j.claim(command('b')).record, T0, { ...seen, seq: 3 }, 'p').seq).toBe(4);
  });

  it('guards every transition on the state it expects', () => {
    const j = open();
    const rec = j.claim(command('k1')).record;
    const d = dispatch(j, rec, T0, seen, 'pipeline');
    expect(() => dispatch(j, rec, T0, seen, 'pipeline')).toThrow(JournalConflictError);
    const settlement = {
      to: 'failed' as const,
      code: 'READBACK_TIMEOUT' as const,
      faultCode: null,
      observed: null,
      detail: 'x',
      at: T0,
      intake: 'pipeline',
    };
    expect(() => j.settle(d, 'accepted', settlement)).toThrow(JournalConflictError);
    j.settle(d, 'dispatched', settlement);
    expect(() => j.settle(d, 'dispatched', settlement)).toThrow(JournalConflictError);
  });

  it('re-dispatches a command only from its record as read, and at most MAX_DISPATCHES times', () => {
    const j = open();
    const d = dispatch(j, j.claim(command('k1')).record, T0, seen, 'pipeline');
    const again = j.markRedispatched(d, T0 + 1, 'not applied', 'recovery');
    expect(again.attempts).toBe(2);
    // Made from the same read again (a second worker, a stale record): refused.
    expect(() => j.markRedispatched(d, T0 + 2, 'again', 'recovery')).toThrow(JournalConflictError);
    let latest = again;
    while (latest.attempts < MAX_DISPATCHES) {
      latest = j.markRedispatched(latest, T0 + 3, 'never sent', 'pipeline');
    }
    expect(() => j.markRedispatched(latest, T0 + 4, 'never sent', 'pipeline')).toThrow(
      JournalConflictError,
    );
    expect(j.get(d)?.attempts).toBe(MAX_DISPATCHES);
    // Never one not dispatched.
    const accepted = j.claim(command('k2')).record;
    expect(() => j.markRedispatched(accepted, T0, 'x', 'pipeline')).toThrow(JournalConflictError);
  });

  it('a redispatch decided on a newer read keeps that read as the one the write was judged on', () => {
    const j = open();
    const d = dispatch(j, j.claim(command('k1')).record, T0, seen, 'pipeline');
    const newer = {
      ...seen,
      state: 'STOPPED',
      position: 40,
      readAt: new Date(T0 + 5).toISOString(),
    };
    const again = j.markRedispatched(d, T0 + 6, 'never sent', 'pipeline', newer);
    expect(again).toMatchObject({ attempts: 2, seq: d.seq, observedBefore: newer });
    expect(j.get(d)?.observedBefore).toEqual(newer);
    // Without one, the dispatch's read stays.
    const other = dispatch(j, j.claim(command('k2')).record, T0, seen, 'pipeline');
    expect(j.markRedispatched(other, T0 + 1, 'not applied', 'recovery').observedBefore).toEqual(
      seen,
    );
  });

  it('stores the result once so that every replay is byte-identical, across reopen', () => {
    const path = join(dir, 'journal.db');
    const j = open(path);
    const settled = confirm(j, j.claim(command('k1')).record);
    expect(settled.response).toBe(renderResult(settled));
    j.close();
    const again = open(path);
    const dup = again.claim(command('k1'));
    expect(dup.kind).toBe('duplicate');
    expect(dup.record.response).toBe(settled.response);
    expect(again.history(dup.record).map((e) => e.to)).toEqual([
      'accepted',
      'dispatched',
      'confirmed',
      'confirmed',
    ]);
  });

  it("lists open commands in the journal's order, and filters", () => {
    const j = open();
    j.claim(command('late', { acceptedAt: T0 + 10 }));
    j.claim(command('early', { acceptedAt: T0 }));
    confirm(j, j.claim(command('done', { acceptedAt: T0 + 5, device: 'drain-valve' })).record);
    // In the order they were claimed: 'late' came first, its acceptedAt later only because the
    // clock stepped back before 'early' was claimed (the order the daemon runs them in).
    expect(j.listOpen().map((r) => r.key)).toEqual(['late', 'early']);
    expect(j.list({ device: 'drain-valve' }).map((r) => r.key)).toEqual(['done']);
    expect(j.list({ state: 'accepted', since: T0 + 1 }).map((r) => r.key)).toEqual(['late']);
    // The sweep's light list: the same commands (their claims: key and fingerprint) with device,
    // state, action, in the same order, with their rows' ids in it.
    dispatch(j, { scope: 'plant', key: 'late' }, T0 + 20, seen, 'pipeline');
    const byKey = new Map(j.listOpen().map((r) => [r.key, r]));
    const refs = j.listOpenRefs();
    expect(refs.map(({ id: _, ...ref }) => ref)).toEqual(
      ['late', 'early'].map((key) => {
        const r = byKey.get(key)!;
        return {
          scope: r.scope,
          key: r.key,
          fingerprint: r.fingerprint,
          device: r.device,
          state: r.state,
          action: r.action,
        };
      }),
    );
    expect(refs[0]!.id).toBeLessThan(refs[1]!.id);
    expect(j.listOpenRefs().map((r) => [r.key, r.state])).toEqual([
      ['late', 'dispatched'],
      ['early', 'accepted'],
    ]);
  });
  it('finds the stops of a device journaled after a command, whatever their acceptedAt', () => {
    const j = open();
    const stop = (key: string, acceptedAt: number, device = 'inlet-valve'): void => {
      j.claim(command(key, { action: 'stop', fingerprint: `f-${key}`, acceptedAt, device }));
    };
    j.claim(command('a', { acceptedAt: T0 + 10 }));
    stop('s1', T0); // the gateway's clock stepped back before this stop
    stop('other', T0 + 11, 'drain-valve');
    j.claim(command('b', { acceptedAt: T0 + 12, fingerprint: 'f-b' }));
    stop('s2', T0 + 20);
    const keys = (key: string, limit = 100): string[] =>
      j.stopsAfter({ scope: 'plant', key }, limit).map((r) => r.key);
    expect(keys('a')).toEqual(['s2', 's1']);
    expect(keys('s1')).toEqual(['s2']);
    expect(keys('b')).toEqual(['s2']);
    expect(keys('s2')).toEqual([]);
    expect(keys('a', 1)).toEqual(['s2']);
    expect(keys('unknown')).toEqual([]);
  });
});

describe('retention', () => {
  it('purges settled commands older than the cut-off in bounded batches, never open ones', () => {
    const j = open();
    for (let i = 0; i < 25; i++) confirm(j, j.claim(command(`old-${i}`)).record, T0 + i);
    confirm(j, j.claim(command('recent')).record, T0 + 100_000);
    j.claim(command('open-old', { acceptedAt: T0 - 1e9 }));
    expect(j.purgeSettled(T0 + 50_000, 10)).toEqual({ purged: 10, more: true });
    expect(j.purgeSettled(T0 + 50_000, 10)).toEqual({ purged: 10, more: true });
    expect(j.purgeSettled(T0 + 50_000, 10)).toEqual({ purged: 5, more: false });
    expect(j.purgeSettled(T0 + 50_000, 10)).toEqual({ purged: 0, more: false });
    expect(j.get({ scope: 'plant', key: 'old-0' })).toBeUndefined();
    expect(j.history({ scope: 'plant', key: 'old-0' })).toEqual([]);
    expect(j.get({ scope: 'plant', key: 'recent' })?.state).toBe('confirmed');
    expect(j.get({ scope: 'plant', key: 'open-old' })?.state).toBe('accepted');
    // A purged key is a new command again: that is what the retention window means.
    expect(j.claim(command('old-0')).kind).toBe('new');
  });

  it('ends a purge on its time budget, part way through a long history, and goes on from there', () => {
    const path = join(dir, 'journal.db');
    const j = open(path);
    const retried = confirm(j, j.claim(command('retried')).record, T0 + 10);
    const kept = confirm(j, j.claim(command('kept')).record, T0 + 100_000);
    // A client that retried one key for hours: one duplicate event per retry (as claim()
    // writes them; by SQL, the thousands at once).
    const db = new BetterSqlite3(path);
    try {
      const id = (
        db.prepare('SELECT id FROM commands WHERE key = ?').get('retried') as { id: number }
      ).id;
      const event =
        db.prepare(`INSERT INTO events (command, at, from_state, to_state, intake, detail)
        VALUES (?, ?, 'confirmed', 'confirmed', 'https', 'duplicate')`);
      db.transaction(() => {
        for (let i = 0; i < 1_600; i++) event.run(id, T0 + 20 + i);
      })();
    } finally {
      db.close();
    }
    const events = j.history(retried).length;
    expect(events).toBe(1_603); // accepted, dispatched, confirmed and the duplicates
    const keptHistory = j.history(kept);
    // No time at all: each call deletes one step of the history (500 events) and ends.
    const steps: { purged: number; more: boolean }[] = [];
    for (let left = events; left >= 500; left -= 500) {
      steps.push(j.purgeSettled(T0 + 50_000, 10, 0));
      // Meanwhile the command is there, replayed as it was, with the rest of its history.
      expect(j.get(retried)?.state).toBe('confirmed');
      expect(j.history(retried)).toHaveLength(left - 500);
    }
    expect(steps).toEqual([...Array<unknown>(3)].map(() => ({ purged: 0, more: true })));
    expect(j.purgeSettled(T0 + 50_000, 10, 0)).toEqual({ purged: 1, more: false });
    expect(j.get(retried)).toBeUndefined();
    expect(j.history(retried)).toEqual([]);
    // The command within the window keeps its row and its whole history.
    expect(j.history(kept)).toEqual(keptHistory);
    expect(j.get(kept)?.state).toBe('confirmed');
  });
});

describe('migrations', () => {
  it('brings a new journal to the latest schema with WAL and synchronous=FULL', () => {
    const path = join(dir, 'journal.db');
    open(path);
    const raw = new BetterSqlite3(path);
    expect(raw.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
    expect(raw.pragma('journal_mode', { simple: true })).toBe('wal');
    raw.close();
  });

  it('refuses a journal written by a newer version and leaves it untouched', () => {
    const path = join(dir, 'journal.db');
    const raw = new BetterSqlite3(path);
    raw.exec('CREATE TABLE future (x)');
    raw.pragma(`user_version = ${LATEST_VERSION + 1}`);
    raw.close();
    expect(() => SqliteJournal.open({ path })).toThrow(JournalVersionError);
    const check = new BetterSqlite3(path);
    expect(check.pragma('user_version', { simple: true })).toBe(LATEST_VERSION + 1);
    expect(
      check.prepare("SELECT name FROM sqlite_master WHERE name = 'commands'").get(),
    ).toBeUndefined();
    check.close();
  });

  it("refuses another program's database (no schema version, yet tables) and leaves it byte for byte", () => {
    // journal.path pointed at the wrong file: it was switched to WAL and given the journal's
    // tables beside its own.
    const path = join(dir, 'other.db');
    const raw = new BetterSqlite3(path);
    raw.exec("CREATE TABLE readings (tag TEXT, value REAL); INSERT INTO readings VALUES ('t', 1)");
    raw.close();
    const before = readFileSync(path);
    expect(() => SqliteJournal.open({ path })).toThrow(
      `${path} is not a Sluice journal (it has no schema version, yet holds tables`,
    );
    expect(readFileSync(path).equals(before)).toBe(true);
    expect(existsSync(`${path}-wal`)).toBe(false);
  });

  it('refuses a file that is not an SQLite database, or a damaged one, naming the file, and leaves it as it is', () => {
    const garbage = join(dir, 'garbage.db');
    writeFileSync(garbage, 'not a database\n'.repeat(512));
    // A journal cut short (a copy interrupted, a filesystem repaired): its header promises
    // pages the file no longer holds.
    const cut = join(dir, 'cut.db');
    const j = SqliteJournal.open({ path: cut });
    for (let i = 0; i < 100; i++) j.claim(command(`k${i}`));
    j.close();
    truncateSync(cut, 3 * 4096);
    for (const [path, what] of [
      [garbage, `SQLITE_NOTADB: ${garbage} is not an SQLite database`],
      [cut, `SQLITE_CORRUPT: ${cut} is damaged`],
    ] as const) {
      const before = readFileSync(path);
      let error: unknown = null;
      try {
        SqliteJournal.open({ path }).close();
      } catch (e) {
        error = e;
      }
      expect(error).toBeInstanceOf(JournalUnavailableError);
      expect((error as Error).message).toContain(`journal unavailable (open): ${what}`);
      expect(readFileSync(path).equals(before)).toBe(true);
    }
  });
});

describe('a page damaged under a journal in use', () => {
  it('refuses what needs the page, naming the file and what to do', () => {
    // The daemon checks the journal at its start (integrity.ts); a page that goes bad while it
    // runs (a failing disk) is met by a statement: "SQLITE_CORRUPT" alone named neither.
    const path = join(dir, 'journal.db');
    // One batch (group commit), made durable by the close's checkpoint.
    const j = SqliteJournal.open({ path, groupCommit: true });
    for (let i = 0; i < 2_000; i++) j.claim(command(`key-${i}`));
    j.close();
    const db = new BetterSqlite3(path, { readonly: true });
    const pageSize = db.pragma('page_size', { simple: true }) as number;
    const leaves = db
      .prepare("SELECT pageno FROM dbstat WHERE name = 'commands_key' AND pagetype = 'leaf'")
      .all() as { pageno: number }[];
    db.close();
    const page = leaves[Math.floor(leaves.length / 2)]!.pageno;
    const fd = openSync(path, 'r+');
    writeSync(fd, Buffer.alloc(pageSize, 0x5a), 0, pageSize, (page - 1) * pageSize);
    closeSync(fd);
    const damaged = open(path);
    const advice = `the journal ${path} is damaged; commands that need its damaged pages are refused: stop sluiced, then restore the journal from a backup, or move it aside with its -wal and -shm files`;
    const failures = new Set<string>();
    const fails = (run: () => unknown): boolean => {
      try {
        run();
        return false;
      } catch (error) {
        expect(error).toBeInstanceOf(JournalUnavailableError);
        failures.add((error as Error).message);
        return true;
      }
    };
    // The keys on the damaged page: reading them fails, and so does claiming one again.
    const lost = Array.from({ length: 2_000 }, (_, i) => `key-${i}`).filter((key) =>
      fails(() => damaged.get({ scope: 'plant', key })),
    );
    expect(lost.length).toBeGreaterThan(0);
    expect(fails(() => damaged.claim(command(lost[0]!)))).toBe(true);
    expect([...failures].sort()).toEqual([
      `journal unavailable (claim): SQLITE_CORRUPT: ${advice}`,
      `journal unavailable (read): SQLITE_CORRUPT: ${advice}`,
    ]);
  });
});

describe('a log without its journal', () => {
  it('is refused, and left as it is, rather than discarded under a new empty journal', () => {
    const path = join(dir, 'journal.db');
    open(path).close();
    journals.length = 0;
    // A daemon killed with a commit in the log (not yet checkpointed into the journal).
    const crash = `const D = require('better-sqlite3'); const db = new D(${JSON.stringify(path)}); db.prepare("INSERT INTO meta (key, value) VALUES ('k', 'in the log')").run(); process.kill(process.pid, 'SIGKILL');`;
    expect(() => execFileSync(process.execPath, ['-e', crash], { cwd: ROOT })).toThrow();
    // The journal moved away (a backup, a mistake), its log left behind.
    renameSync(path, `${path}.moved`);
    const log = readFileSync(`${path}-wal`);
    expect(log.length).toBeGreaterThan(0);
    expect(() => SqliteJournal.open({ path })).toThrow(
      `journal unavailable (open): ${path} is missing, but its log ${path}-wal (${log.length} bytes) is there`,
    );
    expect(existsSync(path)).toBe(false);
    expect(readFileSync(`${path}-wal`).equals(log)).toBe(true);
    // Put back, the journal opens with what its log held.
    renameSync(`${path}.moved`, path);
    const j = open(path);
    expect(j.readMeta('k')).toBe('in the log');
  });
});

describe('fail closed (I5)', () => {
  it('refuses a claim within the busy bound while another process holds the write lock', () => {
    const path = join(dir, 'journal.db');
    const j = open(path);
    const other = new BetterSqlite3(path, { timeout: 0 });
    other.exec('BEGIN IMMEDIATE');
    const started = Date.now();
    expect(() => j.claim(command('k1'))).toThrow(JournalUnavailableError);
    expect(Date.now() - started).toBeLessThan(5_000);
    expect(() => {
      j.checkWritable();
    }).toThrow(JournalUnavailableError);
    other.exec('ROLLBACK');
    other.close();
    expect(j.get({ scope: 'plant', key: 'k1' })).toBeUndefined();
    expect(j.claim(command('k1')).kind).toBe('new');
  });

  describe('on a real small filesystem', () => {
    const available = tmpfsAvailable();
    let mnt: string;
    beforeEach(() => {
      mnt = join(dir, 'mnt');
      mkdirSync(mnt);
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=192k', 'tmpfs', mnt]);
    });
    afterEach(() => {
      for (const j of journals.splice(0)) j.close();
      execFileSync('umount', ['-l', mnt]);
    });

    it.runIf(available)('refuses claims when the disk is full and keeps what it had', () => {
      const j = open(join(mnt, 'journal.db'));
      let accepted = 0;
      let refused: unknown = null;
      for (let i = 0; i < 5000 && refused === null; i++) {
        try {
          j.claim(command(`fill-${i}-${'x'.repeat(200)}`));
          accepted++;
        } catch (error) {
          refused = error;
        }
      }
      expect(refused).toBeInstanceOf(JournalUnavailableError);
      expect((refused as JournalUnavailableError).message).toMatch(/SQLITE_FULL|SQLITE_IOERR/);
      expect(accepted).toBeGreaterThan(0);
      expect(j.get({ scope: 'plant', key: `fill-0-${'x'.repeat(200)}` })?.state).toBe('accepted');
    });

    it.runIf(available)(
      'a purge the filesystem has no room for fails on its own: the claims made beside it are kept',
      async () => {
        // A filesystem of its own, larger than the one above: a journal with old commands.
        const big = join(dir, 'big');
        mkdirSync(big);
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', big]);
        try {
          const path = join(big, 'journal.db');
          const j = SqliteJournal.open({ path, busyTimeoutMs: 500, groupCommit: true });
          try {
            const db = new BetterSqlite3(path);
            try {
              const insert = db.prepare(`INSERT INTO commands (scope, key, fingerprint, device,
                action, issued_at, issued_at_source, ttl_ms, deadline, intake, state, code,
                accepted_at, settled_at)
                VALUES ('plant', ?, 'f', 'inlet-valve', 'open', ?, 'issuer', 1000, ?, 'https',
                  'rejected', 'STALE_COMMAND', ?, ?)`);
              const event = db.prepare(`INSERT INTO events (command, at, from_state, to_state,
                intake, detail) VALUES (?, ?, NULL, 'accepted', 'https', 'accepted')`);
              db.transaction(() => {
                for (let i = 0; i < 2_000; i++) {
                  const id = insert.run(
                    `old-${(i * 7919) % 2_000}-${'k'.repeat(40)}`,
                    T0,
                    T0,
                    T0,
                    T0,
                  ).lastInsertRowid;
                  event.run(id, T0);
                }
              })();
              db.pragma('wal_checkpoint(TRUNCATE)');
            } finally {
              db.close();
            }
            // Full, then room for a few pages: a claim's, not a batch of purged commands'.
            const filler = join(big, 'filler');
            fillFilesystem(filler);
            truncateSync(filler, statSync(filler).size - 96 * 1024);
            // One turn: a claim, and the retention purge beside it.
            expect(j.claim(command('beside-the-purge')).kind).toBe('new');
            expect(() => j.purgeSettled(T0 + 1, 500)).toThrow(JournalUnavailableError);
            await j.durable();
            expect(j.get({ scope: 'plant', key: 'beside-the-purge' })?.state).toBe('accepted');
          } finally {
            j.close();
          }
          const reader = SqliteJournal.open({ path, readonly: true });
          try {
            expect(reader.get({ scope: 'plant', key: 'beside-the-purge' })?.state).toBe('accepted');
            expect(reader.list({ state: 'rejected', limit: 5_000 })).toHaveLength(2_000);
          } finally {
            reader.close();
          }
        } finally {
          execFileSync('umount', ['-l', big]);
        }
      },
    );

    it.runIf(available)(
      "short of room, proves a claim's pages of the size the journal has, not of 4 KiB",
      () => {
        // A journal created beforehand with pages of 64 KiB keeps them: a claim's pages are
        // 16 times as large as with 4 KiB, and the proof write must be as large as a claim's.
        const big = join(dir, 'big');
        mkdirSync(big);
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=8m', 'tmpfs', big]);
        try {
          const path = join(big, 'journal.db');
          const db = new BetterSqlite3(path);
          db.pragma('page_size = 65536');
          db.pragma('journal_mode = WAL');
          db.close();
          const j = SqliteJournal.open({ path, busyTimeoutMs: 500 });
          try {
            expect(j.claim(command('before')).kind).toBe('new');
            const check = new BetterSqlite3(path, { readonly: true });
            try {
              expect(check.pragma('page_size', { simple: true })).toBe(65536);
            } finally {
              check.close();
            }
            // 400 KB free: room for six pages of 64 KiB, not for a claim's 8 to 23. The claim
            // is refused, and the proof must be too (sized in pages of 4 KiB, about 94 KB, it
            // fitted, and the journal was called writable).
            const filler = join(big, 'filler');
            fillFilesystem(filler);
            truncateSync(filler, statSync(filler).size - 400 * 1024);
            let proof: unknown = null;
            try {
              j.checkWritable();
            } catch (error) {
              proof = error;
            }
            expect(() => j.claim(command('short-of-room'))).toThrow(/SQLITE_FULL/);
            expect(j.get({ scope: 'plant', key: 'short-of-room' })).toBeUndefined();
            expect(proof).toBeInstanceOf(JournalUnavailableError);
            expect((proof as JournalUnavailableError).message).toMatch(/SQLITE_FULL/);
            // With room, both succeed again.
            rmSync(filler);
            expect(() => {
              j.checkWritable();
            }).not.toThrow();
            expect(j.claim(command('with-room')).kind).toBe('new');
          } finally {
            j.close();
          }
        } finally {
          execFileSync('umount', ['-l', big]);
        }
      },
    );

    it.runIf(available)(
      'short of room, with pages of 1 KiB, proves no more than a claim of them needs',
      () => {
        // A journal created beforehand with pages of 1 KiB keeps them: a claim's pages are a
        // quarter of those of 4 KiB, and a proof of 24 pages of 4 KiB (about 94 KB) failed
        // where a claim fitted: the journal was called unavailable while commands were taken.
        const small = join(dir, 'small');
        mkdirSync(small);
        execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=4m', 'tmpfs', small]);
        try {
          const path = join(small, 'journal.db');
          const db = new BetterSqlite3(path);
          db.pragma('page_size = 1024');
          db.pragma('journal_mode = WAL');
          db.close();
          const j = SqliteJournal.open({ path, busyTimeoutMs: 500 });
          try {
            expect(j.claim(command('before')).kind).toBe('new');
            const filler = join(small, 'filler');
            fillFilesystem(filler);
            // 64 KB free: room for a claim's 8 to 23 pages of 1 KiB and for the proof of 24.
            truncateSync(filler, statSync(filler).size - 64 * 1024);
            expect(() => {
              j.checkWritable();
            }).not.toThrow();
            expect(j.claim(command('short-of-room')).kind).toBe('new');
            expect(j.get({ scope: 'plant', key: 'short-of-room' })?.state).toBe('accepted');
          } finally {
            j.close();
          }
        } finally {
          execFileSync('umount', ['-l', small]);
        }
      },
    );

    it.runIf(available)('refuses to work on a read-only filesystem and keeps what it had', () => {
      const path = join(mnt, 'journal.db');
      const j = open(path);
      expect(j.claim(command('before')).kind).toBe('new');
      j.close();
      // A filesystem with open files cannot be remounted; the kernel's errors=remount-ro can.
      // The gateway restarting on such a filesystem is what the daemon then faces.
      execFileSync('mount', ['-o', 'remount,ro', mnt]);
      let journal: SqliteJournal | null = null;
      try {
        journal = SqliteJournal.open({ path, busyTimeoutMs: 200 });
        journals.push(journal);
        expect(() => journal?.claim(command('after'))).toThrow(JournalUnavailableError);
      } catch (error) {
        expect(error).toBeInstanceOf(JournalUnavailableError);
      }
      for (const opened of journals.splice(0)) opened.close();
      execFileSync('mount', ['-o', 'remount,rw', mnt]);
      const reader = open(path);
      expect(reader.get({ scope: 'plant', key: 'before' })?.state).toBe('accepted');
      expect(reader.get({ scope: 'plant', key: 'after' })).toBeUndefined();
    });

    it.runIf(available)(
      "opened on a filesystem without room for its log's index, says the filesystem is full, not a disk I/O error",
      () => {
        // Every connection to a journal in WAL mode maps a 32 KB shared-memory index (-shm),
        // a reader's too; with less free, SQLite fails SQLITE_IOERR_SHMSIZE, "disk I/O error",
        // which sent an operator after a failing disk when the filesystem was merely full.
        const path = join(mnt, 'journal.db');
        const first = open(path);
        first.claim(command('kept'));
        first.close();
        const filler = join(mnt, 'filler');
        fillFilesystem(filler);
        truncateSync(filler, statSync(filler).size - 8 * 1024);
        const before = readFileSync(path);
        expect(() => SqliteJournal.open({ path })).toThrow(
          `SQLITE_IOERR_SHMSIZE: cannot open ${path}: its log's shared-memory index ${path}-shm (32 KB) cannot be made, its filesystem being full (`,
        );
        expect(readFileSync(path).equals(before)).toBe(true);
        rmSync(filler);
        const j = open(path);
        expect(j.get({ scope: 'plant', key: 'kept' })?.state).toBe('accepted');
      },
    );

    it.runIf(available)(
      'opened on a read-only filesystem, takes writes again once it is writable, without a restart',
      () => {
        const path = join(mnt, 'journal.db');
        open(path).close();
        // A process killed mid-life leaves the WAL and its index behind; with them SQLite opens
        // the journal on a read-only filesystem without an error, as a read-only connection
        // (what a daemon restarted by systemd on such a filesystem gets).
        const crash = `const D = require('better-sqlite3'); const db = new D(${JSON.stringify(path)}); db.prepare('SELECT count(*) FROM commands').get(); process.kill(process.pid, 'SIGKILL');`;
        expect(() => execFileSync(process.execPath, ['-e', crash], { cwd: ROOT })).toThrow();
        execFileSync('mount', ['-o', 'remount,ro', mnt]);
        const j = SqliteJournal.open({ path, busyTimeoutMs: 200, reopenIntervalMs: 0 });
        journals.push(j);
        expect(() => j.claim(command('while-ro'))).toThrow(/SQLITE_READONLY/);
        expect(() => {
          j.checkWritable();
        }).toThrow(JournalUnavailableError);
        // Writable again, and with room for the proof write as large as a claim's that
        // checkWritable() makes on a filesystem short of room (CLAIM_PROOF_PAGES).
        execFileSync('mount', ['-o', 'remount,rw,size=4m', mnt]);
        // The same journal object: its read-only connection is replaced at the next write.
        expect(j.claim(command('after-rw')).kind).toBe('new');
        expect(() => {
          j.checkWritable();
        }).not.toThrow();
        expect(j.get({ scope: 'plant', key: 'while-ro' })).toBeUndefined();
        expect(j.get({ scope: 'plant', key: 'after-rw' })?.state).toBe('accepted');
      },
    );
  });
});
