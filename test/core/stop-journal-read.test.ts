import { afterEach, describe, expect, it } from 'vitest';
import { readFaults } from '../helpers/read-faults.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * SPEC §2 when the journal cannot be read for a moment inside a stop's take-over: the commands
 * accepted on the device before the stop and not yet written still end `rejected`
 * `SUPERSEDED` and are never written, the travel in flight is still stopped (the command ends
 * `failed` `INTERRUPTED`), and the commands accepted after the stop run as usual. A read
 * failure cannot be produced by the simulator nor by a filesystem fault that lets the stop be
 * accepted: the journal's reads of chosen commands fail through a double
 * (test/helpers/read-faults.ts) for exactly the stop's acceptance. Ground truth: the
 * simulator's write log and live state, and the journal's rows.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('a stop whose take-over cannot read the journal', () => {
  for (const [unread, what] of [
    [['b'], 'a queued command'],
    [['a'], 'the command in flight'],
    [['a', 'b', 'c'], 'every command of the device'],
  ] as const) {
    it(`the read of ${what} fails: nothing accepted before the stop is written after it, and the travel is stopped`, async () => {
      h = await SimHarness.start({ travelMs: 1_500, timing: { confirmTimeoutMs: 5_000 } });
      const valve = h.device('v1');
      h.submit('a', { device: 'v1', action: 'open' });
      h.submit('b', { device: 'v1', action: 'close' });
      h.submit('c', { device: 'v1', action: 'open' });
      await h.until(() => valve.snapshot().position >= 20, 10_000, 'v1 at 20 %');
      const faults = readFaults(h.journal, new Set(unread));
      h.submit('s', { device: 'v1', action: 'stop' });
      faults.armed = false;
      expect(faults.failed).toBeGreaterThan(0);
      h.submit('d', { device: 'v1', action: 'close' });
      const [a, b, c, s, d] = [
        await h.settled('a'),
        await h.settled('b'),
        await h.settled('c'),
        await h.settled('s'),
        await h.settled('d'),
      ];
      expect(s).toMatchObject({ state: 'confirmed', code: 'OK' });
      expect(s.observed?.state).toBe('STOPPED');
      expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
      expect(a.detail).toMatch(/^stopped by s at \d+(\.\d)? %/);
      for (const superseded of [b, c]) {
        expect(superseded).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
        expect(superseded.detail).toMatch(/^superseded by the stop s,/);
      }
      expect(d).toMatchObject({ state: 'confirmed', code: 'OK' });
      // Ground truth: the open, the stop while it travelled, then the close accepted after the
      // stop; the commands the stop superseded never reached the valve.
      expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, s.seq, d.seq]);
      const [openTaken, stopTaken] = valve.writeLog.map((w) => w.settledAt);
      expect(stopTaken! - openTaken!).toBeLessThan(1_500);
      expect(valve.snapshot().state).toBe('CLOSED');
      expect(h.journal.listOpen()).toEqual([]);
    });
  }

  it('the command a stop preempted before its write cannot be read back after it: superseded, never written', async () => {
    h = await SimHarness.start({ requestTimeoutMs: 1_000, timing: { redispatchGuardMs: 1_200 } });
    const valve = h.device('v1');
    // Reads take 300 ms: the open is still reading its device when the stop comes.
    h.plant.plc('mb').setFault({ kind: 'latency', ms: 300, on: 'read' });
    h.submit('a', { device: 'v1', action: 'open' });
    h.submit('s', { device: 'v1', action: 'stop' });
    // The take-over went through; the read of the open after its handling was aborted fails,
    // and the device is left waiting for the sweep to take the open up again.
    const faults = readFaults(h.journal, new Set(['a']));
    await h.until(() => faults.failed > 0, 5_000, 'the failed read');
    faults.armed = false;
    const [a, s] = [await h.settled('a'), await h.settled('s')];
    expect(a).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
    expect(a.detail).toMatch(/^superseded by the stop s,/);
    expect(s).toMatchObject({ state: 'confirmed' });
    expect(s.detail).toMatch(/no-op/);
    expect(valve.counters.writesReceived).toBe(0);
    expect(valve.snapshot().state).toBe('CLOSED');
  });

  it('the command a stop interrupted cannot be read once the stop is confirmed: taken up when it can, INTERRUPTED', async () => {
    h = await SimHarness.start({ travelMs: 1_500, timing: { confirmTimeoutMs: 5_000 } });
    const valve = h.device('v1');
    h.submit('a', { device: 'v1', action: 'open' });
    await h.until(() => valve.snapshot().position >= 30, 10_000, 'v1 at 30 %');
    h.submit('s', { device: 'v1', action: 'stop' });
    await h.until(() => valve.counters.writesReceived === 2, 5_000, 'the stop');
    // The stop was decided and written; the open cannot be read when the stop is terminal.
    const faults = readFaults(h.journal, new Set(['a']));
    await h.until(() => faults.failed > 0, 5_000, 'the failed read');
    faults.armed = false;
    const [a, s] = [await h.settled('a'), await h.settled('s')];
    expect(s).toMatchObject({ state: 'confirmed', code: 'OK' });
    expect(a).toMatchObject({ state: 'failed', code: 'INTERRUPTED', attempts: 1 });
    expect(a.detail).toMatch(/^stopped by s at /);
    expect(valve.writeLog.map((w) => w.seq)).toEqual([a.seq, s.seq]);
    expect(valve.snapshot().state).toBe('STOPPED');
  });
});
