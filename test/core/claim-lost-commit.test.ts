import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { performance } from 'node:perf_hooks';
import { afterEach, describe, it } from 'vitest';
import { commitFaults } from '../helpers/commit-faults.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A command whose claim is lost with its batch at the batch's COMMIT, after its device had taken
 * it up and settled it: with an fdatasync running, the batch stays open across turns of the
 * event loop (group commit), and a no-op (the valve already where the command wants it) is
 * decided and journaled in it before it commits. The COMMIT fails; the claim's barrier fails
 * (the intake refuses: 503, no PUBACK), and so does the barrier the worker awaits for the
 * settlement. The worker left the command to the sweep (a second in the daemon), which then
 * found it gone: meanwhile the device took nothing (every command after it waited) and a
 * request waiting for its outcome was not answered. Now the worker reads that the claim is gone
 * and the device moves on at once.
 *
 * The pipeline and SQLite journal against sluice-sim. Two doubles, for what no filesystem here
 * times on demand: fs.fdatasync held 300 ms (the barrier in flight that keeps the batch open),
 * and the failure of exactly that COMMIT (test/helpers/commit-faults.ts). The sweep is held off
 * (600 s), so that what moves the device is the worker. Ground truth: the simulator's write log
 * and state, and the journal.
 */

/**
 * How long the waiter waits at most (its end), and how long the test gives it to be answered:
 * far apart, so that an answer in time can only be the wake at the loss — not its end, nor the
 * sweep (600 s) — however long the loss itself took on a loaded machine (597 ms once, when this
 * was a 500 ms bound).
 */
const WAIT_MS = 60_000;
const ANSWERED_WITHIN_MS = 20_000;

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

function holdFdatasync(ms: number): () => void {
  const real = fs.fdatasync;
  fs.fdatasync = ((fd: number, callback: (error: NodeJS.ErrnoException | null) => void) => {
    setTimeout(() => {
      real(fd, callback);
    }, ms);
  }) as typeof fs.fdatasync;
  syncBuiltinESMExports();
  return () => {
    fs.fdatasync = real;
    syncBuiltinESMExports();
  };
}

describe('a claim lost at its COMMIT with its settlement', () => {
  it('does not hold its device until the sweep, and its waiter is answered at once', async ({
    expect,
  }) => {
    h = await SimHarness.start({ sweepMs: 600_000 });
    const sim = h;
    const valve = sim.device('v1');
    sim.submit('a', { device: 'v1', action: 'open' });
    const a = await sim.settled('a');
    expect(valve.snapshot().state).toBe('OPEN');
    const faults = commitFaults(sim.journal);
    const restore = holdFdatasync(300);
    let lostAt: number;
    let waited: Promise<[unknown, number]>;
    try {
      // A barrier in flight: the batches after it stay open until it returns.
      sim.submit('b', { device: 'v2', action: 'open' });
      const first = sim.pipeline.durable();
      await new Promise((r) => setTimeout(r, 20));
      faults.failNext();
      const start = performance.now();
      sim.submit('x', { device: 'v1', action: 'open' });
      waited = sim.pipeline
        .waitForSettled({ scope: 'plant', key: 'x' }, WAIT_MS)
        .then((r) => [r, performance.now() - start]);
      // The claim's barrier: refused, as the intake would refuse it.
      await expect(sim.pipeline.durable()).rejects.toThrow(/journal unavailable \(commit\)/);
      lostAt = performance.now() - start;
      await first;
    } finally {
      restore();
    }
    expect(faults.failed).toBe(1);
    expect(sim.journal.get({ scope: 'plant', key: 'x' })).toBeUndefined();
    // The waiter is woken with nothing (an HTTPS request answers 503), not at its end.
    let late: NodeJS.Timeout | undefined;
    const [found, after] = await Promise.race([
      waited,
      new Promise<never>((_, reject) => {
        late = setTimeout(() => {
          reject(new Error(`the waiter was not answered within ${ANSWERED_WITHIN_MS} ms`));
        }, ANSWERED_WITHIN_MS);
      }),
    ]).finally(() => {
      clearTimeout(late);
    });
    expect(found).toBeUndefined();
    expect(after).toBeLessThan(lostAt + ANSWERED_WITHIN_MS);
    // The device takes the next command without a sweep (600 s): written once, confirmed.
    sim.submit('y', { device: 'v1', action: 'close' });
    const y = await sim.settled('y', ANSWERED_WITHIN_MS);
    expect(y).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, y.seq]);
    expect(valve.snapshot().state).toBe('CLOSED');
    await sim.settled('b');
    expect(sim.journal.listOpen().map((r) => r.key)).toEqual([]);
  }, 90_000);
});
