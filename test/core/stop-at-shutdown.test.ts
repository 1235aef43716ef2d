import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';
import { slowFdatasync, type SlowFdatasync } from '../helpers/slow-fdatasync.js';

/**
 * The graceful stop (pipeline.stop, what SIGTERM comes to) carries out a stop already accepted
 * within its bound, wherever the stop stands: SPEC §2 has a stop dispatched at once, so it is a
 * command in flight, which §9 lets settle. A stop preempts the command in flight at its claim and
 * waits in its device's queue for that command's worker, which first waits for the stop's claim
 * to be on disk and then for a turn of the event loop; the graceful stop emptied the queues
 * meanwhile, and the stop, acknowledged by then or a moment later, was never written while the
 * valve it was to stop travelled on to its end. The real pipeline and journal against sluice-sim;
 * ground truth: the simulator's write log and state, and the journal.
 *
 * The last case has the one double, fs.fdatasync made slow (slow-fdatasync.ts): a gateway's
 * worn flash, which no real part here produces, holds a settled command's end in its barrier
 * long enough for the test to see it journaled and send a stop while its worker waits.
 */

let h: SimHarness | undefined;
let disk: SlowFdatasync | undefined;
afterEach(async () => {
  disk?.restore();
  disk = undefined;
  await h?.close();
  h = undefined;
});

/** An open travelling on v1 (4 s of travel), written and past 20 %. */
async function travelling(): Promise<SimHarness> {
  h = await SimHarness.start({ travelMs: 4_000, timing: { confirmTimeoutMs: 6_000 } });
  h.submit('open-1', { device: 'v1', action: 'open' });
  await h.travelledTo('v1', 20);
  return h;
}

/** The seq numbers of v1's writes, in the order the simulator took them. */
function writes(h: SimHarness): (number | null | undefined)[] {
  return h.device('v1').writeLog.map((w) => w.seq);
}

describe('a stop accepted while a valve travels, then the graceful stop', () => {
  it('in the turn of its claim (an MQTT-only gateway: SIGTERM in the same turn): the stop is written, the open ends INTERRUPTED', async () => {
    const h = await travelling();
    h.submit('stop-1', { device: 'v1', action: 'stop' });
    await h.pipeline.stop(10_000);
    expect(h.get('stop-1')).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(h.get('open-1')).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    expect(writes(h)).toEqual([h.get('open-1')?.seq, h.get('stop-1')?.seq]);
    expect(h.device('v1').snapshot().state).toBe('STOPPED');
  }, 30_000);

  it('once its claim is on disk (acknowledged): the stop is written, the open ends INTERRUPTED', async () => {
    const h = await travelling();
    h.submit('stop-1', { device: 'v1', action: 'stop' });
    // What an intake awaits before it acknowledges the stop (I5).
    await h.pipeline.durable();
    await h.pipeline.stop(10_000);
    expect(h.get('stop-1')).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(h.get('open-1')).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    expect(writes(h)).toEqual([h.get('open-1')?.seq, h.get('stop-1')?.seq]);
    expect(h.device('v1').snapshot().state).toBe('STOPPED');
  }, 30_000);

  it('pressed twice: both stops end within the bound, the first written, the second a no-op, the open INTERRUPTED', async () => {
    const h = await travelling();
    h.submit('stop-1', { device: 'v1', action: 'stop' });
    h.submit('stop-2', { device: 'v1', action: 'stop' });
    await h.pipeline.durable();
    await h.pipeline.stop(10_000);
    expect(h.get('stop-1')).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(h.get('stop-2')?.state).toBe('confirmed');
    expect(h.get('open-1')).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    expect(writes(h)).toEqual([h.get('open-1')?.seq, h.get('stop-1')?.seq]);
    expect(h.device('v1').snapshot().state).toBe('STOPPED');
  }, 30_000);
});

describe('a stop accepted while its valve’s worker makes the previous command’s end durable', () => {
  it('runs within the bound; a close accepted after it stays accepted for the next start, unwritten', async () => {
    const started = await SimHarness.start({ travelMs: 150 });
    h = started;
    started.submit('open-1', { device: 'v1', action: 'open' });
    disk = slowFdatasync(500);
    // Journaled confirmed, its barrier still running: the worker has not come back for more.
    await started.until(() => started.get('open-1')?.state === 'confirmed', 10_000, 'open-1');
    started.submit('stop-1', { device: 'v1', action: 'stop' });
    started.submit('close-1', { device: 'v1', action: 'close' });
    const stopping = started.pipeline.stop(10_000);
    disk.restore();
    await stopping;
    // At OPEN a stop is a no-op (SPEC §2's table): it ends without a write.
    expect(started.get('stop-1')?.state).toBe('confirmed');
    expect(started.get('close-1')?.state).toBe('accepted');
    expect(writes(started)).toEqual([started.get('open-1')?.seq]);
    expect(started.device('v1').snapshot().state).toBe('OPEN');
  }, 30_000);
});
