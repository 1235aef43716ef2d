import { describe, it, type TestContext } from 'vitest';
import { isTerminal } from '../../src/core/command.js';
import { SimHarness } from '../helpers/sim-harness.js';
import { insertOpenCommands } from '../helpers/open-backlog.js';

/**
 * The sweep's pass over the dispatched commands (2257da3) reads, each run, the dispatched
 * commands of a device working off a backlog — among them the one its worker holds, travelling
 * and being confirmed. Taken up beside that worker, a second worker could write it again (I1).
 * Here the sweep runs back to back (a run per turn of the event loop) through the whole life of
 * two written commands on such a device, their end (the barrier of their settlement, when the
 * worker no longer holds them as in flight) included. The real pipeline and SQLite journal
 * against sluice-sim; ground truth: the simulator's write log and the commands' histories.
 */

const BACKLOG = 2_000;

/** Sweeps back to back, a run per turn of the event loop, until stopped; returns the runs. */
function hammer(
  h: SimHarness,
  onTestFinished: TestContext['onTestFinished'],
): () => Promise<number> {
  let sweeps = 0;
  // An object, not a `let`: its change in another closure is not narrowed away.
  const sweeping = { on: true };
  const running = (async () => {
    while (sweeping.on) {
      h.pipeline.sweep();
      sweeps += 1;
      await new Promise<void>((resolve) => setImmediate(resolve));
    }
  })();
  const stop = async (): Promise<number> => {
    sweeping.on = false;
    await running;
    return sweeps;
  };
  onTestFinished(async () => {
    await stop();
  });
  return stop;
}

async function backlogSite(
  onTestFinished: TestContext['onTestFinished'],
  travelMs = 600,
): Promise<SimHarness> {
  const h = await SimHarness.start({ warm: true, travelMs, sweepMs: 600_000 });
  onTestFinished(() => h.close());
  await h.crash();
  // An open of v2, then closes, accepted before the restart in that order (the journal's rows).
  const now = Date.now();
  insertOpenCommands(h.path, [
    { key: 'open', device: 'v2', action: 'open', acceptedAt: now - 1 },
    ...Array.from({ length: BACKLOG }, (_, i) => ({
      key: `close-${i}`,
      device: 'v2',
      action: 'close' as const,
      acceptedAt: now,
    })),
  ]);
  if ((await h.restart()) !== BACKLOG + 1) throw new Error('the backlog not recovered');
  return h;
}

describe('the sweep beside a live worker', () => {
  it('never takes up the dispatched command a worker holds, through its travel and its end, on a device with a backlog', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await backlogSite(onTestFinished);
    const valve = h.device('v2');
    const stopSweeps = hammer(h, onTestFinished);
    // The open travels (a write), then the first close (a write from OPEN); the closes after it
    // are no-ops at CLOSED.
    const open = await h.settled('open', 15_000);
    const close = await h.settled('close-0', 15_000);
    await h.until(
      () => isTerminal(h.get('close-3')?.state ?? 'accepted'),
      10_000,
      'the no-op closes after it',
    );
    expect(await stopSweeps()).toBeGreaterThan(10);
    expect({ open: open.state, close: close.state }).toEqual({
      open: 'confirmed',
      close: 'confirmed',
    });
    // Ground truth: each written once, and nothing else written.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([open.seq, close.seq]);
    // Neither was taken up by the sweep beside its worker.
    for (const key of ['open', 'close-0', 'close-1']) {
      expect(h.notes(key).filter((n) => n.includes('taken up'))).toEqual([]);
    }
  }, 60_000);

  it('a stop that preempts the travelling command goes first, the command interrupted and never taken up beside the stop', async ({
    expect,
    onTestFinished,
  }) => {
    // A travel long enough for the stop to come during it on a loaded machine: with 600 ms the
    // open reached OPEN first now and then (the stop then a no-op at OPEN) when six files ran
    // beside two busy cores. The stop ends the travel, so the test does not wait for it.
    const h = await backlogSite(onTestFinished, 10_000);
    const valve = h.device('v2');
    const stopSweeps = hammer(h, onTestFinished);
    await h.until(() => valve.snapshot().state === 'OPENING', 10_000, 'the open travelling');
    h.submit('stop', { device: 'v2', action: 'stop', ttlMs: 30_000 });
    const stop = await h.settled('stop', 10_000);
    const open = await h.settled('open', 10_000);
    // The closes accepted before the stop, never written: superseded.
    await h.until(
      () => isTerminal(h.get(`close-${BACKLOG - 1}`)?.state ?? 'accepted'),
      20_000,
      'the backlog superseded',
    );
    expect(await stopSweeps()).toBeGreaterThan(10);
    await h.until(() => valve.snapshot().state === 'STOPPED', 5_000, 'the valve STOPPED');
    expect({ stop: stop.state, open: open.state, code: open.code }).toEqual({
      stop: 'confirmed',
      open: 'failed',
      code: 'INTERRUPTED',
    });
    expect(h.get('close-0')).toMatchObject({ state: 'rejected', code: 'SUPERSEDED' });
    // Ground truth: the open and the stop, each once; the valve stopped mid-travel.
    expect(valve.writeLog.map((w) => w.seq)).toEqual([open.seq, stop.seq]);
    // Taken up once, by its own worker once the stop was terminal (preemption.ts, afterStop),
    // never by the sweep beside it. Its write's acknowledgement may not have come yet when the
    // stop preempted it (on a loaded machine): either way, one take-up.
    const takeUps = h.notes('open').filter((n) => n.includes('taken up'));
    expect(takeUps).toHaveLength(1);
    expect(takeUps[0]).toMatch(
      new RegExp(
        `^dispatched: taken up again: sequence number ${String(open.seq)} \\(write (acknowledged|outcome unknown)\\); settling by readback$`,
      ),
    );
  }, 60_000);
});
