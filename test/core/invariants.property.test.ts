import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { isTerminal } from '../../src/core/command.js';
import type { CommandRecord } from '../../src/core/journal.js';
import { Harness } from '../helpers/pipeline-harness.js';

/**
 * Random interleavings of duplicate submissions (over both intakes), crashes (the journal closed
 * under a running pipeline, then reopened with recovery), unknown write outcomes and readbacks.
 * Whatever happens: no key ever causes more than one write to reach a controller (I1), and no
 * command is confirmed without a readback taken after its write that shows it (I2).
 */

// A fixed payload per key: same key, same fingerprint (duplicates, never reuse).
const KEYS: readonly { key: string; body: Record<string, unknown> }[] = [
  { key: 'k0', body: { device: 'v1', action: 'open' } },
  { key: 'k1', body: { device: 'v1', action: 'close' } },
  { key: 'k2', body: { device: 'v1', action: 'stop' } },
  { key: 'k3', body: { device: 'v2', action: 'open' } },
  { key: 'k4', body: { device: 'v2', action: 'close' } },
  { key: 'k5', body: { device: 'a1', action: 'move', position: 30 } },
  { key: 'k6', body: { device: 'a1', action: 'move', position: 70 } },
];

type Op =
  | { kind: 'submit'; key: number; intake: 'https' | 'mqtt' }
  | { kind: 'crash' }
  | { kind: 'wait'; ms: number }
  | { kind: 'dropReply'; device: 'v1' | 'v2' | 'a1' }
  | { kind: 'loseWrite'; device: 'v1' | 'v2' | 'a1' }
  | { kind: 'failReads'; device: 'v1' | 'v2' | 'a1'; n: number }
  | { kind: 'hold'; device: 'v1' | 'v2' | 'a1'; ms: number }
  | { kind: 'freeze'; device: 'v1' | 'v2' | 'a1'; ms: number }
  | { kind: 'local'; device: 'v1' | 'v2' | 'a1'; ms: number };

const device = fc.constantFrom('v1' as const, 'v2' as const, 'a1' as const);
const op: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('submit' as const),
      key: fc.integer({ min: 0, max: KEYS.length - 1 }),
      intake: fc.constantFrom('https' as const, 'mqtt' as const),
    }),
  },
  { weight: 1, arbitrary: fc.constant({ kind: 'crash' as const }) },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('wait' as const),
      ms: fc.integer({ min: 0, max: 40 }),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('dropReply' as const), device }) },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('loseWrite' as const), device }) },
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('failReads' as const),
      device,
      n: fc.integer({ min: 1, max: 4 }),
    }),
  },
  // A slow scan: the controller takes commands late, but within the redispatch guard.
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('hold' as const),
      device,
      ms: fc.integer({ min: 1, max: 20 }),
    }),
  },
  // A frozen status block: readbacks repeat an old value with its old source time.
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('freeze' as const),
      device,
      ms: fc.integer({ min: 1, max: 60 }),
    }),
  },
  // A local operator takes the device for a while and moves it by hand.
  {
    weight: 1,
    arbitrary: fc.record({
      kind: fc.constant('local' as const),
      device,
      ms: fc.integer({ min: 1, max: 60 }),
    }),
  },
);

function forAWhile(ms: number, on: () => void, off: () => void, timers: NodeJS.Timeout[]): void {
  on();
  timers.push(setTimeout(off, ms));
}

async function run(ops: Op[]): Promise<void> {
  const h = new Harness({
    travelMs: 25,
    timing: { confirmTimeoutMs: 300, redispatchGuardMs: 40, mismatchGraceMs: 30 },
  });
  const timers: NodeJS.Timeout[] = [];
  try {
    for (const o of ops) {
      switch (o.kind) {
        case 'submit': {
          const { key, body } = KEYS[o.key]!;
          const out = h.submit(key, body, { intake: o.intake });
          expect(out.kind).not.toBe('reused');
          break;
        }
        case 'crash':
          await h.crash();
          h.restart();
          break;
        case 'wait':
          await new Promise((r) => setTimeout(r, o.ms));
          break;
        case 'dropReply':
          h.double(o.device).faults.dropReplies++;
          break;
        case 'loseWrite':
          h.double(o.device).faults.loseWrites++;
          break;
        case 'failReads':
          h.double(o.device).faults.failReads += o.n;
          break;
        case 'hold': {
          const d = h.double(o.device);
          forAWhile(
            o.ms,
            () => (d.faults.holdCommands = true),
            () => (d.faults.holdCommands = false),
            timers,
          );
          break;
        }
        case 'freeze': {
          const d = h.double(o.device);
          forAWhile(
            o.ms,
            () => (d.faults.frozen = true),
            () => (d.faults.frozen = false),
            timers,
          );
          break;
        }
        case 'local': {
          const d = h.double(o.device);
          forAWhile(
            o.ms,
            () => {
              d.setLocal(true);
              // By hand, the operator drives it to the other end.
              d.position = d.position > 50 ? 0 : 100;
            },
            () => {
              d.setLocal(false);
            },
            timers,
          );
          break;
        }
      }
    }
    // Let everything settle: each device works through its queue (bounded).
    const end = Date.now() + 10_000;
    const open = (): CommandRecord[] => h.journal.listOpen();
    while (open().length > 0 && Date.now() < end) {
      const stuck = open().every((r) =>
        h.journal.history(r).some((e) => e.detail.includes('left open')),
      );
      if (stuck) break;
      await new Promise((r) => setTimeout(r, 10));
    }

    const records = h.journal.list({ limit: 10_000 });
    for (const record of records) {
      const d = h.double(record.device);
      // I1: at most one write with this command's sequence number reached the controller.
      if (record.seq !== null) expect(d.writesWithSeq(record.seq)).toBeLessThanOrEqual(1);
      else expect(record.state === 'dispatched').toBe(false);
      if (record.state !== 'confirmed') continue;
      if (record.seq === null) {
        // A confirmed no-op: nothing was written for it.
        expect(record.dispatchedAt).toBeNull();
        continue;
      }
      // I2: a readback after the write, showing this command's echo and the confirmed state.
      const write = d.writes.find((w) => w.seq === record.seq);
      expect(write).toBeDefined();
      expect(record.observed?.seq).toBe(record.seq);
      const proof = d.reads.some(
        (r) => r.at >= write!.at && r.seq === record.seq && r.state === record.observed?.state,
      );
      expect(proof).toBe(true);
    }
    // Sequence numbers are never reused for two keys of one device.
    for (const id of ['v1', 'v2', 'a1']) {
      const seqs = records.filter((r) => r.device === id && r.seq !== null).map((r) => r.seq);
      expect(new Set(seqs).size).toBe(seqs.length);
    }
    // Whatever is still open is a journaled, explained leftover, never silently lost.
    for (const r of records.filter((x) => !isTerminal(x.state))) {
      expect(h.journal.history(r).length).toBeGreaterThan(0);
    }
  } finally {
    for (const t of timers) clearTimeout(t);
    await h.close();
  }
}

describe('invariants under random interleavings', () => {
  it('I1 and I2 hold with duplicates, crashes, lost writes, dropped replies and failed reads', async () => {
    await fc.assert(fc.asyncProperty(fc.array(op, { minLength: 1, maxLength: 25 }), run), {
      numRuns: 30,
      interruptAfterTimeLimit: 60_000,
    });
  }, 120_000);
});
