import { describe, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A stop on a valve whose queue a client has flooded. A stop supersedes every command queued
 * before it on its device, in its claim's turn, before it is written (SPEC §2: each a journal
 * write, a log line and an announcement): nothing bounded a device's queue, and a stop behind
 * 20,000 queued commands was written seconds later, every device's intake, readbacks and
 * watchdog held meanwhile. A device now takes at most its bound of commands waiting (default
 * 256); past it a new command is refused before it is journaled (DEVICE_QUEUE_FULL), and a stop
 * is always taken.
 *
 * The real pipeline and SQLite journal against sluice-sim. Counted, not timed: with the queue
 * flooded to the bound and a hundred past it, the commands past it are refused and not in the
 * journal, a retry of a key already queued is still answered as its command, and the stop has
 * exactly the bound's commands to supersede before its write; the simulator's write log shows
 * the open and the stop, nothing superseded. A refused key sent again once there is room is a
 * new command.
 */

/** The default bound (pipeline.ts, DEFAULT_MAX_QUEUED_PER_DEVICE). */
const BOUND = 256;
const PAST = 100;

describe('a stop behind a flooded queue on its own device', () => {
  it('supersedes at most the bound: what came past it was refused, unjournaled', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await SimHarness.start({ warm: true, travelMs: 60_000, sweepMs: 600_000 });
    onTestFinished(() => h.close());
    h.submit('open-0', { device: 'v1', action: 'open', ttlMs: 600_000 });
    const t0 = Date.now();
    while (h.device('v1').snapshot().published.state !== 'OPENING') {
      if (Date.now() - t0 > 10_000) throw new Error('v1 not opening');
      await new Promise((r) => setTimeout(r, 5));
    }

    const accepted: string[] = [];
    const refused: { key: string; code: unknown }[] = [];
    for (let i = 0; i < BOUND + PAST; i++) {
      const key = `q-${i}`;
      try {
        const claim = h.submit(key, {
          device: 'v1',
          action: i % 2 ? 'open' : 'close',
          ttlMs: 600_000,
        });
        expect(claim.kind).toBe('new');
        accepted.push(key);
      } catch (error) {
        refused.push({ key, code: (error as { code?: unknown }).code });
      }
    }
    await h.pipeline.durable();
    expect(accepted).toHaveLength(BOUND);
    expect(refused).toHaveLength(PAST);
    expect(new Set(refused.map((r) => r.code))).toEqual(new Set(['DEVICE_QUEUE_FULL']));
    for (const { key } of refused) expect(h.journal.findByKey(key)).toEqual([]);
    // A retry of a key already queued is answered as its command, not refused.
    expect(h.submit('q-0', { device: 'v1', action: 'close', ttlMs: 600_000 }).kind).toBe(
      'duplicate',
    );

    const stop = h.submit('stop-1', { device: 'v1', action: 'stop', ttlMs: 60_000 });
    expect(stop.kind).toBe('new');
    const stopped = await h.settled('stop-1', 30_000);
    expect(stopped.state).toBe('confirmed');
    const open = await h.settled('open-0', 30_000);
    expect(open).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    // What the stop superseded before its write: the bound's commands, no more.
    const superseded = accepted.map((key) => h.journal.findByKey(key)[0]);
    expect(superseded.filter((r) => r?.code === 'SUPERSEDED')).toHaveLength(BOUND);
    expect(h.device('v1').writeLog.map((w) => w.seq)).toEqual([open.seq, stopped.seq]);

    // The queue is free again: a refused key sent again is a new command.
    const again = h.submit(refused[0]!.key, { device: 'v1', action: 'close', ttlMs: 600_000 });
    expect(again.kind).toBe('new');
    expect(h.journal.findByKey(refused[0]!.key)).toHaveLength(1);
  }, 120_000);
});
