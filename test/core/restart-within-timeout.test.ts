import { describe, expect, it } from 'vitest';
import type { SimHarness } from '../helpers/sim-harness.js';
import {
  heldOpenSettled,
  killedLives,
  stopAfterHeldMove,
  writeOf,
} from '../helpers/killed-life.js';

/**
 * A write sent just before the daemon's life ends, its request still on its way, and the daemon
 * restarted sooner than the PLC's request timeout. On the real parts: the pipeline with the real
 * Modbus driver against sluice-sim, a real journal file; judged from the simulator's write log
 * and the journal.
 *
 * The profile's contract (docs/device-profiles.md, "How the timings relate") has a write whose
 * answer is lost taken, if ever, within redispatchGuardMs after its request timed out — up to
 * the request timeout plus the guard after it was sent. A restarted daemon does not know when an
 * earlier life sent it, only that it was before this life took the journal's writer lock: the
 * guard counts from the end of a request timeout after that (Lane.earlierWriteUnknownSinceMono),
 * or from the take-up when that comes later. Counted from the take-up alone, a restart quicker
 * than the request timeout ended the wait while the write could still land: a stop confirmed
 * and then undone, and a write proven not applied and sent a second time.
 *
 * The harness's crash() waits for the request in flight to time out, as no SIGKILL does; here
 * the life ends at once (its journal closed, its workers and connections left to die), and the
 * next one is built on the same journal file while the write is held on the simulator's link.
 */

const lives = killedLives();
let h: SimHarness;

const REQUEST_TIMEOUT_MS = 1_000;
const GUARD_MS = 1_500;
// Held on the link this long after it was sent: within the contract (2,500 ms), past a guard
// counted from a take-up that follows the write within a few tens of milliseconds (~1,550 ms).
const LINK_MS = 2_000;

const start = (warm: boolean): Promise<SimHarness> =>
  lives.start({
    travelMs: 100,
    warm,
    requestTimeoutMs: REQUEST_TIMEOUT_MS,
    timing: { redispatchGuardMs: GUARD_MS, confirmTimeoutMs: 6_000 },
  });

describe('the daemon restarted within the request timeout of a write it had sent', () => {
  it('a stop after the restart waits until that write can no longer land, and says it did not hold', async () => {
    h = await start(false);
    const { stop, move } = await stopAfterHeldMove(h, LINK_MS, (harness) =>
      lives.killAndRestart(harness),
    );
    const a1 = h.device('a1');

    // Ground truth: the stop was taken first (a no-op: the move had not arrived), the move
    // after it, within the contract after its sending.
    const log = a1.writeLog;
    const stopWrite = writeOf(log, stop.seq);
    const moveWrite = writeOf(log, move.seq);
    expect(moveWrite.outcome).toBe('accepted');
    expect(moveWrite.settledAt!).toBeGreaterThan(stopWrite.settledAt!);
    const sentAt = moveWrite.receivedAt - moveWrite.heldOnLinkMs!;
    expect(moveWrite.heldOnLinkMs!).toBeGreaterThanOrEqual(LINK_MS);
    expect(moveWrite.receivedAt - sentAt).toBeLessThan(REQUEST_TIMEOUT_MS + GUARD_MS);
    // The restart came well within the request timeout of the move's sending: the take-up's
    // own guard would have ended before the move arrived.
    const takeUp = h.journal
      .history(move)
      .find((e) => e.detail.startsWith('taken up: sequence number'));
    expect(takeUp).toBeDefined();
    expect(takeUp!.at - sentAt).toBeLessThan(REQUEST_TIMEOUT_MS / 2);
    // The stop waited for the move, saw it taken, and says the stop did not hold: never
    // confirmed while the move could still land (it was, at the take-up's guard, before).
    expect(stop).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH' });
    expect(stop.detail).toMatch(/the stop did not hold/);
    expect(stop.settledAt!).toBeGreaterThanOrEqual(moveWrite.settledAt!);
  });

  it('a taken-up write is not proven unapplied, and sent again, while it can still land', async () => {
    h = await start(true);
    const open = await heldOpenSettled(h, LINK_MS, (harness) => lives.killAndRestart(harness));
    const v1 = h.device('v1');

    // Ground truth: one write, taken when it arrived; confirmed by its echo.
    const log = v1.writeLog;
    expect(log.map((w) => [w.seq, w.outcome])).toEqual([[open.seq, 'accepted']]);
    expect(log[0]!.heldOnLinkMs!).toBeGreaterThanOrEqual(LINK_MS);
    expect(open).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.journal.history(open).some((e) => e.detail.startsWith('redispatch:'))).toBe(false);
  });
});
