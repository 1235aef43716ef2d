import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { CommandRecord, Observation } from '../../src/core/journal.js';
import {
  STUCK_LISTED_PER_DEVICE,
  countOpen,
  summarizeOpen,
  takeUpNote,
  type DeviceTiming,
  type StuckJournal,
  type StuckRule,
} from '../../src/core/open-commands.js';
import { allocateSeq } from '../../src/core/sequence.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { showCommand } from '../../src/views/command-show.js';
import { stuckItems } from '../../src/views/open-commands.js';
import { tempDir } from '../helpers/fixtures.js';

/**
 * The stuck rule (src/core/open-commands.ts), on a real journal file: the daemon (/readyz,
 * /metrics) and the readers of the journal alone (sluicectl stuck, the status page) use it
 * alike, so it goes by the journal only. A command is stuck past its deadline plus its confirm
 * timeout, or past the window its device's history gives: a take-up by recovery, a pause for a
 * stop (SPEC §2: "stop is not queued behind travel"). It reads histories only where they can
 * matter: for a device with a command past its deadline plus confirm timeout.
 */

const NOW = Date.parse('2026-12-03T12:00:00.000Z');
const C = 10_000;
const GRACE = 15_000;
const BEFORE: Observation = {
  state: 'CLOSED',
  position: 0,
  seq: 0,
  faultCode: null,
  sourceTime: new Date(NOW - 120_000).toISOString(),
  readAt: new Date(NOW - 120_000).toISOString(),
};

let journal: SqliteJournal;
let cleanup: () => void;

beforeEach(() => {
  let dir: string;
  ({ dir, cleanup } = tempDir('sluice-open-commands-'));
  journal = SqliteJournal.open({ path: join(dir, 'journal.db') });
});

afterEach(() => {
  journal.close();
  cleanup();
});

function claim(
  key: string,
  device: string,
  deadline: number,
  action: 'open' | 'stop' = 'open',
): CommandRecord {
  return journal.claim({
    scope: 'plant',
    key,
    fingerprint: `f-${key}`,
    device,
    action,
    position: null,
    issuedAt: deadline - 30_000,
    issuedAtSource: 'issuer',
    ttlMs: 30_000,
    deadline,
    intake: 'https',
    acceptedAt: deadline - 30_000,
  }).record;
}

function dispatch(record: CommandRecord, at: number): CommandRecord {
  return journal.markDispatched(record, at, BEFORE, 'pipeline', (last, open) =>
    allocateSeq(last, BEFORE.seq, open),
  );
}

/** A configured device's lengths: its confirm timeout, its PLC's unreachable grace. */
function timing(graceMs = GRACE): DeviceTiming {
  return { confirmTimeoutMs: C, unreachableGraceMs: graceMs };
}

function rule(
  journalView: StuckJournal = journal,
  devices = new Map([['v1', timing()]]),
): StuckRule {
  return { devices, journal: journalView };
}

function stuckAt(now: number): { key: string; overdueMs: number; reason: string }[] {
  return summarizeOpen(journal.listOpen(), now, rule()).stuck.map((s) => ({
    key: s.key,
    overdueMs: s.overdueMs,
    reason: s.reason,
  }));
}

