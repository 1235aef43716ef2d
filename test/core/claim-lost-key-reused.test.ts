import { afterEach, describe, it, type ExpectStatic } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { commitFaults } from '../helpers/commit-faults.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A command whose claim is lost with its batch at the batch's COMMIT still runs from the record
 * its device took up in that batch; by its next journal write its key may name another command,
 * claimed since (the reuse of the key, sent at QoS 1, redelivered once the connection dropped:
 * test/intake/mqtt-reused-answer.test.ts). Its writes went by key: the lost close, a no-op on a
 * CLOSED valve, settled the open claimed after it "confirmed: no-op: the controller shows
 * CLOSED", and the open was never written (I2: an open confirmed on a closed valve). Seen under
 * load, where the lost command's reads took longer than the redelivery. Now a write for a
 * command applies to a row of that command only (its fingerprint), and the worker moves on to
 * the command the key names now.
 *
 * The pipeline and SQLite journal against sluice-sim. One double, for what no filesystem here
 * times on demand: the failure of exactly that COMMIT (test/helpers/commit-faults.ts). The
 * simulator holds v1's reads 300 ms (a slow link): the lost command's read answers after the
 * new claim. The sweep is held off (600 s), so that what moves the device is the worker. Ground
 * truth: the simulator's write log and state, and the journal.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/**
 * `first` submitted on v1 (CLOSED) under key k, its batch failing at its COMMIT while its read,
 * held 300 ms, is out; then `second` under the same key, claimed anew. Returns the key's
 * settled record once the device is idle (both workers' turns over), so that the write log is
 * final when read.
 */
async function lostThenClaimedAgain(
  expect: ExpectStatic,
  first: 'open' | 'close',
  second: 'open' | 'close',
): Promise<{ sim: SimHarness; k: CommandRecord }> {
  h = await SimHarness.start({ sweepMs: 600_000 });
  const sim = h;
  const valve = sim.device('v1');
  expect(valve.snapshot().state).toBe('CLOSED');
  const faults = commitFaults(sim.journal);
  valve.setFault({ kind: 'latency', ms: 300, on: 'read' });
  const reads = valve.readLog.length;
  try {
    faults.failNext();
    // Taken up at once: its read goes out; its claim's batch fails at its COMMIT.
    sim.submit('k', { device: 'v1', action: first });
    await expect(sim.pipeline.durable()).rejects.toThrow(/journal unavailable \(commit\)/);
    expect(faults.failed).toBe(1);
    expect(sim.journal.get({ scope: 'plant', key: 'k' })).toBeUndefined();
    await sim.until(() => valve.readLog.length > reads, 2_000, "the lost command's read");
    // The key again: new, since the journal holds nothing of it.
    expect(sim.submit('k', { device: 'v1', action: second }).kind).toBe('new');
    await sim.pipeline.durable();
  } finally {
    valve.clearFault('latency');
  }
  const k = await sim.settled('k', 5_000);
  await sim.until(
    () => {
      const v1 = sim.pipeline.device('v1');
      return v1 !== undefined && v1.inFlight === null && v1.queued === 0;
    },
    5_000,
    'the device idle',
  );
  return { sim, k };
}

describe('a claim lost at its COMMIT, its key claimed again for another command', () => {
  it('does not settle nor dispatch the command claimed since', async ({ expect }) => {
    const { sim, k } = await lostThenClaimedAgain(expect, 'close', 'open');
    const valve = sim.device('v1');
    expect(k).toMatchObject({ action: 'open', state: 'confirmed', code: 'OK' });
    expect(k.seq).not.toBeNull();
    expect(valve.writeLog.map((w) => w.seq)).toEqual([k.seq]);
    expect(valve.snapshot().state).toBe('OPEN');
    expect(sim.journal.history({ scope: 'plant', key: 'k' }).map((e) => e.to)).toEqual([
      'accepted',
      'dispatched',
      'confirmed',
    ]);
    expect(sim.journal.listOpen()).toEqual([]);
  }, 30_000);

  it('writes once when the key is claimed again for the same command (the retry)', async ({
    expect,
  }) => {
    // The client's retry after its 503: the same payload, so the same command (its fingerprint).
    // The lost worker's dispatch and settlement apply to the new row; the key's own take-up,
    // queued behind it, finds it settled. One write (I1), one history.
    const { sim, k } = await lostThenClaimedAgain(expect, 'open', 'open');
    const valve = sim.device('v1');
    expect(k).toMatchObject({ action: 'open', state: 'confirmed', code: 'OK' });
    expect(valve.writeLog.map((w) => w.seq)).toEqual([k.seq]);
    expect(valve.snapshot().state).toBe('OPEN');
    expect(sim.journal.history({ scope: 'plant', key: 'k' }).map((e) => e.to)).toEqual([
      'accepted',
      'dispatched',
      'confirmed',
    ]);
  }, 30_000);
});
