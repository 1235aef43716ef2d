import { describe, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * I3, the deadline rule of a live re-dispatch (redispatch.ts): a write lost on its way to the
 * controller, proven not applied only after the command's deadline has passed, is not sent
 * again — the journal records no `redispatch:` past the deadline, and the command ends
 * `failed` `DEVICE_UNREACHABLE`, nothing applied. The tests of that rule elsewhere reach it
 * through a restart (safety, take-up-past-proof); this one on a running daemon, where the check
 * after the dispatch barrier and the driver's own deadline would stop the write on the wire and
 * hide a re-dispatch the journal recorded. The real pipeline, the real Modbus driver and the
 * SQLite journal against sluice-sim: the write is lost by the simulator's own fault (the PLC
 * resets the connection before taking it); the ttl (300 ms) is shorter than the guard (400 ms),
 * so the proof can only come past the deadline. Ground truth: the simulator's write log, and
 * the journal's transitions.
 */

describe('a write proven not applied only after its deadline', () => {
  it('is not dispatched again: no dispatch in the journal past the deadline, nothing written', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await SimHarness.start({ warm: true });
    onTestFinished(() => h.close());
    const valve = h.device('v1');
    valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
    const action = valve.snapshot().state === 'OPEN' ? 'close' : 'open';
    h.submit('late-proof', { device: 'v1', action, ttlMs: 300 });
    const r = await h.settled('late-proof', 10_000);
    const notes = h.notes('late-proof').join(' | ');
    const dispatches = h.journal
      .history(r)
      .filter(
        (e) =>
          (e.from === 'accepted' && e.to === 'dispatched') || e.detail.startsWith('redispatch:'),
      );
    expect(dispatches.length, notes).toBeGreaterThan(0);
    for (const e of dispatches)
      expect(e.at, `dispatched past its deadline: ${notes}`).toBeLessThan(r.deadline);
    expect(r, notes).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 1 });
    expect(valve.writesWithSeq(r.seq!)).toBe(0);
    expect(valve.writeLog).toEqual([]);
  });
});
