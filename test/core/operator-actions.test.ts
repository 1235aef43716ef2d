import { afterEach, describe, expect, it } from 'vitest';
import { systemClock } from '../../src/core/clock.js';
import { resolveAndSync } from '../../src/core/operator-resolve.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * An operator's resolve racing the daemon's own worker (SPEC §7), on the real parts (the
 * pipeline with the real drivers against sluice-sim, a real journal file). The resolve writes
 * nothing; what the journal says of the command's *own* write must be true: a write that
 * reached the controller before or during the resolve may be applied, and the valve moves.
 * Ground truth: the simulator's write log and live state.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

describe('resolve of a dispatched command', () => {
  it('while its write is on the wire: the outcome does not say nothing was written, the history says it was', async () => {
    h = await SimHarness.start({ requestTimeoutMs: 1_000, timing: { redispatchGuardMs: 1_200 } });
    const valve = h.device('v1');
    // The PLC applies the write at once and answers 400 ms later: on the wire meanwhile.
    h.plant.plc('mb').setFault({ kind: 'latency', ms: 400, on: 'write' });
    h.submit('k1', { device: 'v1', action: 'open' });
    await h.until(() => valve.counters.writesReceived === 1, 5_000, 'the write');
    const resolved = h.pipeline.resolve({ scope: 'plant', key: 'k1' }, 'ops@test', 'checking');
    expect(resolved).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
    expect(resolved.detail).toMatch(
      /^resolved by "ops@test": "checking"; the operator's action wrote nothing to the controller; the command's write \(sequence number \d+\) was on its way to the controller/,
    );
    expect(resolved.detail).not.toMatch(/nothing was written/);
    // The worker learns the write's fate and puts it in the history.
    await h.until(
      () => h!.notes('k1').some((n) => n.includes("after the operator's resolve")),
      5_000,
      'the note',
    );
    const note = h.notes('k1').find((n) => n.includes("after the operator's resolve"));
    expect(note).toMatch(
      new RegExp(
        `sequence number ${resolved.seq}\\) had been sent, and the controller acknowledged it`,
      ),
    );
    // Ground truth: the write reached the valve once, and the valve opens.
    expect(valve.writesWithSeq(resolved.seq!)).toBe(1);
    await h.until(() => valve.snapshot().state === 'OPEN', 5_000, 'OPEN');
    expect(h.get('k1')).toMatchObject({ state: 'failed', code: 'RESOLVED_BY_OPERATOR' });
  });

  it('after its write was acknowledged: the outcome says the controller may act on it', async () => {
    h = await SimHarness.start();
    const valve = h.device('v1');
    valve.setFault({ kind: 'stuck-travel' });
    const { record } = h.submit('k1', { device: 'v1', action: 'open' });
    // The worker reads back after the acknowledged write: the mirror shows its echo.
    let seq: number | null = null;
    await h.until(
      () => {
        seq = h!.get('k1')?.seq ?? null;
        return seq !== null && h!.pipeline.device('v1')?.mirror?.seq === seq;
      },
      5_000,
      'a readback after the write',
    );
    const resolved = h.pipeline.resolve(record, 'ops@test', 'valve jammed');
    expect(resolved.detail).toBe(
      `resolved by "ops@test": "valve jammed"; the operator's action wrote nothing to the controller, but the command's write (sequence number ${seq}) had reached the controller before, which acknowledged it: it may have been applied`,
    );
    // Ground truth: it was taken; freed, the valve finishes the travel the write asked for.
    expect(valve.writesWithSeq(seq!)).toBe(1);
    valve.clearFault('stuck-travel');
    await h.until(() => valve.snapshot().state === 'OPEN', 5_000, 'OPEN');
  });

  it('of a command never dispatched still says nothing was written', async () => {
    h = await SimHarness.start();
    // Reads take 300 ms: the command is still reading its device, accepted.
    h.plant.plc('mb').setFault({ kind: 'latency', ms: 300, on: 'read' });
    const { record } = h.submit('k1', { device: 'v1', action: 'open' });
    const resolved = h.pipeline.resolve(record, 'ops@test', 'not wanted');
    expect(resolved.detail).toBe(
      'resolved by "ops@test": "not wanted"; nothing was written to the controller',
    );
    h.plant.plc('mb').clearFault('latency');
    // The device moves on (the next command is written and confirmed): the first never was.
    h.submit('k2', { device: 'v1', action: 'open' });
    const next = await h.settled('k2');
    expect(next).toMatchObject({ state: 'confirmed' });
    expect(h.device('v1').writeLog.map((w) => w.seq)).toEqual([next.seq]);
  });
});

describe('the same resolve asked again', () => {
  it("is told from another operator's request whose reason the first one's goes on from with a note's words", async () => {
    h = await SimHarness.start();
    // Reads take 300 ms: the command is still reading its device, accepted, when resolved.
    h.plant.plc('mb').setFault({ kind: 'latency', ms: 300, on: 'read' });
    const { record } = h.submit('k1', { device: 'v1', action: 'open' });
    const ref = { scope: record.scope, key: record.key };
    const ask = (reason: string) =>
      resolveAndSync(h!.pipeline, systemClock, { ref, by: 'ops@test', reason }, () => undefined);
    // An operator's reason whose rest, after its "; ", begins as the daemon's note does.
    const first = await ask('valve jammed; nothing was written to the controller by the fitter');
    expect(first).toMatchObject({ kind: 'durable', replayed: false });
    // Ground truth: the journal holds that resolve, and its detail.
    expect(h.get('k1')).toMatchObject({
      state: 'failed',
      code: 'RESOLVED_BY_OPERATOR',
      detail:
        'resolved by "ops@test": "valve jammed; nothing was written to the controller by the fitter"; nothing was written to the controller',
    });
    // The same operator with the reason the first one begins with is another request: refused
    // as settled, not told that its own resolve took effect.
    const shorter = await ask('valve jammed');
    expect(shorter).toMatchObject({ kind: 'refused', status: 409, code: 'ALREADY_SETTLED' });
    // The very same request is the resolve it was.
    const same = await ask('valve jammed; nothing was written to the controller by the fitter');
    expect(same).toMatchObject({ kind: 'durable', replayed: true });
  });
});
