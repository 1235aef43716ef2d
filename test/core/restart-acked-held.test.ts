import { describe, expect, it } from 'vitest';
import type { SimHarness } from '../helpers/sim-harness.js';
import { acknowledgedSeen, killedLives } from '../helpers/killed-life.js';

/**
 * A write the controller acknowledged and holds (a busy handshake: sluice-sim's `hold`, received
 * writes wait in arrival order, not in the image), the daemon killed and started again while it
 * still holds it, its command still open. On the real parts: the pipeline with the real Modbus
 * driver against sluice-sim, a real journal file; judged from the simulator's write log and the
 * journal.
 *
 * The life that sent it knew it acknowledged and never proves such a write not applied: it is
 * taken within the confirm timeout, if ever (previous-write.ts). The next life does not know
 * whether it was answered, and took it for a write whose answer was lost: a guard after the end
 * of the request timeout from its lock, a fresh image without its echo proved it not applied,
 * and it was sent a second time while the controller still held the first (two writes of
 * sequence number 1 at the valve, the second ignored as a repeat: I1). It now waits the longer
 * of the two bounds (earlier-write-bounds.ts, earlierWriteUnknownSince).
 */

const lives = killedLives();
let h: SimHarness;

describe('an acknowledged write the controller holds across a restart', () => {
  it('is not proven unapplied, and sent again, within the confirm timeout: written once, confirmed', async () => {
    // The harness's timings: request timeout 250 ms, guard 400 ms, confirm timeout 2 s.
    h = await lives.start({ warm: true, travelMs: 100 });
    const v1 = h.device('v1');
    v1.setFault({ kind: 'hold' });
    h.submit('open', { device: 'v1', action: 'open', ttlMs: 20_000 });
    // The life knows it acknowledged: a readback answered after the write reached the PLC.
    await acknowledgedSeen(h, 'v1');
    // Killed at once (SIGKILL: its journal closed, its workers and connections left to die).
    await lives.killAndRestart(h);
    // Held 1.8 s past the restart: past the request timeout and guard, within the confirm
    // timeout of its sending.
    const release = setTimeout(() => v1.clearFault('hold'), 1_800);
    try {
      const open = await h.settled('open', 15_000);
      // Ground truth: one write, taken when the hold ended; confirmed by its echo, never
      // re-dispatched.
      expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[open.seq, 'accepted']]);
      expect(open).toMatchObject({ state: 'confirmed', attempts: 1 });
      expect(h.journal.history(open).some((e) => e.detail.startsWith('redispatch:'))).toBe(false);
    } finally {
      clearTimeout(release);
    }
  });
});
