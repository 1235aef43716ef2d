import { describe, it } from 'vitest';
import { Metrics } from '../../src/daemon/metrics.js';
import { linkedHarness, refusedUnsent } from '../helpers/linked-harness.js';
import { confirmSeconds } from '../helpers/metrics-text.js';

/**
 * sluice_command_confirm_seconds times a command from its first journaled dispatch, every round
 * included (docs/http-api.md), and a command taken up after a restart from the journal's
 * wall-clock times. A command whose first write found no connection (the history says so), left
 * open by a crash and dispatched again by the next life (execution.ts, takeUpUnsent), is timed
 * from the journal's dispatchedAt, its first dispatch: not from the next life's re-dispatch,
 * which left out the wait for the link and the time the daemon was down. The real pipeline,
 * SQLite journal and Modbus driver against sluice-sim, reached through a TCP link refused as
 * the first write is handed to the driver (the simulator cannot time a link drop to that
 * instant; the refusal is the real driver's, finding no connection). Ground truth: the journal's
 * times and the simulator's write log.
 */

describe('a command whose write found no connection, taken up by the next life and confirmed', () => {
  it('is timed from its first journaled dispatch, the earlier life included', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, ...linked } = await linkedHarness(onTestFinished);
    let handed = 0;
    // The open's first write finds the link refused: the real driver refuses it unsent.
    linked.interceptWrites(async (command, signal, write) => {
      if (command.action !== 'open') return write(command, signal);
      handed++;
      await linked.refuseLink();
      return write(command, signal);
    });
    const valve = h.device('v1');
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await refusedUnsent(h, 'o', "o's first write refused for want of a connection");
    const dispatchedAt = h.get('o')!.dispatchedAt!;
    // The command waits for the link in this life for a while, then the process dies.
    await h.until(() => Date.now() - dispatchedAt >= 1_500, 5_000, '1.5 s since the dispatch');
    await h.crash();
    expect(handed).toBe(1);
    await link.accept();
    await h.restart();
    const metrics = new Metrics(h.pipeline, h.clock);
    const o = await h.settled('o', 20_000);
    expect(o, h.notes('o').join('\n')).toMatchObject({ state: 'confirmed', attempts: 2 });
    // Ground truth: the one write in the valve's log is the next life's.
    expect(valve.writesOfSeq(o.seq!)).toHaveLength(1);
    expect(valve.writeLog).toHaveLength(1);
    const fromFirst = (o.settledAt! - o.dispatchedAt!) / 1000;
    expect(o.dispatchedAt).toBe(dispatchedAt);
    expect(fromFirst).toBeGreaterThan(1.5);
    const histogram = await confirmSeconds(metrics);
    expect(histogram.count).toBe(1);
    // Before the fix: timed from the next life's re-dispatch (a fraction of a second).
    expect(histogram.sum).toBeGreaterThan(fromFirst - 0.1);
    expect(histogram.sum).toBeLessThan(fromFirst + 0.1);
  }, 60_000);
});
