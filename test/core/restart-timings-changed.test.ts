import { describe, expect, it, onTestFinished } from 'vitest';
import { WRITE_BOUNDS_KEY } from '../../src/core/earlier-write-bounds.js';
import { WARM_ECHO, type SimHarness } from '../helpers/sim-harness.js';
import {
  acknowledgedSeen,
  heldOpenSettled,
  killedLives,
  stopAfterHeldMove,
  writeOf,
} from '../helpers/killed-life.js';

/**
 * A write sent just before the daemon's life ends, its request still on its way, and the daemon
 * restarted at once with shorter timings: an operator edited the site's request timeout and
 * redispatch guard, which take effect at a restart (the configuration is not reloaded). On the
 * real parts: the pipeline with the real Modbus driver against sluice-sim, a real journal file;
 * judged from the simulator's write log and the journal.
 *
 * The earlier life's write is taken, if ever, within its own profile's contract: the guard it
 * was configured with after the request timeout it was configured with (docs/device-profiles.md,
 * "How the timings relate"). Waited out by the new life's shorter timings, it was proven not
 * applied and sent a second time (two writes of sequence number 1 at the controller, I1), and a
 * stop was confirmed at once and then undone by it (the actuator travelling to 80 % after the
 * stop was reported confirmed). Each life now saves its bounds in the journal
 * (src/core/earlier-write-bounds.ts) and the next waits out the longer.
 *
 * The life ends as in restart-within-timeout.test.ts: its journal closed, its workers and
 * connections left to die, the next one built on the same journal file while the write is held
 * on the simulator's link.
 */

const lives = killedLives();
let h: SimHarness;

/** The earlier life's timings: a write may land up to 2,500 ms after it was sent. */
const OLD = { requestTimeoutMs: 1_000, guardMs: 1_500 };
/** The next life's: its own writes land within 650 ms if ever. */
const NEW = { requestTimeoutMs: 250, guardMs: 400 };
/** Held on the link this long: within the earlier life's contract, past the next life's. */
const LINK_MS = 2_000;

const start = (warm: boolean, confirmTimeoutMs = 6_000): Promise<SimHarness> =>
  lives.start({
    travelMs: 100,
    warm,
    requestTimeoutMs: OLD.requestTimeoutMs,
    timing: { redispatchGuardMs: OLD.guardMs, confirmTimeoutMs },
  });

/** Ends the life at once, as SIGKILL does, and starts the next with the shorter timings. */
const killAndRestart = (harness: SimHarness, confirmTimeoutMs = 6_000): Promise<void> =>
  lives.killAndRestart(harness, {
    requestTimeoutMs: NEW.requestTimeoutMs,
    timing: { redispatchGuardMs: NEW.guardMs, confirmTimeoutMs },
  });

/** The bounds saved in the journal, by device (WRITE_BOUNDS_KEY). */
function savedBounds(
  harness: SimHarness,
): Record<string, { unknownMs: number; ackedMs: number } | undefined> {
  const text = harness.journal.readMeta(WRITE_BOUNDS_KEY);
  expect(text).not.toBeNull();
  return (
    JSON.parse(text!) as {
      devices: Record<string, { unknownMs: number; ackedMs: number } | undefined>;
    }
  ).devices;
}

