import { describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';

/**
 * The daemon's waits (redispatch guards, the wait until a write can no longer land, readback
 * pacing, deadlines) run on systemClock's sleep and timer, and are judged against its elapsed().
 * A bare Node timer fires up to a millisecond early by that clock now and then (about 1 in 150
 * short timers on this machine): a guard would end before its time. Bounded: 400 waits of 1–3 ms
 * each way, about 1 s each.
 */
const WAITS = 400;

describe('systemClock waits end no sooner than asked, by its own elapsed()', () => {
  it('sleep', async () => {
    const short: string[] = [];
    for (let i = 0; i < WAITS; i++) {
      const ms = 1 + (i % 3);
      const from = systemClock.elapsed();
      await systemClock.sleep(ms);
      const took = systemClock.elapsed() - from;
      if (took < ms) short.push(`${ms} ms after ${took.toFixed(3)}`);
    }
    expect(short).toEqual([]);
  });

  it('timer', async () => {
    const short: string[] = [];
    for (let i = 0; i < WAITS; i++) {
      const ms = 1 + (i % 3);
      const from = systemClock.elapsed();
      const took = await new Promise<number>((resolve) => {
        systemClock.timer!(ms, () => {
          resolve(systemClock.elapsed() - from);
        });
      });
      if (took < ms) short.push(`${ms} ms after ${took.toFixed(3)}`);
    }
    expect(short).toEqual([]);
  });

  it('a cancelled timer never fires, and an aborted sleep ends at once', async () => {
    let fired = 0;
    const cancels = Array.from({ length: 50 }, () =>
      systemClock.timer!(2, () => {
        fired += 1;
      }),
    );
    for (const cancel of cancels) cancel();
    // The proof that none fired: a later timer of the same length has fired, and they have not.
    await systemClock.sleep(20);
    expect(fired).toBe(0);

    const abort = new AbortController();
    const from = systemClock.elapsed();
    const sleeping = systemClock.sleep(60_000, abort.signal);
    abort.abort();
    await sleeping;
    expect(systemClock.elapsed() - from).toBeLessThan(30_000);
  });
});
