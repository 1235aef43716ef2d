import { afterEach, describe, expect, it } from 'vitest';
import { takeUpAt } from '../../src/core/open-commands.js';
import { stuckItems } from '../../src/views/open-commands.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * Recovery at start (I5) on the real parts: a pipeline with the real drivers against sluice-sim
 * on a real journal file, "killed" (journal closed, workers abandoned, sockets gone) and
 * started again on the same file while the simulated plant runs on. Every open command is
 * settled by reading the controller — never by a blind re-write — and ends with a specific
 * outcome. Ground truth: the simulator's write log.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('recovery at start (I5): settled by reading the controller', () => {
  it('confirms a command whose write was taken before the crash, without writing again', async () => {
    h = await SimHarness.start({ travelMs: 600 });
    h.submit('k1', { device: 'v1', action: 'open' });
    await h.until(() => h!.device('v1').counters.writesReceived === 1, 5_000, 'the write');
    await h.crash();
    expect(await h.restart()).toBe(1);
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.writesWithSeq('v1', r.seq!)).toBe(1);
    expect(h.device('v1').counters.writesReceived).toBe(1);
  });

  it('dispatches once more a command provably never written, before its deadline', async () => {
    // A device that has taken commands before: its echo is not the power-up 0.
    h = await SimHarness.start({ warm: true });
    const d = h.dispatchedNotWritten('k1', 5_000);
    // On disk before the crash, as an intake or the admin endpoint answers only then
    // (a crash loses the batch still open).
    await h.journal.durable();
    await h.crash();
    await h.restart();
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 2, seq: d.seq });
    expect(h.writesWithSeq('v1', d.seq!)).toBe(1);
    expect(h.notes('k1').some((n) => n.includes('redispatch: sequence number'))).toBe(true);
  });

  it('a device a local operator moved meanwhile: unprovable, and the failure says why', async () => {
    h = await SimHarness.start();
    const valve = h.device('v1');
    h.dispatchedNotWritten('k1', 1_500);
    // On disk before the crash, as an intake or the admin endpoint answers only then
    // (a crash loses the batch still open).
    await h.journal.durable();
    await h.crash();
    // By hand to fully open, then back to REMOTE: the echo is unchanged, the state is not.
    valve.setLocal(true, 100);
    await h.until(() => valve.snapshot().published.state === 'LOCAL', 2_000, 'LOCAL');
    valve.setLocal(false);
    await h.until(() => valve.snapshot().published.state === 'OPEN', 2_000, 'back in REMOTE');
    await h.restart();
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
    expect(r.detail).toMatch(/moved from CLOSED to OPEN.*applied is unknown/);
    expect(valve.counters.writesReceived).toBe(0);
  });

  it('runs an accepted command that was never dispatched through its normal course', async () => {
    h = await SimHarness.start();
    h.plant.plc('mb').setFault({ kind: 'reset', when: 'before', on: 'both' });
    h.submit('k1', { device: 'v1', action: 'open' });
    // On disk before the crash, as an intake or the admin endpoint answers only then
    // (a crash loses the batch still open).
    await h.journal.durable();
    await h.crash();
    h.plant.plc('mb').clearFault('reset');
    await h.restart();
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.writesWithSeq('v1', r.seq!)).toBe(1);
  });

  it('takes a dispatched command up before the commands accepted after it on its device', async () => {
    h = await SimHarness.start({ warm: true });
    const a = h.dispatchedNotWritten('A', 5_000);
    h.journal.claim({
      scope: 'plant',
      key: 'B',
      fingerprint: 'b',
      device: 'v1',
      action: 'close',
      position: null,
      issuedAt: Date.now(),
      issuedAtSource: 'gateway',
      ttlMs: 5_000,
      deadline: Date.now() + 5_000,
      intake: 'https',
      acceptedAt: Date.now(),
    });
    // On disk before the crash, as an intake or the admin endpoint answers only then
    // (a crash loses the batch still open).
    await h.journal.durable();
    await h.crash();
    await h.restart();
    const [ra, rb] = [await h.settled('A'), await h.settled('B')];
    expect(ra).toMatchObject({ state: 'confirmed', attempts: 2 });
    expect(rb).toMatchObject({ state: 'confirmed' });
    expect(h.device('v1').writeLog.map((w) => w.seq)).toEqual([a.seq, rb.seq]);
  });

  it('confirms a command still travelling, and fails one that faulted meanwhile (0x81)', async () => {
    h = await SimHarness.start({ travelMs: 600 });
    h.submit('k1', { device: 'v1', action: 'open' });
    h.submit('k2', { device: 'v2', action: 'open' });
    await h.until(
      () =>
        h!.device('v1').counters.writesReceived === 1 &&
        h!.device('v2').counters.writesReceived === 1,
      5_000,
      'both writes',
    );
    h.device('v2').setFault({ kind: 'stuck-travel' });
    await h.crash();
    await h.restart();
    const [a, b] = [await h.settled('k1'), await h.settled('k2')];
    expect(a).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(b).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT', faultCode: '0x81' });
    expect(h.device('v1').counters.writesReceived).toBe(1);
    expect(h.device('v2').counters.writesReceived).toBe(1);
  });

  it('keeps trying to reach an OPC UA PLC down at restart for longer than a confirm timeout', async () => {
    // A confirm timeout far shorter than an OPC UA session set-up; the grace covers it.
    h = await SimHarness.start({
      opcua: true,
      travelMs: 400,
      timing: { confirmTimeoutMs: 300, redispatchGuardMs: 600 },
      unreachableGraceMs: 8_000,
    });
    // The first OPC UA session makes its client certificate first: seconds on a busy machine.
    h.submit('k1', { device: 'u1', action: 'open', ttlMs: 20_000 });
    await h.until(() => h!.device('u1').counters.writesReceived === 1, 20_000, 'the write');
    await h.crash();
    // The PLC's link is down for 1.5 s after the restart: every request is reset.
    const ua = h.plant.plc('ua');
    ua.setFault({ kind: 'reset', when: 'before', on: 'both' });
    const linkBack = setTimeout(() => ua.clearFault('reset'), 1_500);
    await h.restart();
    const r = await h.settled('k1', 15_000).finally(() => {
      clearTimeout(linkBack);
    });
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.writesWithSeq('u1', r.seq!)).toBe(1);
  }, 60_000);

  // A PLC's own grace (plcs.<name>.unreachableGraceMs) in place of the pipeline's: a plant whose
  // controller needs longer than 15 s to come back after a power cycle sets a longer one, and
  // one that answers at once or not at all may end the wait sooner.
  const takenUpAt = (key: string): number | undefined =>
    takeUpAt(h!.journal.history({ scope: 'plant', key })) ?? undefined;

  it("ends a take-up DEVICE_UNREACHABLE after its PLC's short grace, not the pipeline's 15 s", async () => {
    h = await SimHarness.start({
      travelMs: 1_000,
      timing: { confirmTimeoutMs: 1_000, redispatchGuardMs: 600 },
      unreachableGraceMs: 15_000,
      plcGraceMs: { mb: 2_500 },
    });
    h.submit('k1', { device: 'v1', action: 'open', ttlMs: 1_500 });
    await h.until(() => h!.device('v1').counters.writesReceived === 1, 5_000, 'the write');
    await h.crash();
    // The PLC does not answer after the restart: every request is reset.
    const mb = h.plant.plc('mb');
    mb.setFault({ kind: 'reset', when: 'before', on: 'both' });
    try {
      await h.restart();
      // Within 10 s: the pipeline's 15 s would not end it by then.
      const r = await h.settled('k1', 10_000);
      expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 1 });
      const takenUp = takenUpAt('k1');
      expect(takenUp).toBeDefined();
      // Read for the grace from the take-up (its deadline and confirm timeout end sooner).
      const read = (r.settledAt ?? 0) - takenUp!;
      expect(read).toBeGreaterThanOrEqual(2_400);
      expect(read).toBeLessThan(8_000);
      expect(h.device('v1').counters.writesReceived).toBe(1);
    } finally {
      mb.clearFault('reset');
    }
  }, 30_000);

  it("keeps a take-up open for its PLC's longer grace: not stuck, and settled by readback once the PLC is back", async () => {
    // The pipeline's grace is 1 s (the harness's); the Modbus PLC's own is 20 s: far longer
    // than the PLC is down here, so that the driver's reconnect backoff (doubling from 200 ms
    // while the link refuses, 3.2 s and more by the time it is back) cannot outlast it on a
    // loaded machine. The test ends once the command settles, not at the grace's end.
    h = await SimHarness.start({
      travelMs: 1_000,
      timing: { confirmTimeoutMs: 1_000, redispatchGuardMs: 600 },
      plcGraceMs: { mb: 20_000 },
    });
    h.submit('k1', { device: 'v1', action: 'open', ttlMs: 1_500 });
    await h.until(() => h!.device('v1').counters.writesReceived === 1, 5_000, 'the write');
    await h.crash();
    const mb = h.plant.plc('mb');
    mb.setFault({ kind: 'reset', when: 'before', on: 'both' });
    let linkBackAt: number;
    try {
      await h.restart();
      await h.until(() => takenUpAt('k1') !== undefined, 5_000, 'the take-up');
      const takenUp = takenUpAt('k1')!;
      const record = h.journal.get({ scope: 'plant', key: 'k1' })!;
      // The PLC stays down until well past the end of the window the pipeline's grace would
      // give the take-up (the longest of it, the confirm timeout and the time to the deadline),
      // and past the command's deadline plus confirm timeout (from then on it would be stuck
      // but for its take-up).
      const shortWindowEnd = Math.max(takenUp + 1_000, record.deadline + 1_000);
      await h.until(() => Date.now() > shortWindowEnd + 1_500, 10_000, 'the short window to pass');
      // Still being settled, by the journal; and neither the daemon's rule (/readyz, /metrics)
      // nor the views (sluicectl stuck, the status page) call it stuck, as they would with the
      // pipeline's grace.
      expect(h.journal.get({ scope: 'plant', key: 'k1' })?.state).toBe('dispatched');
      expect(h.pipeline.openCommands().stuck).toEqual([]);
      const now = Date.now();
      const timings = h.pipeline.deviceTimings();
      expect(timings.get('v1')?.unreachableGraceMs).toBe(20_000);
      const judged = (t: typeof timings): boolean | undefined =>
        stuckItems(h!.journal.listOpen(), 0, now, t, h!.journal).find((i) => i.key === 'k1')?.stuck;
      expect(judged(timings)).toBe(false);
      const withDefault = new Map(
        [...timings].map(([id, t]) => [id, { ...t, unreachableGraceMs: 1_000 }]),
      );
      expect(judged(withDefault)).toBe(true);
    } finally {
      linkBackAt = Date.now();
      mb.clearFault('reset');
    }
    const r = await h.settled('k1', 20_000);
    expect(r).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(r.settledAt).toBeGreaterThanOrEqual(linkBackAt);
    expect(h.writesWithSeq('v1', r.seq!)).toBe(1);
    expect(h.device('v1').counters.writesReceived).toBe(1);
  }, 45_000);
});
