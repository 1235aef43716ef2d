import { describe, expect, it } from 'vitest';
import { heldOnLink, killedLives } from '../helpers/killed-life.js';
import type { SimHarness } from '../helpers/sim-harness.js';

/**
 * I2: a stop that preempted an open whose write's answer was lost (the request held on the
 * link past its request timeout, landing within the profile's guard) waits for that write's
 * guard before it is confirmed (readback-confirmation.ts, preemptedMayLand). An operator who
 * resolves the open meanwhile ends it `RESOLVED_BY_OPERATOR` with its write's fate open ("it
 * may have been applied"): the write still stands. The stop used to pass over any preempted
 * command no longer `dispatched`, and was confirmed while the open could still land, and did;
 * once the stop had ended (resolved too), the next command waited for nothing either, and a
 * close was confirmed a no-op at CLOSED before the open opened the valve.
 *
 * sluice-sim (its latency fault holds the open on the link), the real pipeline, Modbus driver
 * and SQLite journal. Ground truth: the simulator's write log and state, the journal's rows.
 */
const lives = killedLives();

/**
 * v1's open held on the link 2 s (request timeout 1 s, guard 1.5 s), a stop preempting it
 * written once the open's request has timed out (one connection), and the open resolved by an
 * operator while the stop waits. Travel 0: the open, once taken, is OPEN at that scan.
 */
async function stopOverResolvedOpen(): Promise<SimHarness> {
  const sim = await lives.start({
    travelMs: 0,
    requestTimeoutMs: 1_000,
    timing: { redispatchGuardMs: 1_500, confirmTimeoutMs: 6_000 },
  });
  const v1 = sim.device('v1');
  await heldOnLink(sim, 'v1', 2_000, 'open', { device: 'v1', action: 'open', ttlMs: 10_000 });
  sim.submit('stop', { device: 'v1', action: 'stop', ttlMs: 10_000 });
  await sim.until(
    () => {
      const seq = sim.get('stop')?.seq;
      return seq != null && v1.writeLog.some((w) => w.seq === seq);
    },
    5_000,
    'the stop at the PLC',
  );
  const open = sim.pipeline.resolve({ scope: 'plant', key: 'open' }, 'ops@test', 'clearing it');
  expect(open.detail).toMatch(
    /whether it reached the controller is unknown: it may have been applied$/,
  );
  return sim;
}

describe('a stop over a lost write whose command an operator resolves', () => {
  it('is not confirmed while that write may still land', async () => {
    const sim = await stopOverResolvedOpen();
    const v1 = sim.device('v1');
    const stop = await sim.settled('stop', 15_000);
    const open = sim.get('open')!;
    await sim.until(
      () => v1.writeLog.some((w) => w.seq === open.seq && w.settledAt !== null),
      5_000,
      'the open landed',
    );
    // The open reached the controller after the stop: the stop did not hold, and says so once
    // it has.
    expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([
      [stop.seq, 'noop'],
      [open.seq, 'accepted'],
    ]);
    expect(stop).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH' });
    expect(stop.settledAt!).toBeGreaterThanOrEqual(v1.writeLog[1]!.settledAt!);
    expect(v1.snapshot().published.state).toBe('OPEN');
  }, 40_000);

  it('the stop resolved too: the next command waits for that write', async () => {
    const sim = await stopOverResolvedOpen();
    sim.pipeline.resolve({ scope: 'plant', key: 'stop' }, 'ops@test', 'clearing it');
    await closeAfterOpen(sim);
  }, 40_000);

  it('the stop resolved too, then a restart: the next command waits for that write', async () => {
    const sim = await stopOverResolvedOpen();
    sim.pipeline.resolve({ scope: 'plant', key: 'stop' }, 'ops@test', 'clearing it');
    // Both resolves on disk before the kill (it loses the open batch): the next life finds them.
    await sim.journal.durable();
    await lives.killAndRestart(sim);
    // The premise: the next life found both resolves.
    expect(sim.get('open')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    expect(sim.get('stop')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    await closeAfterOpen(sim);
  }, 40_000);

  it('a restart while the stop waits: the next command waits for that write', async () => {
    const sim = await stopOverResolvedOpen();
    // The open's resolve on disk before the kill (it loses the open batch): the next life finds it.
    await sim.journal.durable();
    await lives.killAndRestart(sim);
    // The premise: the next life found the open's resolve.
    expect(sim.get('open')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    await closeAfterOpen(sim);
  }, 40_000);
});

/**
 * A close submitted now: decided once the open has landed, written after it and confirmed,
 * the valve CLOSED; never a no-op on the image before the open.
 */
async function closeAfterOpen(sim: SimHarness): Promise<void> {
  const v1 = sim.device('v1');
  sim.submit('close', { device: 'v1', action: 'close', ttlMs: 10_000 });
  const close = await sim.settled('close', 15_000);
  const open = sim.get('open')!;
  const stop = sim.get('stop')!;
  await sim.until(
    () => v1.writeLog.some((w) => w.seq === open.seq && w.settledAt !== null),
    5_000,
    'the open landed',
  );
  expect(close).toMatchObject({ state: 'confirmed' });
  expect(v1.snapshot().published.state).toBe('CLOSED');
  // Decided once the open had landed: written after it, never a no-op on the image before it.
  expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([
    [stop.seq, 'noop'],
    [open.seq, 'accepted'],
    [close.seq, 'accepted'],
  ]);
}
