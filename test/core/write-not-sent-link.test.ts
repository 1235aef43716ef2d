import { describe, it, type TestContext } from 'vitest';
import { isTerminal } from '../../src/core/command.js';
import type { CommandWrite } from '../../src/core/driver.js';
import { MAX_DISPATCHES } from '../../src/core/journal.js';
import { withheldNote } from '../../src/core/redispatch.js';
import type { SimHarness, SimHarnessOptions } from '../helpers/sim-harness.js';
import { failFdatasync, type FailingFdatasync } from '../helpers/failing-fdatasync.js';
import { linkedHarness, refusedUnsent, unsentLines } from '../helpers/linked-harness.js';
import type { TcpLink } from '../helpers/tcp-link.js';
import { heldAcknowledgedOpen } from '../helpers/withheld-dispatch.js';

/**
 * A write its driver refuses unsent for want of a connection (WriteNotSentError `no-connection`)
 * goes round again within its deadline (execution.ts, goRoundAgain). Cases write-not-sent.test.ts
 * does not cover: the device's previous write still in the controller's hands across the blip,
 * and the daemon restarted while the command waits for the connection. The real pipeline, SQLite
 * journal and Modbus driver against sluice-sim, reached through a TCP link that the test refuses
 * as the write is handed to the driver (the simulator cannot time a link drop to that instant:
 * the write itself is the real driver's, which finds no connection); ground truth: the
 * simulator's write log and valve state, and the journal.
 */

interface LinkedSite {
  readonly h: SimHarness;
  readonly link: TcpLink;
  /**
   * The next write of v1 for which `which` holds is refused unsent: the link is refused as it is
   * handed to the driver, and the driver, its connection lost, is given it. `reopenMs`: the link
   * accepts again that long after (never, when absent).
   */
  refuseNextWrite(
    which: (command: CommandWrite) => boolean,
    reopenMs?: number,
    refused?: () => void,
  ): void;
}

async function linkedSite(
  onTestFinished: TestContext['onTestFinished'],
  options: SimHarnessOptions,
): Promise<LinkedSite> {
  const { h, link, ...linked } = await linkedHarness(onTestFinished, options);
  return {
    h,
    link,
    refuseNextWrite(which, reopenMs, refused) {
      let cut = false;
      linked.interceptWrites(async (command, signal, write) => {
        if (cut || !which(command)) return write(command, signal);
        cut = true;
        await linked.refuseLink();
        try {
          await write(command, signal);
        } finally {
          refused?.();
          if (reopenMs !== undefined) {
            setTimeout(() => {
              void link.accept();
            }, reopenMs);
          }
        }
      });
    },
  };
}

