import { afterEach, describe, expect, it } from 'vitest';
import { commitFaults } from '../helpers/commit-faults.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A claim lost with its batch (its COMMIT failed) while its command waited in its device's
 * queue, its key then claimed again for a command on another device (a reuse of the key sent at
 * QoS 1 and redelivered, a client's own reuse): the first device's queue holds the lost claim,
 * not the key. The queue held the key alone, and the first device's worker, coming to it, read
 * the key's row — the other device's command — and carried it out on its own driver: v1 closed
 * by "close v2", that record confirmed from v1's readbacks with a sequence number from v2's
 * count; and a stop on v1 superseded v2's command. Now the entry is dropped as a lost claim, and
 * the other command runs on its own device by its own claim.
 *
 * The pipeline and SQLite journal against sluice-sim (two valves, 1.5 s strokes: a command
 * queued behind a stroke waits in the queue). One double, for what no filesystem here times on
 * demand: the failure of exactly one COMMIT (test/helpers/commit-faults.ts: an I/O error that
 * clears at once; a full or read-only filesystem fails every later write too, and the key could
 * not be claimed again). The sweep is held off (600 s): what moves the devices is their
 * workers. Ground truth: the simulator's write logs and states, and the journal.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/**
 * v2 busy for two strokes (an open, a close queued behind it), v1 for one (an open); then key
 * k claimed for v1, queued behind v1's open, its batch lost at its COMMIT; then k claimed again
 * for a close on v2, queued there behind v2's close.
 */
async function lostThenClaimedForV2(): Promise<SimHarness> {
  h = await SimHarness.start({ sweepMs: 600_000, travelMs: 1_500 });
  const sim = h;
  const v1 = sim.device('v1');
  expect(v1.snapshot().state).toBe('CLOSED');
  expect(sim.device('v2').snapshot().state).toBe('CLOSED');
  sim.submit('busy-v2-open', { device: 'v2', action: 'open' });
  sim.submit('busy-v2-close', { device: 'v2', action: 'close' });
  sim.submit('busy-v1-open', { device: 'v1', action: 'open' });
  await sim.pipeline.durable();
  await sim.until(
    () =>
      sim.get('busy-v1-open')?.state === 'dispatched' &&
      sim.get('busy-v2-open')?.state === 'dispatched',
    5_000,
    'both opens dispatched',
  );
  await sim.until(() => v1.writeLog.length === 1, 5_000, "v1's open written");
  await sim.pipeline.durable();

  const faults = commitFaults(sim.journal);
  faults.failNext();
  expect(sim.submit('k', { device: 'v1', action: 'open' }).kind).toBe('new');
  await expect(sim.pipeline.durable()).rejects.toThrow(/journal unavailable/);
  expect(faults.failed).toBe(1);
  expect(sim.get('k')).toBeUndefined();
  // The key again, for another command on v2: new, since the journal holds nothing of it.
  expect(sim.submit('k', { device: 'v2', action: 'close' }).kind).toBe('new');
  await sim.pipeline.durable();
  expect(sim.pipeline.device('v1')?.queued).toBe(1);
  return sim;
}

/** Resolves once neither device holds a command (every worker's turn over). */
async function bothIdle(sim: SimHarness): Promise<void> {
  await sim.until(
    () =>
      ['v1', 'v2'].every((id) => {
        const d = sim.pipeline.device(id);
        return d !== undefined && d.inFlight === null && d.queued === 0;
      }),
    15_000,
    'both devices idle',
  );
}

describe('a claim lost at its COMMIT, its key claimed again for a command on another device', () => {
  it("never carries that command out on the first device's driver", async () => {
    const sim = await lostThenClaimedForV2();
    const v1 = sim.device('v1');
    await sim.settled('busy-v1-open', 15_000);
    const k = await sim.settled('k', 20_000);
    await sim.settled('busy-v2-close', 20_000);
    await bothIdle(sim);
    // v1 took its own open alone and stays OPEN: the lost entry was dropped.
    expect(v1.writeLog.map((w) => w.code)).toEqual([1]);
    expect(v1.snapshot().state).toBe('OPEN');
    // k is v2's close, taken in its turn on v2 (CLOSED after v2's own close: a no-op).
    expect(k).toMatchObject({ device: 'v2', action: 'close', state: 'confirmed', code: 'OK' });
    expect(k.observed?.state).toBe('CLOSED');
    expect(sim.device('v2').writeLog.map((w) => w.code)).toEqual([1, 2]);
    expect(sim.device('v2').snapshot().state).toBe('CLOSED');
    expect(sim.journal.listOpen()).toEqual([]);
  }, 60_000);

  it('a stop on the first device does not supersede that command', async () => {
    const sim = await lostThenClaimedForV2();
    sim.submit('stop-v1', { device: 'v1', action: 'stop' });
    await sim.pipeline.durable();
    await sim.settled('stop-v1', 15_000);
    const k = await sim.settled('k', 20_000);
    await bothIdle(sim);
    // k is v2's command: run on v2 in its turn, not rejected by v1's stop.
    expect(k).toMatchObject({ device: 'v2', action: 'close', state: 'confirmed', code: 'OK' });
    expect(sim.journal.history({ scope: 'plant', key: 'k' }).map((e) => e.to)).not.toContain(
      'rejected',
    );
  }, 60_000);
});