describe('summarizeOpen', () => {
  it('reads no history while nothing is past its bound, and only the overdue device after', () => {
    dispatch(claim('a', 'v1', NOW), NOW - 29_000);
    dispatch(claim('b', 'v2', NOW - 5_000), NOW - 34_000);
    const asked: string[] = [];
    const counting: StuckJournal = {
      history: (r) => {
        asked.push(r.key);
        return journal.history(r);
      },
      stopsAfter: (r, limit) => {
        asked.push(`stops:${r.key}`);
        return journal.stopsAfter(r, limit);
      },
    };
    const timeouts = new Map([
      ['v1', timing()],
      ['v2', timing()],
    ]);
    expect(summarizeOpen(journal.listOpen(), NOW, rule(counting, timeouts)).stuck).toEqual([]);
    expect(asked).toEqual([]);
    const late = summarizeOpen(journal.listOpen(), NOW + 10_000, rule(counting, timeouts)).stuck;
    expect(late.map((s) => s.key)).toEqual(['b']);
    expect(asked.length).toBeGreaterThan(0);
    expect(asked.every((k) => k.endsWith('b'))).toBe(true);
  });

  it('counts a command recovery took up from its take-up window, and says so', () => {
    const late = dispatch(claim('late', 'v1', NOW - 60_000), NOW - 89_000);
    // Never taken up: from its deadline plus confirm timeout.
    expect(stuckAt(NOW)).toEqual([
      { key: 'late', overdueMs: 50_000, reason: 'its deadline plus its 10 s confirm timeout' },
    ]);
    journal.note(late, NOW - 5_000, takeUpNote(late.seq ?? 0, null), 'pipeline');
    // Taken up 5 s ago: within the window (the longest of 10 s and the 15 s grace).
    expect(stuckAt(NOW)).toEqual([]);
    // The window ended 5 s ago.
    expect(stuckAt(NOW + 15_000)).toEqual([
      {
        key: 'late',
        overdueMs: 5_000,
        reason: `its take-up by readback (taken up ${new Date(NOW - 5_000).toISOString()}; read for 15 s)`,
      },
    ]);
  });

  it("reads each device's take-up for its own PLC's grace, the confirm timeout at least", () => {
    // Deadlines long past, all taken up 20 s ago: on v1 a PLC that needs 50 s to come back, on
    // v2 the default 15 s, on v3 a 2 s grace (under the 10 s confirm timeout, which stands).
    for (const device of ['v1', 'v2', 'v3']) {
      const r = dispatch(claim(`late-${device}`, device, NOW - 60_000), NOW - 89_000);
      journal.note(r, NOW - 20_000, takeUpNote(r.seq ?? 0, null), 'pipeline');
    }
    const devices = new Map([
      ['v1', timing(50_000)],
      ['v2', timing()],
      ['v3', timing(2_000)],
    ]);
    const stuck = (now: number): { key: string; overdueMs: number; reason: string }[] =>
      summarizeOpen(journal.listOpen(), now, rule(journal, devices)).stuck.map((s) => ({
        key: s.key,
        overdueMs: s.overdueMs,
        reason: s.reason,
      }));
    const takenUp = new Date(NOW - 20_000).toISOString();
    expect(stuck(NOW)).toEqual([
      {
        key: 'late-v3',
        overdueMs: 10_000,
        reason: `its take-up by readback (taken up ${takenUp}; read for 10 s)`,
      },
      {
        key: 'late-v2',
        overdueMs: 5_000,
        reason: `its take-up by readback (taken up ${takenUp}; read for 15 s)`,
      },
    ]);
    // v1's worker reads on for 50 s from its take-up: not stuck until then, and then it is.
    expect(stuck(NOW + 30_000).map((s) => s.key)).not.toContain('late-v1');
    expect(stuck(NOW + 31_000)).toContainEqual({
      key: 'late-v1',
      overdueMs: 1_000,
      reason: `its take-up by readback (taken up ${takenUp}; read for 50 s)`,
    });
    // The views (sluicectl stuck, show, the status page) judge alike, and show the grace.
    const items = stuckItems(journal.listOpen(), 0, NOW, devices, journal);
    expect(items.map((i) => [i.key, i.stuck, i.unreachableGraceMs])).toEqual([
      ['late-v1', false, 50_000],
      ['late-v2', true, 15_000],
      ['late-v3', true, 2_000],
    ]);
  });

  it('holds a command a stop paused until the stop is stuck, but not the stop itself', () => {
    // Dispatched with a short deadline; the stop came while it travelled.
    const moving = dispatch(claim('moving', 'v1', NOW - 20_000), NOW - 49_000);
    const stop = dispatch(claim('stop-1', 'v1', NOW - 5_000, 'stop'), NOW - 34_000);
    const behind = claim('behind', 'v1', NOW - 12_000);
    // Past its own deadline plus confirm timeout (10 s ago), but its stop is still within its
    // own bound: it waits for the stop, then is read again for 15 s.
    expect(stuckAt(NOW)).toEqual([]);
    // The stop past its own bound (deadline + 10 s): the stop is stuck, and so, 15 s later, the
    // command it paused and the one behind it.
    expect(stuckAt(NOW + 6_000).map((s) => s.key)).toEqual(['stop-1']);
    const paused = `its pause for the stop stop-1 (the stop's deadline plus its 10 s confirm timeout, then 15 s to settle it by readback)`;
    expect(stuckAt(NOW + 21_000)).toEqual([
      { key: 'stop-1', overdueMs: 16_000, reason: 'its deadline plus its 10 s confirm timeout' },
      { key: 'moving', overdueMs: 1_000, reason: paused },
      {
        key: 'behind',
        overdueMs: 1_000,
        reason: `the pause for the stop stop-1 of moving, which it waits behind on its device (the stop's deadline plus its 10 s confirm timeout, then 15 s to settle it by readback)`,
      },
    ]);
    // The stop settles: the paused command is taken up again from then (its note follows).
    journal.settle(stop, 'dispatched', {
      to: 'confirmed',
      code: 'OK',
      faultCode: null,
      observed: null,
      detail: 'readback after the write shows STOPPED',
      at: NOW + 22_000,
      intake: 'pipeline',
    });
    expect(stuckAt(NOW + 30_000)).toEqual([]);
    journal.note(moving, NOW + 23_000, takeUpNote(moving.seq ?? 0, { acked: true }), 'pipeline');
    expect(stuckAt(NOW + 37_000)).toEqual([]);
    expect(stuckAt(NOW + 40_000)).toEqual([
      {
        key: 'moving',
        overdueMs: 2_000,
        reason: `its take-up by readback (taken up ${new Date(NOW + 23_000).toISOString()}; read for 15 s)`,
      },
      {
        key: 'behind',
        overdueMs: 2_000,
        reason: `the take-up by readback of moving, which it waits behind on its device (taken up ${new Date(NOW + 23_000).toISOString()}; read for 15 s)`,
      },
    ]);
    expect(behind.state).toBe('accepted');
  });

  it('is not held by a stop refused at the door, however many come', () => {
    dispatch(claim('late', 'v1', NOW - 60_000), NOW - 89_000);
    for (const key of ['forbidden-1', 'forbidden-2']) {
      journal.claim(
        {
          scope: 'desk',
          key,
          fingerprint: `f-${key}`,
          device: 'v1',
          action: 'stop',
          position: null,
          issuedAt: NOW - 2_000,
          issuedAtSource: 'issuer',
          ttlMs: 30_000,
          deadline: NOW + 28_000,
          intake: 'https',
          acceptedAt: NOW - 2_000,
        },
        { code: 'FORBIDDEN_DEVICE', detail: 'this identity may not command v1' },
      );
    }
    expect(stuckAt(NOW)).toEqual([
      { key: 'late', overdueMs: 50_000, reason: 'its deadline plus its 10 s confirm timeout' },
    ]);
  });

  it('counts a device not in the configuration from its deadline, whatever its history', () => {
    const orphan = dispatch(claim('orphan', 'gone', NOW - 60_000), NOW - 89_000);
    journal.note(orphan, NOW - 5_000, takeUpNote(orphan.seq ?? 0, null), 'pipeline');
    expect(stuckAt(NOW)).toEqual([
      {
        key: 'orphan',
        overdueMs: 60_000,
        reason: 'its deadline (its device is not in the configuration: no worker can settle it)',
      },
    ]);
  });
});

