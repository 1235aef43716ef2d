import { describe, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';
import { dispatchFlushFailed, heldAcknowledgedOpen } from '../helpers/withheld-dispatch.js';

/**
 * A stop's history line "decided on the state the device's previous write leads to: the write
 * of p …" (previous-write.ts, stopAfterPendingNote) is journaled before the stop's dispatch. A
 * life that journaled it and ended before the dispatch (killed while the controller clock was
 * read) leaves it in the history of a stop still `accepted`; the next life decides the stop
 * afresh — on its read alone once the controller shows p taken (its echo) — and journals no such
 * line. A later reading of the line as that dispatch's decision (earlierLastWrite's
 * decidedBehind, at a start after the stop's write was withheld and resolved) named p as the
 * device's last write the controller might still take, and held the next command for it though
 * the stop's own read had shown p taken: a close waited out its TTL, STALE_COMMAND, the valve
 * left OPEN (a false failure). The real pipeline and journal against sluice-sim; judged from the
 * simulator's write log and state and the journal.
 */

const TRAVEL_MS = 3_000;

describe("a stop's decision line journaled by a life that never dispatched it", () => {
  it('is not read as the decision of a later life that dispatched the stop on its read alone', async ({
    expect,
    onTestFinished,
  }) => {
    // No sweep (the withheld stop is resolved before anything takes it up); the skew measured
    // before every dispatch, so that a slow controller clock read leaves the stop's line
    // journaled and its dispatch not yet made; an acknowledged write's bound (the confirm
    // timeout) far longer than the close's TTL.
    const h = await SimHarness.start({
      warm: true,
      travelMs: TRAVEL_MS,
      requestTimeoutMs: 2_000,
      skewMaxAgeMs: 1,
      sweepMs: 600_000,
      timing: { redispatchGuardMs: 3_000, confirmTimeoutMs: 60_000 },
    });
    onTestFinished(() => h.close());
    const valve = h.device('v1');
    const plc = h.plant.plc('mb');

    // Life 1: the open p, acknowledged and held by the controller, resolved by an operator.
    await heldAcknowledgedOpen(h, 'p');
    const p = h.pipeline.resolve({ scope: 'plant', key: 'p' }, 'ops@test', 'checked');
    expect(p.detail).toMatch(/which acknowledged it: it may have been applied$/);
    // The stop s, decided behind the held open (its line journaled); every read now slow, so
    // the controller clock read before its dispatch is still out when the process dies.
    plc.setFault({ kind: 'latency', ms: 800, on: 'read' });
    h.submit('s', { device: 'v1', action: 'stop', ttlMs: 60_000 });
    await h.until(
      () =>
        h.notes('s').some((n) => n.includes("decided on the state the device's previous write")),
      5_000,
      "the stop's decision line",
    );
    await h.journal.durable();
    expect(h.get('s')).toMatchObject({ state: 'accepted', seq: null });
    await h.crash();

    // Between lives the controller takes the open (OPENING); the next life's first read of the
    // valve (the stop's) is held until the flush that fails is the stop's dispatch's.
    plc.clearFault('latency');
    valve.clearFault('hold');
    await h.until(() => valve.snapshot().state === 'OPENING', 2_000, 'the open taken');
    valve.setFault({ kind: 'stall', on: 'read', count: 1 });
    await h.restart();
    const { record: s, disk } = await dispatchFlushFailed(h, onTestFinished, 's', 'answered');
    // Life 2 decided the stop on its read alone: that read shows the open taken (its echo).
    expect(s.observedBefore).toMatchObject({ state: 'OPENING', seq: p.seq });
    await h.until(
      () => h.pipeline.devices().find((d) => d.id === 'v1')?.unresolved === 's',
      5_000,
      'the withheld stop left to the sweep',
    );
    const resolved = h.pipeline.resolve({ scope: 'plant', key: 's' }, 'ops@test', 'checked');
    expect(resolved.detail).toContain('was never sent');
    await h.journal.durable();
    disk.restore();
    // The open travels to its end; then another master's stop (a no-op at rest) changes the
    // echo, so no readback shows the open's number any more.
    await h.until(() => valve.snapshot().state === 'OPEN', 2 * TRAVEL_MS, 'the valve OPEN');
    valve.receiveWrite({ code: 3, setpoint: 0, seq: 900 }, Date.now());
    await h.until(() => valve.snapshot().seqEcho === 900, 2_000, "the other master's stop");
    await h.crash();

    // Life 3: a close. Nothing of the device's writes may still land: the open was taken before
    // the stop was decided, and the stop was never sent.
    await h.restart();
    h.submit('c', { device: 'v1', action: 'close', ttlMs: 4_000 });
    const c = await h.settled('c', 10_000);
    await h.until(
      () => ['OPEN', 'CLOSED'].includes(valve.snapshot().state) && valve.pendingWrites === 0,
      2 * TRAVEL_MS,
      'the valve at rest',
    );
    // Ground truth: the close written and the valve CLOSED; the stop never written.
    expect({ close: c.state, code: c.code, valve: valve.snapshot().state }).toEqual({
      close: 'confirmed',
      code: 'OK',
      valve: 'CLOSED',
    });
    expect(valve.writeLog.map((w) => w.seq)).toEqual([p.seq, 900, c.seq]);
  });
});
