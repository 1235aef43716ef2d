import { describe, expect, it } from 'vitest';
import { SIM_REQUEST_TIMEOUT_MS, SIM_TIMING, type SimHarness } from '../helpers/sim-harness.js';
import { acknowledgedSeen, killedLives } from '../helpers/killed-life.js';

/**
 * A profile that bounds how long its controller keeps an acknowledged write
 * (timing.ackedWriteTakenWithinMs, docs/device-profiles.md), across a restart. On the real
 * parts: the pipeline with the real Modbus driver against sluice-sim, a real journal file;
 * judged from the simulator's write log and the journal.
 *
 * A restarted daemon does not know whether the controller acknowledged an earlier life's write:
 * it waits the bound on an acknowledged write from its journal's lock before a readback may prove
 * that write not applied (earlier-write-bounds.ts). Without the field the bound is the confirm
 * timeout (restart-acked-held.test.ts): a device with an in-doubt write then wrote nothing for
 * that long after every start (8 s on the shipped profiles). With it, the wait is the stated
 * bound, and a write the controller keeps within it is still not sent twice.
 *
 * The harness's timings: request timeout 250 ms, guard 400 ms; the confirm timeout is 6 s here
 * so that the two waits are far apart.
 */

const lives = killedLives();
let h: SimHarness;

const CONFIRM_MS = 6_000;

describe('an in-doubt write across a restart, the profile bounding an acknowledged write', () => {
  it('a write lost on its way is proven not applied once the stated bound has passed, not the confirm timeout', async () => {
    // Proven not applied from the lock plus max(request timeout + guard, request timeout +
    // bound): 1050 ms; by the confirm timeout, 5.6 s.
    h = await lives.start({
      warm: true,
      travelMs: 100,
      timing: { confirmTimeoutMs: CONFIRM_MS, ackedWriteTakenWithinMs: 800 },
    });
    const v1 = h.device('v1');
    // The open's write caught on the PLC's link and never let go: it never lands.
    v1.setFault({ kind: 'stall', on: 'write', count: 1 });
    h.submit('open', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await h.until(
      () => v1.faults().some((f) => f.kind === 'stall' && f.remaining === 0),
      5_000,
      'the open held on the link',
    );
    await lives.killAndRestart(h);
    const open = await h.settled('open', 15_000);

    // Ground truth: the second write alone reached the controller, which took it.
    expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[open.seq, 'accepted']]);
    expect(open).toMatchObject({ state: 'confirmed', attempts: 2 });
    const history = h.journal.history(open);
    const takeUp = history.find((e) => e.detail.startsWith('taken up: sequence number'));
    const redispatch = history.find((e) => e.detail.startsWith('redispatch:'));
    expect(takeUp).toBeDefined();
    expect(redispatch).toBeDefined();
    // Sent again well before the confirm timeout's wait could have ended (5.6 s after the
    // lock, which came before the take-up): the stated bound was used.
    expect(redispatch!.at - takeUp!.at).toBeLessThan(CONFIRM_MS - 2_500);
  });

  it('a write the controller acknowledged and keeps within the bound is not sent again: written once, confirmed', async () => {
    // Proven not applied, at the earliest, 2.25 s after the lock. Counted from the request
    // timeout and guard alone (650 ms), the write was proven not applied and sent a second time
    // while still kept. The controller keeps it until the restarted life has read it not taken
    // after those 650 ms, and within its stated bound from the write's arrival: not a fixed
    // time from before the submit, which a slow restart could outlast (the write taken before
    // the shorter wait ended, nothing proven). A bound of 2 s leaves a slow restart room
    // between the two.
    const boundMs = 2_000;
    h = await lives.start({
      warm: true,
      travelMs: 100,
      timing: { confirmTimeoutMs: CONFIRM_MS, ackedWriteTakenWithinMs: boundMs },
    });
    const v1 = h.device('v1');
    v1.setFault({ kind: 'hold' });
    h.submit('open', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await acknowledgedSeen(h, 'v1');
    const arrived = v1.writeLog[0]!.receivedAt;
    await lives.killAndRestart(h);
    // On the controller's clock; the new life took the journal's lock before this.
    const restarted = v1.snapshot().controllerTime;
    const shorterWaitMs = SIM_REQUEST_TIMEOUT_MS + SIM_TIMING.redispatchGuardMs;
    // Two readbacks answered after the shorter wait: the second was asked after it.
    await h.until(
      () => v1.readLog.filter((at) => at >= restarted + shorterWaitMs).length >= 2,
      5_000,
      'the write read not taken after the shorter wait',
    );
    expect(
      v1.snapshot().controllerTime - arrived,
      'the write kept past the shorter wait within the stated bound (a restart this slow proves nothing)',
    ).toBeLessThan(boundMs);
    v1.clearFault('hold');
    const open = await h.settled('open', 15_000);

    // Ground truth: one write, taken when the hold ended; confirmed by its echo.
    expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[open.seq, 'accepted']]);
    expect(open).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.journal.history(open).some((e) => e.detail.startsWith('redispatch:'))).toBe(false);
  });
});