describe('a write refused unsent for want of a connection', () => {
  it("a stop decided behind the controller's held write still decides behind it when it goes round again", async ({
    expect,
    onTestFinished,
  }) => {
    // The open's acknowledged write stays pending for the confirm timeout from its write.
    const { h, ...site } = await linkedSite(onTestFinished, {
      timing: { confirmTimeoutMs: 20_000 },
    });
    const valve = h.device('v1');
    // The open p, acknowledged and held by the controller, resolved by an operator; the stop s
    // is decided on the state p leads to (previous-write.ts, stopAfterPending).
    await heldAcknowledgedOpen(h, 'p');
    const p = h.pipeline.resolve({ scope: 'plant', key: 'p' }, 'ops@test', 'checked');
    expect(p.detail).toMatch(/which acknowledged it: it may have been applied$/);
    // A link blip (no PLC restart: the controller still holds p) as s's write is handed over.
    site.refuseNextWrite((c) => c.action === 'stop', 300);
    h.submit('s', { device: 'v1', action: 'stop', ttlMs: 30_000 });
    await refusedUnsent(h, 's');
    // Until the stop has ended or its write reaches the controller (held there behind the open).
    await h.until(
      () => isTerminal(h.get('s')!.state) || valve.pendingWrites === 2,
      10_000,
      'the stop settled or written',
    );
    valve.clearFault('hold');
    const s = await h.settled('s', 10_000);
    await h.until(
      () =>
        valve.pendingWrites === 0 && ['OPEN', 'CLOSED', 'STOPPED'].includes(valve.snapshot().state),
      5_000,
      'the valve at rest',
    );
    // Ground truth: the stop reached the controller after the open, and the valve stopped.
    // Before the fix the driver's refusal voided the lane's last write, p's with it: the second
    // round confirmed the stop a no-op at CLOSED, never written, and the valve went OPEN (I2).
    expect({ stop: s.state, valve: valve.snapshot().state }).toEqual({
      stop: 'confirmed',
      valve: 'STOPPED',
    });
    expect(valve.writeLog.map((w) => w.seq)).toEqual([p.seq, s.seq]);
    expect(s.attempts).toBe(2);
  }, 60_000);

  it("a stop decided behind the controller's held write that finds no connection until its deadline: the next command still waits for the held write", async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, ...site } = await linkedSite(onTestFinished, {
      timing: { confirmTimeoutMs: 20_000 },
      // Long enough that a read after the open is taken shows it travelling.
      travelMs: 1_000,
    });
    const valve = h.device('v1');
    await heldAcknowledgedOpen(h, 'p');
    const p = h.pipeline.resolve({ scope: 'plant', key: 'p' }, 'ops@test', 'checked');
    // The stop's write finds no connection, and none comes before its deadline.
    site.refuseNextWrite((c) => c.action === 'stop');
    h.submit('s', { device: 'v1', action: 'stop', ttlMs: 1_500 });
    const s = await h.settled('s', 10_000);
    expect(s).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE' });
    await link.accept();
    // A close, while the controller still holds the open: it must wait for it.
    h.submit('c', { device: 'v1', action: 'close', ttlMs: 30_000 });
    await h.until(
      () =>
        isTerminal(h.get('c')?.state ?? 'accepted') ||
        h.notes('c').some((n) => n.includes('not decided yet')),
      10_000,
      'the close waiting, or ended',
    );
    valve.clearFault('hold');
    const c = await h.settled('c', 10_000);
    // Before the fix the stop's unsent write had voided the device's last write, the open's with
    // it: the close was confirmed a no-op at CLOSED, and the controller then took the open (I2).
    // Now it waits, and is decided on a read that shows the open taken: OPENING, where a close is
    // an illegal transition (I4), never written.
    expect(c).toMatchObject({ state: 'rejected', code: 'ILLEGAL_TRANSITION' });
    expect(c.observed).toMatchObject({ state: 'OPENING', seq: p.seq });
    await h.until(
      () => valve.pendingWrites === 0 && valve.snapshot().state === 'OPEN',
      10_000,
      'the valve OPEN',
    );
    expect(valve.writeLog.map((w) => w.seq)).toEqual([p.seq]);
  }, 60_000);

  it('the connection drops again between the fresh read and the retried write: the command goes round once more and its write reaches the valve once', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, ...site } = await linkedSite(onTestFinished, {});
    const valve = h.device('v1');
    // The open's first write, and the write of its second dispatch after the link came back and
    // a fresh read succeeded, each find the link refused as they reach the driver.
    let refusals = 0;
    site.refuseNextWrite(
      (c) => c.action === 'open',
      300,
      () => {
        refusals++;
        site.refuseNextWrite(
          (c) => c.action === 'open',
          300,
          () => {
            refusals++;
          },
        );
      },
    );
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 30_000 });
    const o = await h.settled('o', 25_000);
    const notes = h.notes('o');
    expect(refusals).toBe(2);
    // Before the fix the journal allowed one re-dispatch: the second refusal ended it failed
    // DEVICE_UNREACHABLE ("its second write found none either") with 25 s of its deadline left.
    expect(o, notes.join('\n')).toMatchObject({ state: 'confirmed', attempts: 3 });
    expect(
      notes.filter((n) => n.includes('was not sent: no connection to the controller')),
    ).toHaveLength(2);
    expect(notes.filter((n) => n.startsWith('dispatched: redispatch: '))).toEqual([
      expect.stringMatching(
        /^dispatched: redispatch: the first write \(sequence number \d+\) found no connection/,
      ),
      expect.stringMatching(
        /^dispatched: redispatch: the latest write \(sequence number \d+\) found no connection/,
      ),
    ]);
    // Ground truth (I1): one write of its number reached the valve, and no other write.
    expect(valve.writesOfSeq(o.seq!)).toHaveLength(1);
    expect(valve.writeLog).toHaveLength(1);
    expect(valve.snapshot().state).toMatch(/^OPEN/);
  }, 60_000);

  it('the command waiting for the connection writes as the link comes back, not at its next read pause', async ({
    expect,
    onTestFinished,
  }) => {
    // Read pauses far longer than the wait for the link: before the fix the command read again
    // only a pause (here 5 s; 2 s at most with the pauses a profile gets at its 1 s default)
    // after its failed read, however soon the PLC accepted again.
    const pollIntervalMs = 5_000;
    const { h, link, ...site } = await linkedSite(onTestFinished, {
      timing: { pollIntervalMs, confirmTimeoutMs: 15_000 },
    });
    const valve = h.device('v1');
    const reopened: { at: number | null } = { at: null };
    site.refuseNextWrite(
      (c) => c.action === 'open',
      undefined,
      () => {
        setTimeout(() => {
          void link.accept().then(() => {
            reopened.at = Date.now();
          });
        }, 300);
      },
    );
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await refusedUnsent(h, 'o');
    const seq = h.get('o')!.seq!;
    await h.until(() => valve.writesOfSeq(seq).length > 0, 10_000, 'the write received');
    const writes = valve.writesOfSeq(seq);
    expect(writes).toHaveLength(1);
    const after = writes[0]!.receivedAt - reopened.at!;
    // From the PLC accepting connections again to its write: the driver's reconnect (its
    // backoff after the refused attempts, 0.2 s doubling, jittered), a read, the skew's clock
    // reads and the dispatch's fsync. Well below the shortest pause the old reads could make.
    expect(after, h.notes('o').join('\n')).toBeLessThan(2_000);
    expect(await h.settled('o', 20_000)).toMatchObject({ state: 'confirmed', attempts: 2 });
  }, 60_000);

  it('a link that drops before every write: the command goes round at most MAX_DISPATCHES times, then ends DEVICE_UNREACHABLE, never written', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, ...site } = await linkedSite(onTestFinished, {});
    const valve = h.device('v1');
    let refusals = 0;
    const refuseEach = (): void => {
      site.refuseNextWrite(
        (c) => c.action === 'open',
        100,
        () => {
          refusals++;
          refuseEach();
        },
      );
    };
    refuseEach();
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 60_000 });
    const o = await h.settled('o', 50_000);
    expect(o, h.notes('o').join('\n')).toMatchObject({
      state: 'failed',
      code: 'DEVICE_UNREACHABLE',
      attempts: MAX_DISPATCHES,
    });
    expect(o.detail).toMatch(
      new RegExp(
        `^the write never reached the controller: the command was dispatched ${MAX_DISPATCHES} times .*nothing was applied$`,
      ),
    );
    expect(refusals).toBe(MAX_DISPATCHES);
    // Its deadline was far: the cap ended it, not the deadline.
    expect(o.settledAt!).toBeLessThan(o.deadline);
    // Ground truth: nothing reached the valve.
    expect(valve.writeLog).toHaveLength(0);
  }, 60_000);

  it('the journal fails to make the second dispatch durable: the write is withheld, taken up, decided again and written once within the deadline', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, ...site } = await linkedSite(onTestFinished, {});
    const valve = h.device('v1');
    let disk: FailingFdatasync | null = null;
    onTestFinished(() => disk?.restore());
    // The next flush after the refusal fails: the second dispatch's (nothing else asks for one).
    site.refuseNextWrite(
      (c) => c.action === 'open',
      300,
      () => {
        disk = failFdatasync(1);
      },
    );
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 8_000 });
    await refusedUnsent(h, 'o');
    const seq = h.get('o')!.seq!;
    await h.until(() => (disk?.failures ?? 0) === 1, 10_000, 'the failed flush');
    const o = await h.settled('o', 20_000);
    const notes = h.notes('o');
    // Its first write never left the gateway (no connection) and its second was withheld: the
    // take-up decides it again on a fresh read and dispatches it once more, neither write before
    // counting as one that may have left (redispatch.ts, writesMaybeSent). Before an earlier fix the
    // journal allowed no third dispatch: failed DEVICE_UNREACHABLE "already dispatched twice …
    // nothing was applied" with seconds of its deadline left.
    expect(o, notes.join('\n')).toMatchObject({ state: 'confirmed', attempts: 3, seq });
    expect(notes).toContainEqual(`dispatched: ${withheldNote(seq, true, 'decided again')}`);
    expect(notes.filter((n) => n.startsWith('dispatched: redispatch: '))).toHaveLength(2);
    // Ground truth (I1): one write of its number reached the valve, and no other write.
    expect(valve.writesOfSeq(seq)).toHaveLength(1);
    expect(valve.counters.writesReceived).toBe(1);
  }, 60_000);

  it('the daemon restarted while the command waits for the connection: the next life takes it up as never sent and writes it once', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, ...site } = await linkedSite(onTestFinished, {});
    const valve = h.device('v1');
    site.refuseNextWrite((c) => c.action === 'open');
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await refusedUnsent(h, 'o');
    const seq = h.get('o')!.seq!;
    expect(h.get('o')).toMatchObject({ state: 'dispatched', attempts: 1 });
    // The line on disk before the crash (it loses the open batch): the next life goes by it.
    await h.journal.durable();
    const unsent = unsentLines(h, 'o');
    expect(unsent).toHaveLength(1);
    await h.crash();
    await link.accept();
    const restartedAt = Date.now();
    await h.restart();
    // The premise: the next life found the line (the link is back: it writes none itself).
    expect(unsentLines(h, 'o')).toEqual(unsent);
    const o = await h.settled('o', 10_000);
    expect(o).toMatchObject({ state: 'confirmed', attempts: 2, seq });
    expect(h.notes('o')).toContainEqual(
      expect.stringMatching(
        /^dispatched: taken up: its write \(sequence number \d+\) found no connection to the controller and was not sent \(the history says so\)/,
      ),
    );
    // Ground truth: one write of its number, in the new life.
    const writes = valve.writesOfSeq(seq);
    expect(writes).toHaveLength(1);
    expect(writes[0]!.receivedAt).toBeGreaterThanOrEqual(restartedAt);
    expect(valve.counters.writesReceived).toBe(1);
  }, 60_000);

  it('the daemon restarted while the command waits for the connection a second time: the next life takes it up as never written and writes it once', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, ...site } = await linkedSite(onTestFinished, {});
    const valve = h.device('v1');
    // The first write refused (the link back 0.3 s later), then the re-dispatched one too, the
    // link then refused until the next life.
    site.refuseNextWrite(
      (c) => c.action === 'open',
      300,
      () => {
        site.refuseNextWrite((c) => c.action === 'open');
      },
    );
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await h.until(
      () =>
        h.notes('o').filter((n) => n.includes('was not sent: no connection to the controller'))
          .length === 2,
      15_000,
      'both writes refused for want of a connection',
    );
    const seq = h.get('o')!.seq!;
    expect(h.get('o')).toMatchObject({ state: 'dispatched', attempts: 2 });
    // The lines on disk before the crash (it loses the open batch): the next life goes by them.
    await h.journal.durable();
    const unsent = unsentLines(h, 'o');
    expect(unsent).toHaveLength(2);
    await h.crash();
    await link.accept();
    const restartedAt = Date.now();
    await h.restart();
    // The premise: the next life found both lines (the link is back: it writes none itself).
    expect(unsentLines(h, 'o')).toEqual(unsent);
    const o = await h.settled('o', 10_000);
    // Dispatched twice, neither write sent: taken up as a command not yet written. Before the
    // fix (one re-dispatch per command) it ended failed DEVICE_UNREACHABLE, "already dispatched
    // twice" — it did not get that far: its second refusal ended it.
    expect(o, h.notes('o').join('\n')).toMatchObject({ state: 'confirmed', attempts: 3, seq });
    expect(h.notes('o')).toContainEqual(
      expect.stringMatching(
        /^dispatched: taken up: its write \(sequence number \d+\) found no connection to the controller and was not sent \(the history says so\)/,
      ),
    );
    // Ground truth: one write of its number, in the new life.
    const writes = valve.writesOfSeq(seq);
    expect(writes).toHaveLength(1);
    expect(writes[0]!.receivedAt).toBeGreaterThanOrEqual(restartedAt);
    expect(valve.counters.writesReceived).toBe(1);
  }, 60_000);

  it('an operator resolves a command waiting for the connection after its second write found none too: the resolve says it was not sent, and it never is', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, ...site } = await linkedSite(onTestFinished, {});
    const valve = h.device('v1');
    site.refuseNextWrite(
      (c) => c.action === 'open',
      300,
      () => {
        site.refuseNextWrite((c) => c.action === 'open');
      },
    );
    h.submit('o', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await h.until(
      () =>
        h.notes('o').filter((n) => n.includes('was not sent: no connection to the controller'))
          .length === 2,
      15_000,
      'both writes refused for want of a connection',
    );
    const seq = h.get('o')!.seq!;
    const o = h.pipeline.resolve({ scope: 'plant', key: 'o' }, 'ops@test', 'checked');
    // Before the fix the resolve said "whether it reached the controller is unknown: it may have
    // been applied" of a command none of whose writes left the gateway (dispatched twice).
    expect(o).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR', attempts: 2 });
    expect(o.detail).toMatch(/had been dispatched and was not yet sent, and it is not sent/);
    // The link back, and a command after it on the valve: the device's queue reaches it only
    // once the resolved command's worker has let go, which never wrote it.
    await link.accept();
    h.submit('after', { device: 'v1', action: 'open', ttlMs: 30_000 });
    const after = await h.settled('after', 15_000);
    expect(after).toMatchObject({ state: 'confirmed' });
    expect(valve.writesOfSeq(seq)).toHaveLength(0);
    expect(valve.writeLog.map((w) => w.seq)).toEqual([after.seq]);
  }, 60_000);

  it('the daemon down past the deadline of a command waiting for the connection: the next life ends it DEVICE_UNREACHABLE, never written', async ({
    expect,
    onTestFinished,
  }) => {
    const { h, link, ...site } = await linkedSite(onTestFinished, {});
    const valve = h.device('v1');
    site.refuseNextWrite((c) => c.action === 'open');
    h.submit('late', { device: 'v1', action: 'open', ttlMs: 2_000 });
    await refusedUnsent(h, 'late');
    const dispatched = h.get('late')!;
    // The line on disk before the crash (it loses the open batch): the next life goes by it.
    await h.journal.durable();
    const unsent = unsentLines(h, 'late');
    expect(unsent).toHaveLength(1);
    await h.crash();
    await link.accept();
    while (Date.now() <= dispatched.deadline) await new Promise((r) => setTimeout(r, 50));
    await h.restart();
    // The premise: the next life found the line (the link is back: it writes none itself).
    expect(unsentLines(h, 'late')).toEqual(unsent);
    const r = await h.settled('late', 10_000);
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 1 });
    expect(r.detail).toMatch(/^the write never reached the controller: .*nothing was applied$/);
    // Ground truth: nothing reached the valve.
    expect(valve.writesOfSeq(dispatched.seq!)).toHaveLength(0);
    expect(valve.counters.writesReceived).toBe(0);
  }, 60_000);
});
