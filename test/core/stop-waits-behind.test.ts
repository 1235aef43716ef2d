import { describe, it } from 'vitest';
import { showCommand } from '../../src/views/command-show.js';
import { pausedText, stuckItems } from '../../src/views/open-commands.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * What `sluicectl show`, `sluicectl stuck` and the status page say an accepted stop waits
 * behind (src/views/open-commands.ts): SPEC §2, a stop is not queued behind travel. The real
 * pipeline and journal against sluice-sim; the simulator's write log and the journal say when
 * the stop was written, and that the travel it preempted was still open then.
 */
describe('an accepted stop, while its read of the device is still to come', () => {
  it('is said to wait behind no command the travel it preempts, which is said to wait for the stop, and is written before that one settles', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await SimHarness.start({ warm: true, travelMs: 20_000 });
    onTestFinished(() => h.close());
    const valve = h.device('v1');
    h.submit('open-1', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await h.until(
      () => valve.readLog.length > 0 && h.get('open-1')?.seq != null,
      5_000,
      'the open dispatched',
    );
    const openSeq = h.get('open-1')!.seq!;
    await h.until(() => valve.writesWithSeq(openSeq) === 1, 5_000, 'the open written');
    // The device answers no read: the stop's read before its write waits (a device slow to
    // answer, the moment an operator presses stop and looks).
    valve.setFault({ kind: 'drop', on: 'read' });
    h.submit('stop-1', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    expect(h.get('stop-1')).toMatchObject({ state: 'accepted' });
    expect(h.get('open-1')).toMatchObject({ state: 'dispatched' });

    const shown = showCommand(h.get('stop-1')!, h.journal, Date.now(), () => null);
    expect(shown.open).toMatchObject({ waitsBehind: [], waitsBehindCount: 0 });
    const listed = stuckItems(h.journal.listOpen(), 0, Date.now(), null, h.journal);
    expect(listed.find((i) => i.key === 'stop-1')).toMatchObject({
      waitsBehind: [],
      waitsBehindCount: 0,
    });
    // The travel waits for the stop from the stop's acceptance (the preemption acts at the
    // claim), not for a readback of its own write: said so before the stop is written, too.
    const paused = showCommand(h.get('open-1')!, h.journal, Date.now(), () => null);
    expect(paused.open).toMatchObject({
      waitsBehind: [{ key: 'stop-1', state: 'accepted' }],
      waitsBehindCount: 1,
    });
    expect(listed.find((i) => i.key === 'open-1')).toMatchObject({
      waitsBehind: [{ key: 'stop-1', state: 'accepted' }],
    });
    expect(pausedText(paused.open!.waitsBehind, paused.open!.waitsBehindCount)).toBe(
      'the stop stop-1 (accepted), which came after it and paused it: once that settles, the daemon takes this one up again by reading its device, never writing it again',
    );
    // A command accepted after the stop waits behind both: the stop, and the travel it paused,
    // which is taken up again once the stop settles.
    h.submit('close-1', { device: 'v1', action: 'close', ttlMs: 30_000 });
    const after = showCommand(h.get('close-1')!, h.journal, Date.now(), () => null);
    expect(after.open?.waitsBehind.map((a) => a.key).sort()).toEqual(['open-1', 'stop-1']);

    // Ground truth: the stop is written while the open it preempted is still open.
    valve.clearFault('drop');
    await h.until(() => h.get('stop-1')?.seq != null, 10_000, 'the stop dispatched');
    const stopSeq = h.get('stop-1')!.seq!;
    await h.until(() => valve.writesWithSeq(stopSeq) === 1, 10_000, 'the stop written');
    const stop = await h.settled('stop-1');
    const open = await h.settled('open-1');
    expect(stop.state).toBe('confirmed');
    expect(open).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    expect(open.settledAt!).toBeGreaterThanOrEqual(stop.dispatchedAt!);
    // Paused, as said: taken up again by reading, never written again.
    expect(valve.writesWithSeq(openSeq)).toBe(1);
    await h.settled('close-1');
  });
});

/**
 * A second stop while the first is written and its effect not seen (its write answered 0x04,
 * the valve still opening): the second takes the first over at its claim (Preemption.
 * stopOvertakes), before its own read of the device, as a stop takes travel over; the first is
 * judged again only once the second is terminal. Said so while that read is still to come.
 */
describe('a second stop, while its read of the device is still to come and the first stop in flight is not seen to take effect', () => {
  it('is said to have paused the first, which it is not said to wait behind, and is written while the first is still open', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await SimHarness.start({ travelMs: 3_000, timing: { confirmTimeoutMs: 5_000 } });
    onTestFinished(() => h.close());
    const valve = h.device('v1');
    const plc = h.plant.plc('mb');
    h.submit('open-1', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await h.until(() => valve.snapshot().position >= 20, 10_000, 'v1 at 20 %');
    plc.setFault({ kind: 'exception', code: 4, on: 'write', count: 1 });
    h.submit('stop-1', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    // The first stop's write was answered 0x04 (the fault is used up: not applied, its outcome
    // unknown to the daemon), and a readback after it shows the valve still opening.
    const readsBefore = valve.readLog.length;
    await h.until(
      () => plc.faults().length === 0 && valve.readLog.length > readsBefore + 2,
      5_000,
      'the first stop refused, the valve read since',
    );
    expect(valve.snapshot().state).toBe('OPENING');
    valve.setFault({ kind: 'drop', on: 'read' });
    h.submit('stop-2', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    expect(h.get('stop-1')).toMatchObject({ state: 'dispatched' });
    expect(h.get('stop-2')).toMatchObject({ state: 'accepted' });

    const first = showCommand(h.get('stop-1')!, h.journal, Date.now(), () => null);
    expect(first.open).toMatchObject({
      waitsBehind: [{ key: 'stop-2', state: 'accepted' }],
      waitsBehindCount: 1,
    });
    const second = showCommand(h.get('stop-2')!, h.journal, Date.now(), () => null);
    expect(second.open).toMatchObject({ waitsBehind: [], waitsBehindCount: 0 });
    const listed = stuckItems(h.journal.listOpen(), 0, Date.now(), null, h.journal);
    expect(listed.find((i) => i.key === 'stop-1')?.waitsBehind).toEqual([
      { key: 'stop-2', scope: 'plant', state: 'accepted' },
    ]);

    // Ground truth: the second stop is written while the first is still open, which is taken up
    // again (by reading) only once the second is terminal, and never written.
    valve.clearFault('drop');
    await h.until(() => h.get('stop-2')?.seq != null, 10_000, 'the second stop dispatched');
    const secondSeq = h.get('stop-2')!.seq!;
    await h.until(() => valve.writesWithSeq(secondSeq) === 1, 10_000, 'the second stop written');
    const [stop2, stop1, opened] = [
      await h.settled('stop-2'),
      await h.settled('stop-1'),
      await h.settled('open-1'),
    ];
    expect(stop2).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(stop1).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
    expect(stop1.settledAt!).toBeGreaterThanOrEqual(stop2.settledAt!);
    expect(valve.writesWithSeq(stop1.seq!)).toBe(0);
    expect(opened).toMatchObject({ state: 'failed', code: 'INTERRUPTED' });
  });
});
