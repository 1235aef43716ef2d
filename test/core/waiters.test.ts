import { afterEach, describe, expect, it } from 'vitest';
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
});