describe('countOpen', () => {
  it("counts a configured device's backlog past its bound as the rule judges it, windows and the stop that made one included", () => {
    // Accepted ones past their deadline plus confirm timeout, more than are handed over.
    const BACKLOG = 3 * STUCK_LISTED_PER_DEVICE;
    for (let i = 0; i < BACKLOG; i++) claim(`late-${i}`, 'v1', NOW - 60_000 + i * 10);
    // A stop came while `moving` travelled: it holds every other one of v1 for its pause, and
    // is itself (accepted, the latest deadline of all) past its bound first.
    dispatch(claim('moving', 'v1', NOW - 20_000), NOW - 49_000);
    claim('stop-1', 'v1', NOW - 5_000, 'stop');
    const at = (now: number): { count: number; keys: string[]; reference: string[] } => {
      const summary = countOpen(journal, now, rule());
      const reference = summarizeOpen(journal.listOpen(), now, rule());
      expect(summary.stuckCount).toBe(reference.stuckCount);
      expect(summary.stuck.length).toBeLessThanOrEqual(STUCK_LISTED_PER_DEVICE + 2);
      for (const s of summary.stuck) expect(reference.stuck).toContainEqual(s);
      return {
        count: summary.stuckCount,
        keys: summary.stuck.map((s) => s.key),
        reference: reference.stuck.map((s) => s.key),
      };
    };
    // Held by the stop's pause; the stop within its own bound.
    expect(at(NOW).count).toBe(0);
    // The stop past its bound, the others still held by its pause: the stop alone, though it
    // is not among the most overdue by deadline.
    expect(at(NOW + 6_000)).toEqual({ count: 1, keys: ['stop-1'], reference: ['stop-1'] });
    // The pause over: every one of them.
    const all = at(NOW + 21_000);
    expect(all.count).toBe(BACKLOG + 2);
    expect(all.keys.slice(0, STUCK_LISTED_PER_DEVICE)).toEqual(
      all.reference.slice(0, STUCK_LISTED_PER_DEVICE),
    );
  });
});