describe('the daemon restarted with shorter timings within the earlier life’s bound of a write it had sent', () => {
  it('the taken-up write is not proven unapplied, and sent again, while it can still land', async () => {
    h = await start(true);
    const open = await heldOpenSettled(h, LINK_MS, killAndRestart);
    const v1 = h.device('v1');

    // Ground truth: one write, taken when it arrived; confirmed by its echo, never re-dispatched.
    expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[open.seq, 'accepted']]);
    expect(v1.writeLog[0]!.heldOnLinkMs!).toBeGreaterThanOrEqual(LINK_MS);
    expect(open).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.journal.history(open).some((e) => e.detail.startsWith('redispatch:'))).toBe(false);
  });

  it('a stop after the restart waits until that write can no longer land, and says it did not hold', async () => {
    h = await start(false);
    const { stop, move } = await stopAfterHeldMove(h, LINK_MS, (harness) =>
      killAndRestart(harness),
    );
    const a1 = h.device('a1');

    // Ground truth: the stop was taken first (a no-op: the move had not arrived), the move after
    // it. The stop is never confirmed while the move could still land.
    const stopWrite = writeOf(a1.writeLog, stop.seq);
    const moveWrite = writeOf(a1.writeLog, move.seq);
    expect(moveWrite.outcome).toBe('accepted');
    expect(moveWrite.settledAt!).toBeGreaterThan(stopWrite.settledAt!);
    expect(stop).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH' });
    expect(stop.detail).toMatch(/the stop did not hold/);
    expect(stop.settledAt!).toBeGreaterThanOrEqual(moveWrite.settledAt!);
  });

  it('hands the earlier bound on while it runs, then saves its own alone', async () => {
    h = await start(false, 3_000);
    const oldBound = { unknownMs: OLD.requestTimeoutMs + OLD.guardMs, ackedMs: 3_000 };
    const newBound = { unknownMs: NEW.requestTimeoutMs + NEW.guardMs, ackedMs: 1_000 };
    expect(savedBounds(h)).toMatchObject({ v1: oldBound, a1: oldBound });
    await killAndRestart(h, 1_000);
    // Saved before the new life dispatches anything: a life ended now hands the earlier bound on.
    expect(savedBounds(h)).toMatchObject({ v1: oldBound, a1: oldBound });
    const restarted = Date.now();
    await h.until(
      () => savedBounds(h).v1?.ackedMs === newBound.ackedMs,
      10_000,
      'the own bounds saved',
    );
    // Once the longest of them, the acknowledged write's 3 s, has passed since the lock.
    expect(Date.now() - restarted).toBeGreaterThanOrEqual(oldBound.ackedMs - 100);
    expect(savedBounds(h)).toMatchObject({ v1: newBound, v2: newBound, a1: newBound });
  });

  it('a close after the restart waits out the earlier life’s confirm timeout for an acknowledged open its controller still holds', async () => {
    h = await start(true);
    const v1 = h.device('v1');
    // The controller acknowledges the open and holds it (a busy handshake): not in its image.
    v1.setFault({ kind: 'hold' });
    const { record } = h.submit('open', { device: 'v1', action: 'open', ttlMs: 20_000 });
    // The daemon knows the write acknowledged: a readback answered after it reached the PLC.
    await acknowledgedSeen(h, 'v1');
    expect(h.pipeline.device('v1')?.mirror?.seq).toBe(WARM_ECHO);
    const resolved = h.pipeline.resolve(record, 'ops@test', 'checking');
    expect(resolved.detail).toMatch(/which acknowledged it: it may have been applied$/);
    // The confirm timeout shortened from 6 s to 1 s with the restart; the controller takes the
    // open 2.5 s after it, within the earlier life's 6 s.
    // On disk before the crash, as an intake or the admin endpoint answers only then
    // (a crash loses the batch still open).
    await h.journal.durable();
    await killAndRestart(h, 1_000);
    h.submit('close', { device: 'v1', action: 'close', ttlMs: 20_000 });
    const release = setTimeout(() => v1.clearFault('hold'), 2_500);
    onTestFinished(() => {
      clearTimeout(release);
    });
    const close = await h.settled('close', 15_000);
    await h.until(() => v1.snapshot().state === 'OPEN', 5_000, 'the open taken');

    // Ground truth: the open alone was written, and taken; the valve is OPEN. The close was
    // decided once it was taken (OPENING: 0x88, never written), not confirmed at CLOSED before.
    const open = h.get('open')!;
    expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[open.seq, 'accepted']]);
    expect(close).toMatchObject({ state: 'rejected', code: 'ILLEGAL_TRANSITION' });
    expect(close.observed?.state).toBe('OPENING');
  });
});
