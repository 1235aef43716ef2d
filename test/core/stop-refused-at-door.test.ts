import { afterEach, describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A stop refused at the door — its identity may not command the device (403
 * `FORBIDDEN_DEVICE`), or it is stale (`STALE_COMMAND`) — preempted nothing, and is journaled
 * rejected in its claim's own commit. It must not count as a stop that came after a command:
 * the command whose write was lost and proven not applied is written once more as it would be
 * without it (one re-dispatch, I1). Counted, another identity's refused stop made an
 * authorised open end `failed` ("the stop … followed it, so it is not written again").
 *
 * sluice-sim, the real pipeline and SQLite journal. The lost write is the simulator's own fault
 * (the connection reset before the write reaches the controller). Ground truth: the simulator's
 * write log, the journal's rows.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/** An open whose first write is lost, dispatched; `refuse` sends the stop refused at the door. */
async function lostWriteThen(refuse: (sim: SimHarness) => CommandRecord): Promise<void> {
  h = await SimHarness.start({ warm: true });
  const sim = h;
  const valve = sim.device('v1');
  valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
  sim.submit('k1', { device: 'v1', action: 'open' });
  await sim.until(() => sim.get('k1')?.state === 'dispatched', 5_000, 'the open dispatched');
  const stop = refuse(sim);
  // Rejected in its claim's own commit: never accepted, never dispatched.
  expect(stop).toMatchObject({ state: 'rejected', dispatchedAt: null });
  expect(stop.settledAt).toBe(stop.acceptedAt);
  const r = await sim.settled('k1');
  expect(r).toMatchObject({ state: 'confirmed', attempts: 2 });
  // Its one write that may have left was proven not applied; the second is the one taken.
  expect(valve.writeLog.map((w) => w.seq)).toEqual([r.seq]);
  expect(valve.snapshot().published.state).toBe('OPEN');
}

describe('a stop refused at the door is no stop after a command', () => {
  it("another identity's stop, forbidden on the device", async () => {
    await lostWriteThen((sim) => {
      const claim = sim.submit(
        'intruder-stop',
        { device: 'v1', action: 'stop' },
        { identity: { scope: 'other', devices: new Set(['v2']) } },
      );
      expect(claim.kind).toBe('new');
      const stop = sim.get('intruder-stop', 'other');
      expect(stop).toMatchObject({ code: 'FORBIDDEN_DEVICE' });
      return stop!;
    });
  }, 30_000);

  it('a stale stop (a broker held it past its deadline)', async () => {
    await lostWriteThen((sim) => {
      sim.submit('stale-stop', {
        device: 'v1',
        action: 'stop',
        issuedAt: new Date(Date.now() - 3_600_000).toISOString(),
        ttlMs: 30_000,
      });
      const stop = sim.get('stale-stop');
      expect(stop).toMatchObject({ code: 'STALE_COMMAND' });
      return stop!;
    });
  }, 30_000);
});
