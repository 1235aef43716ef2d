import { afterEach, describe, expect, it } from 'vitest';
import { sleepFor, systemClock, type Clock } from '../../src/core/clock.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * Many callers waiting for one result at once (HTTPS clients with `Prefer: wait`, a hundred
 * valves' workers sleeping between readbacks) all listen on the pipeline's one stop signal. On
 * the real parts: every waiter gets the settled command as the journal holds it, and Node is
 * not led to report a listener leak (each waiter removes its listener when done).
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('waiting for a result', () => {
  it('thirty waiters on one command: each gets the settled record, no leak warning', async () => {
    h = await SimHarness.start();
    const warnings: Error[] = [];
    const onWarning = (warning: Error): void => {
      warnings.push(warning);
    };
    process.on('warning', onWarning);
    try {
      h.submit('w1', { device: 'v1', action: 'open' });
      const ref = { scope: 'plant', key: 'w1' };
      const results = await Promise.all(
        Array.from({ length: 30 }, () => h!.pipeline.waitForSettled(ref, 10_000)),
      );
      const journaled = await h.settled('w1');
      expect(journaled).toMatchObject({ state: 'confirmed', code: 'OK' });
      for (const r of results) expect(r).toEqual(journaled);
      // Warnings are emitted on the next tick: let one pass before looking.
      await new Promise((resolve) => setImmediate(resolve));
      expect(warnings.filter((w) => w.name === 'MaxListenersExceededWarning')).toEqual([]);
    } finally {
      process.off('warning', onWarning);
    }
  });

  it('the pipeline’s stop wakes every waiter at once, with the command as the journal holds it', async () => {
    // A travel far longer than the waits' bound: only the stop can end them in time.
    h = await SimHarness.start({ travelMs: 5_000, timing: { confirmTimeoutMs: 20_000 } });
    const valve = h.device('v1');
    h.submit('slow', { device: 'v1', action: 'open' });
    await h.until(() => valve.counters.writesReceived === 1, 5_000, 'the write');
    const ref = { scope: 'plant', key: 'slow' };
    const waits = Array.from({ length: 20 }, () => h!.pipeline.waitForSettled(ref, 120_000));
    await h.pipeline.stop(0);
    // Resolved by the stop: the test's own timeout (far below the bound) would fail it otherwise.
    const results = await Promise.all(waits);
    const journaled = h.journal.get(ref);
    expect(journaled).toMatchObject({ state: 'dispatched', attempts: 1 });
    for (const r of results) expect(r).toEqual(journaled);
    // A wait begun after the stop does not sleep its bound either.
    expect(await h.pipeline.waitForSettled(ref, 120_000)).toEqual(journaled);
  });

  for (const withTimer of [true, false]) {
    it(`a wait that runs out answers with the command as it stands and leaves no waiter (${withTimer ? "the system clock's timer" : 'a clock with sleep alone'})`, async () => {
      const clock: Clock = withTimer
        ? systemClock
        : { now: () => Date.now(), elapsed: () => performance.now(), sleep: sleepFor };
      h = await SimHarness.start({ clock, travelMs: 1_500, timing: { confirmTimeoutMs: 20_000 } });
      const valve = h.device('v1');
      h.submit('slow', { device: 'v1', action: 'open' });
      await h.until(() => valve.counters.writesReceived === 1, 5_000, 'the write');
      const ref = { scope: 'plant', key: 'slow' };
      const began = performance.now();
      const results = await Promise.all([
        h.pipeline.waitForSettled(ref, 200),
        h.pipeline.waitForSettled(ref, 300),
      ]);
      // Node's timers may fire up to a millisecond early by the monotonic clock.
      expect(performance.now() - began).toBeGreaterThanOrEqual(299);
      const journaled = h.journal.get(ref);
      expect(journaled).toMatchObject({ state: 'dispatched' });
      for (const r of results) expect(r).toEqual(journaled);
      const waiters = (h.pipeline as unknown as { outcomes: { waiters: Map<string, unknown> } })
        .outcomes.waiters;
      expect(waiters.size).toBe(0);
      // The command goes on and settles; a wait begun now gets it when it does.
      expect(await h.pipeline.waitForSettled(ref, 20_000)).toMatchObject({ state: 'confirmed' });
      expect(waiters.size).toBe(0);
    });
  }
});

/**
 * Waiting for many commands at once (READY=1 after a restart waits for every recovered command:
 * thousands after a stop under load), with one listener for all of them rather than a waiter
 * each. The journal is the ground truth for what counts as settled.
 */
describe('waiting for many results', () => {
  const ref = (key: string): { scope: string; key: string } => ({ scope: 'plant', key });

  it('resolves 0 once every command is terminal, already settled ones counted at once', async () => {
    h = await SimHarness.start({ travelMs: 0 });
    h.submit('early', { device: 'v2', action: 'open' });
    await h.settled('early');
    for (const key of ['m1', 'm2', 'm3']) h.submit(key, { device: 'v1', action: 'open' });
    h.submit('m4', { device: 'a1', action: 'move', position: 40 });
    const keys = ['early', 'm1', 'm2', 'm3', 'm4'];
    expect(await h.pipeline.waitForAllSettled(keys.map(ref), 10_000)).toBe(0);
    for (const key of keys) {
      const record = h.journal.get(ref(key));
      expect(['confirmed', 'rejected', 'failed']).toContain(record?.state);
    }
  });

  it('after its bound, counts the commands still open', async () => {
    // A travel far longer than the bound: the open command cannot confirm within it.
    h = await SimHarness.start({ travelMs: 5_000, timing: { confirmTimeoutMs: 20_000 } });
    h.submit('done', { device: 'v2', action: 'stop' });
    await h.settled('done');
    h.submit('slow', { device: 'v1', action: 'open' });
    const open = await h.pipeline.waitForAllSettled([ref('done'), ref('slow')], 300);
    expect(open).toBe(1);
    expect(h.journal.get(ref('slow'))?.state).toMatch(/^(accepted|dispatched)$/);
  });

  it('resolves when the pipeline stops, long before its bound', async () => {
    h = await SimHarness.start({ travelMs: 5_000, timing: { confirmTimeoutMs: 20_000 } });
    h.submit('slow', { device: 'v1', action: 'open' });
    const waited = h.pipeline.waitForAllSettled([ref('slow')], 120_000);
    await h.pipeline.stop(0);
    // Resolved by the stop: the test's own timeout (far below the bound) would fail it otherwise.
    expect(await waited).toBe(1);
  });
});
