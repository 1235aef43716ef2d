import { describe, it, type TestContext } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * When the late-echo watch (late-echo.ts) begins. After a restart: the start watches the command of each
 * device's last dispatch when it ended in doubt; a command of the device dispatched before it and
 * still open is taken up and may end in doubt too, in the new life. In the life that dispatched
 * both, that earlier command's settlement began no watch (another command of the device was
 * dispatched after it: the echo may be that one's); in the new life it replaced the last
 * dispatch's watch, and the controller taking that last write late went unsaid. The real
 * pipeline and journal against sluice-sim; the journal rows an earlier life leaves are written
 * as the pipeline writes them (as SimHarness.dispatchedNotWritten does: the simulator cannot
 * make the daemon die between two of its own statements).
 *
 * And a command whose echo a readback showed while it was open, ended in doubt after the
 * controller's echo changed (another master's write): its write was taken while it was open, and
 * another master's later write of its number was noted as 'the controller took its write, which
 * no readback had shown before the command ended'.
 */

async function harness(onTestFinished: TestContext['onTestFinished']): Promise<SimHarness> {
  const h = await SimHarness.start({
    warm: true,
    timing: { confirmTimeoutMs: 800 },
    plcGraceMs: { mb: 300 },
    monitorMs: 50,
  });
  onTestFinished(() => h.close());
  return h;
}

describe('the late-echo watch of the last dispatch, after a restart', () => {
  it("is kept when an earlier dispatch of the device, taken up, ends in doubt: the last write's late echo is noted", async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    const valve = h.device('v1');
    // The earlier life: the open x dispatched (killed before its write), then the stop s
    // dispatched over it and ended with its write in doubt (no readback showed its echo).
    const x = h.dispatchedNotWritten('x', 1_000);
    const dispatched = h.dispatchedNotWritten('s', 30_000, 1, 'stop');
    const now = Date.now();
    const s = h.journal.settle(dispatched, 'dispatched', {
      to: 'failed',
      code: 'READBACK_TIMEOUT',
      faultCode: null,
      observed: null,
      detail: 'no readback showed its echo within the confirm timeout',
      at: now,
      intake: 'pipeline',
    });
    expect(s.seq).not.toBe(x.seq);
    await h.journal.durable();
    await h.crash();
    // The new life: x is taken up and its device answers no read, so x ends with its effect
    // unknown (in doubt).
    valve.setFault({ kind: 'drop', on: 'read' });
    await h.restart();
    const ended = await h.settled('x', 10_000);
    expect(ended).toMatchObject({ state: 'failed', observed: null });
    expect(valve.writesWithSeq(x.seq!)).toBe(0);
    valve.clearFault('drop');
    // s's write reaches the controller now (it was on its way): taken, echoed.
    valve.receiveWrite({ code: 3, setpoint: 0, seq: s.seq! });
    await h.until(
      () =>
        h.notes('s').some((n) => n.includes(`a later readback shows its sequence number ${s.seq}`)),
      5_000,
      "the stop's late echo noted",
    );
    expect(h.notes('x').some((n) => n.includes('a later readback'))).toBe(false);
  });

  it('does not begin for a command whose echo a readback showed while it was open, the echo changed since', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    const valve = h.device('v1');
    // The valve takes the open and does not move: the readbacks show its echo, OPENING.
    valve.setFault({ kind: 'stuck-travel' });
    h.submit('k1', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await h.until(() => h.get('k1')?.seq != null, 5_000, 'the dispatch');
    const seq = h.get('k1')!.seq!;
    const mirror = () => h.pipeline.devices().find((d) => d.id === 'v1')?.mirror;
    await h.until(() => mirror()?.seq === seq, 5_000, 'a readback showing the echo');
    // Another master's write (a number of its own), taken: the echo changes.
    const other = seq === 65_535 ? 1 : seq + 1;
    valve.receiveWrite({ code: 3, setpoint: 0, seq: other });
    await h.until(() => mirror()?.seq === other, 5_000, "the other master's echo read");
    expect(h.get('k1')?.state).toBe('dispatched');
    const resolved = h.pipeline.resolve({ scope: 'plant', key: 'k1' }, 'ops', 'checked on site');
    expect(resolved).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    await h.pipeline.durableFor(resolved);
    // Another master's write of k1's number, taken, and a readback showing it received well
    // after (a note would be journaled as it arrived).
    valve.receiveWrite({ code: 3, setpoint: 0, seq });
    const after = Date.now();
    await h.until(
      () => mirror()?.seq === seq && (mirror()?.receivedAt ?? 0) > after + 200,
      5_000,
      "the other master's write of k1's number read",
    );
    expect(h.notes('k1').filter((n) => n.includes('a later readback'))).toEqual([]);
    valve.clearFault('stuck-travel');
  });
});