describe('stuckItems', () => {
  it('lists the commands asked for, judged beside their device', () => {
    dispatch(claim('moving', 'v1', NOW - 20_000), NOW - 49_000);
    dispatch(claim('stop-1', 'v1', NOW - 5_000, 'stop'), NOW - 34_000);
    const items = stuckItems(
      journal.listOpen(),
      0,
      NOW + 21_000,
      new Map([['v1', timing()]]),
      journal,
      (r) => r.key === 'moving',
    );
    expect(items.map((i) => [i.key, i.stuck, i.overdueMs, i.stuckReason])).toEqual([
      [
        'moving',
        true,
        1_000,
        `its pause for the stop stop-1 (the stop's deadline plus its 10 s confirm timeout, then 15 s to settle it by readback)`,
      ],
    ]);
    // Without a configuration: from its deadline, and the reason says why.
    const bare = stuckItems(journal.listOpen(), 0, NOW, null, journal);
    expect(bare.map((i) => [i.key, i.stuckReason])).toEqual([
      ['moving', 'its deadline (no configuration: its confirm timeout is unknown)'],
      ['stop-1', 'its deadline (no configuration: its confirm timeout is unknown)'],
    ]);
  });
});

describe('what an open command waits behind', () => {
  it("follows the journal's order, not accepted_at, across a step back of the gateway's clock", () => {
    // first came in, then the gateway's clock was stepped back a minute, then second: the
    // daemon runs first, then second (the journal's order); accepted_at says the opposite.
    const first = claim('first', 'v1', NOW + 30_000);
    const second = claim('second', 'v1', NOW - 30_000);
    expect(second.acceptedAt).toBeLessThan(first.acceptedAt);
    claim('third', 'v1', NOW + 20_000);
    expect(journal.listOpen().map((r) => r.key)).toEqual(['first', 'second', 'third']);

    // Listed oldest first by accepted_at, as an operator reads a list; what each waits behind
    // is the journal's order.
    const behind = (items: ReturnType<typeof stuckItems>): [string, string[], number][] =>
      items.map((i) => [i.key, i.waitsBehind.map((a) => a.key), i.waitsBehindCount]);
    expect(behind(stuckItems(journal.listOpen(), 0, NOW, null, journal))).toEqual([
      ['second', ['first'], 1],
      ['third', ['first', 'second'], 2],
      ['first', [], 0],
    ]);

    // sluicectl show: the command in its place among its device's open commands.
    const timings = (): Map<string, DeviceTiming> => new Map([['v1', timing()]]);
    expect(showCommand(second, journal, NOW, timings).open?.waitsBehind.map((a) => a.key)).toEqual([
      'first',
    ]);
    expect(showCommand(first, journal, NOW, timings).open?.waitsBehind).toEqual([]);

    // A stop written after the first (dispatched at once) holds the device for those queued.
    const stop = dispatch(claim('stop-1', 'v1', NOW - 40_000, 'stop'), NOW);
    expect(stop.state).toBe('dispatched');
    expect(behind(stuckItems(journal.listOpen(), 0, NOW, null, journal))).toEqual([
      ['stop-1', [], 0],
      ['second', ['stop-1', 'first'], 2],
      ['third', ['stop-1', 'first', 'second'], 3],
      ['first', ['stop-1'], 1],
    ]);
  });

  it('a stop pauses the command in flight from its acceptance, travel or a stop', () => {
    const behind = (): [string, string, string[]][] =>
      stuckItems(journal.listOpen(), 0, NOW, null, journal).map((i) => [
        i.key,
        i.state,
        i.waitsBehind.map((a) => `${a.key} (${a.state})`),
      ]);
    // Travel written, then a stop whose read of the device is still to come: the stop took the
    // travel over at its claim (Preemption.stopPreempts), so the travel waits for it.
    dispatch(claim('moving', 'v1', NOW + 20_000), NOW - 2_000);
    claim('stop-a', 'v1', NOW + 25_000, 'stop');
    expect(behind()).toEqual([
      ['moving', 'dispatched', ['stop-a (accepted)']],
      ['stop-a', 'accepted', []],
    ]);

    // A stop in flight, then another stop not written yet: the later one took the first over at
    // its claim when the first's effect was not seen (Preemption.stopOvertakes; always after a
    // restart), and a first whose effect is seen settles at its next readback: the first is
    // said to be paused, the later one to wait behind nothing (stop-waits-behind.test.ts has
    // the pipeline do it).
    const first = dispatch(claim('stop-1', 'v2', NOW + 20_000, 'stop'), NOW - 2_000);
    const second = claim('stop-2', 'v2', NOW + 25_000, 'stop');
    const onV2 = (): [string, string, string[]][] =>
      behind().filter(([k]) => k.startsWith('stop-') && k !== 'stop-a');
    expect(onV2()).toEqual([
      ['stop-1', 'dispatched', ['stop-2 (accepted)']],
      ['stop-2', 'accepted', []],
    ]);
    dispatch(second, NOW - 1_000);
    expect(onV2()).toEqual([
      ['stop-1', 'dispatched', ['stop-2 (dispatched)']],
      ['stop-2', 'dispatched', []],
    ]);
    expect(first.state).toBe('dispatched');
  });
});
