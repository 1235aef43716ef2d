import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * sluicectl reverify of an accepted stop while the daemon stops: the graceful stop
 * (pipeline.stop) keeps the stop in its device's queue and carries it out within its bound, so
 * the reverify waits for it and answers its outcome. It answered at once "the daemon is stopping
 * and takes no readback now; the command stays journaled and is settled … at the next start",
 * while the stop was being written. The real pipeline and SQLite journal against sluice-sim;
 * ground truth: the simulator's write log and state, and the journal.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('reverify while the daemon stops', () => {
  it('of a stop kept to run within the bound: waits for it and answers its outcome', async () => {
    const started = await SimHarness.start({
      travelMs: 4_000,
      timing: { confirmTimeoutMs: 6_000 },
    });
    h = started;
    started.submit('open-1', { device: 'v1', action: 'open' });
    await started.travelledTo('v1', 20);
    started.submit('stop-1', { device: 'v1', action: 'stop' });
    await started.pipeline.durable();
    const stopping = started.pipeline.stop(10_000);
    const answer = await started.pipeline.reverify(
      { scope: 'plant', key: 'stop-1' },
      'operator',
      5_000,
    );
    await stopping;
    expect(answer.detail).toBe('settled: confirmed OK');
    expect(started.get('stop-1')).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(started.device('v1').writeLog.map((w) => w.seq)).toEqual([
      started.get('open-1')?.seq,
      started.get('stop-1')?.seq,
    ]);
    expect(started.device('v1').snapshot().state).toBe('STOPPED');
  }, 30_000);
});
