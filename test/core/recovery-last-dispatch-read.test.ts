import { describe, it } from 'vitest';
import { lastDispatchFaults, type ReadFaults } from '../helpers/read-faults.js';
import { SimHarness } from '../helpers/sim-harness.js';
import {
  closeWaitsForHeldOpen,
  GUARD_MS,
  heldAcknowledgedOpen,
} from '../helpers/withheld-dispatch.js';

/**
 * A start whose journal cannot read a device's last dispatch (Journal.lastDispatched): what the
 * late-echo watch is taken up from (late-echo.ts) and what the device's last write an earlier
 * life left with its fate open is rebuilt from (previous-write.ts, earlierLastWrite). The start
 * goes on, as it does when its other steps cannot read the journal (before: the late-echo step
 * threw, and the whole start failed); and no command of the device is decided without that
 * write (I2): the device's commands wait until it can be read. The real pipeline and SQLite
 * journal against sluice-sim (its `hold`: the controller acknowledges the open an operator then
 * resolved, and takes it only later). The read failure is a double (test/helpers/read-faults.ts):
 * no simulator or filesystem fault can aim at the one statement. Ground truth: the simulator's
 * write log and state, and the journal.
 */

/** v1's open `p`, acknowledged and held by the controller, resolved; then the daemon killed. */
async function heldOpenAcrossRestart(h: SimHarness): Promise<void> {
  await heldAcknowledgedOpen(h, 'p');
  h.pipeline.resolve({ scope: 'plant', key: 'p' }, 'ops@test', 'checked');
  await h.crash();
}

async function harness(onTestFinished: (fn: () => Promise<void>) => void): Promise<SimHarness> {
  // Travel 0: the open, once taken, is OPEN at that scan, so the close is a legal write then.
  // The confirm timeout (the bound on the acknowledged open) is far longer than the case takes.
  const h = await SimHarness.start({
    warm: true,
    travelMs: 0,
    timing: { redispatchGuardMs: GUARD_MS, confirmTimeoutMs: 10 * GUARD_MS },
  });
  onTestFinished(() => h.close());
  return h;
}

describe("a start that cannot read a device's last dispatch", () => {
  it("the late-echo step's read alone fails: the start goes on, and the next close waits for the held open", async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    await heldOpenAcrossRestart(h);
    let faults: ReadFaults | undefined;
    // The first read of v1's last dispatch fails (the late-echo step's); the next one is read.
    await h.restart(() => {
      faults = lastDispatchFaults(h.journal, new Set(['v1']), 1);
    });
    expect(faults?.failed).toBe(1);
    await closeWaitsForHeldOpen(h, expect);
  });

  it('every read of it fails for a while: the other devices run, and its commands wait until it can be read', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    const valve = h.device('v1');
    await heldOpenAcrossRestart(h);
    let faults: ReadFaults | undefined;
    // Before: recover() threw "journal unavailable", and the daemon did not start.
    await h.restart(() => {
      faults = lastDispatchFaults(h.journal, new Set(['v1']));
    });
    const failedAtStart = faults!.failed;
    expect(failedAtStart).toBeGreaterThan(0);
    // Another device's command runs.
    h.submit('o2', { device: 'v2', action: 'open', ttlMs: 60_000 });
    const o2 = await h.settled('o2');
    expect(o2).toMatchObject({ state: 'confirmed' });
    expect(h.writesWithSeq('v2', o2.seq!)).toBe(1);
    // A close of v1 is not decided while the read fails: its worker reads again, fails, and
    // leaves it to the sweep.
    h.submit('c', { device: 'v1', action: 'close', ttlMs: 60_000 });
    await h.until(
      () =>
        faults!.failed > failedAtStart &&
        h.pipeline.devices().find((d) => d.id === 'v1')?.unresolved === 'c',
      5_000,
      'the close left open after the read failed again',
    );
    expect(h.get('c')).toMatchObject({ state: 'accepted' });
    expect(valve.writeLog.map((w) => w.seq)).toEqual([h.get('p')!.seq]);
    // The journal reads again: the close waits for the held open, and is written once it is
    // taken. Decided without it, the close was confirmed a no-op at CLOSED, and the controller
    // then took the open (I2).
    faults!.armed = false;
    await h.until(
      () => {
        const c = h.get('c');
        if (c !== undefined && c.state !== 'accepted' && c.state !== 'dispatched') return true;
        return h.notes('c').some((n) => n.includes('not decided yet'));
      },
      5_000,
      'the close waiting, or ended',
    );
    const early = h.get('c');
    valve.clearFault('hold');
    await h.until(() => valve.pendingWrites === 0, 5_000, 'the held open taken');
    const c = await h.settled('c', 4 * GUARD_MS);
    await h.until(
      () => ['OPEN', 'CLOSED'].includes(valve.snapshot().state) && valve.pendingWrites === 0,
      10_000,
      'the valve at rest',
    );
    expect({ valve: valve.snapshot().state, close: c.state }).toEqual({
      valve: 'CLOSED',
      close: 'confirmed',
    });
    expect(c.detail ?? '').not.toMatch(/no-op/);
    expect(early?.state).toBe('accepted');
    expect(h.notes('c').some((n) => n.includes('not decided yet'))).toBe(true);
    expect(valve.writeLog.map((w) => w.seq)).toEqual([h.get('p')!.seq, c.seq]);
  });
});
