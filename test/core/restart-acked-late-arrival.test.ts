import { describe, expect, it } from 'vitest';
import type { SimHarness } from '../helpers/sim-harness.js';
import { acknowledgedSeen, heldOnLink, killedLives } from '../helpers/killed-life.js';

/**
 * timing.ackedWriteTakenWithinMs bounds how long the controller keeps a write from when it
 * acknowledges it (docs/device-profiles.md), not from when the daemon sent it: a write is
 * received, and acknowledged, up to the request timeout after its sending. On the real parts:
 * the pipeline with the real Modbus driver against sluice-sim, a real journal file; judged from
 * the simulator's write log and the journal.
 *
 * The earlier life sends an open and is killed while it is on the link; it reaches the
 * controller within the request timeout, which keeps it within the stated bound (sluice-sim's
 * `hold`) and takes it. Counted from the journal's lock alone (max(request timeout + guard,
 * bound) from the lock: 1.5 s here), the restarted daemon proved the write not applied while the
 * controller still kept it, and sent it a second time: two writes of one sequence number at the
 * controller (I1). From the lock the controller can take it within the request timeout plus the
 * bound (2.1 s here).
 */

const lives = killedLives();
let h: SimHarness;

const REQUEST_TIMEOUT_MS = 600;
const GUARD_MS = 700;
const ACKED_MS = 1_500;
// Below the request timeout: the write reaches the controller within it.
const LINK_MS = 450;
// Kept after its arrival: under the stated bound.
const KEPT_MS = 1_450;

describe('an earlier life killed while its write was on the link, the profile bounding an acknowledged write', () => {
  it('a write that reaches the controller after the lock and is kept within the bound is written once', async () => {
    h = await lives.start({
      warm: true,
      travelMs: 100,
      requestTimeoutMs: REQUEST_TIMEOUT_MS,
      timing: {
        confirmTimeoutMs: 6_000,
        redispatchGuardMs: GUARD_MS,
        ackedWriteTakenWithinMs: ACKED_MS,
      },
    });
    const v1 = h.device('v1');
    // The handshake held from before the sending: the write, arriving LINK_MS after it, is kept
    // at most KEPT_MS after its arrival.
    v1.setFault({ kind: 'hold', ms: LINK_MS + KEPT_MS });
    await heldOnLink(h, 'v1', LINK_MS, 'open', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await lives.killAndRestart(h);
    const open = await h.settled('open', 15_000);
    await h.until(
      () => v1.writeLog.some((w) => w.seq === open.seq && w.settledAt !== null),
      5_000,
      'the open taken',
    );

    // Ground truth: the held write alone reached the controller, which took it.
    expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[open.seq, 'accepted']]);
    expect(open).toMatchObject({ state: 'confirmed', attempts: 1 });
    expect(h.journal.history(open).some((e) => e.detail.startsWith('redispatch:'))).toBe(false);
  });
});

describe('an acknowledged write that arrived late, then resolved by an operator', () => {
  it('a close behind it waits the stated bound from its acknowledgement, not from its sending', async () => {
    h = await lives.start({
      warm: true,
      travelMs: 100,
      requestTimeoutMs: REQUEST_TIMEOUT_MS,
      timing: {
        confirmTimeoutMs: 6_000,
        redispatchGuardMs: GUARD_MS,
        ackedWriteTakenWithinMs: 1_000,
      },
    });
    const v1 = h.device('v1');
    // The open reaches the controller LINK_MS after its sending (within the request timeout) and
    // is acknowledged then; the handshake, held from before the sending, keeps it at most 950 ms
    // after that, within the stated 1 s.
    v1.setFault({ kind: 'hold', ms: LINK_MS + 950 });
    await heldOnLink(h, 'v1', LINK_MS, 'open', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await acknowledgedSeen(h, 'v1');
    const open = h.get('open')!;
    const resolved = h.pipeline.resolve(open, 'ops@test', 'checking');
    expect(resolved.detail).toMatch(/which acknowledged it: it may have been applied$/);
    h.submit('close', { device: 'v1', action: 'close', ttlMs: 20_000 });
    const close = await h.settled('close', 15_000);
    await h.until(() => v1.snapshot().state === 'OPEN', 5_000, 'the open taken');

    // Ground truth: the open alone was written, and taken; the valve is OPEN. The close was
    // decided once it was taken (OPENING: 0x88, never written), not confirmed at CLOSED before.
    expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[open.seq, 'accepted']]);
    expect(close).toMatchObject({ state: 'rejected', code: 'ILLEGAL_TRANSITION' });
    expect(close.observed?.state).toBe('OPENING');
  });

  it('a close behind it is decided on an image asked for after the bound, not one asked for before and answered after', async () => {
    h = await lives.start({
      warm: true,
      // Long enough that any image within 700 ms of the open's take shows it OPENING.
      travelMs: 1_500,
      requestTimeoutMs: 1_000,
      timing: {
        confirmTimeoutMs: 6_000,
        redispatchGuardMs: 1_100,
        ackedWriteTakenWithinMs: 1_000,
      },
    });
    const v1 = h.device('v1');
    // Held from before the sending: the open, acknowledged on arrival, is kept at most 990 ms.
    v1.setFault({ kind: 'hold', ms: 990 });
    h.submit('open', { device: 'v1', action: 'open', ttlMs: 20_000 });
    await acknowledgedSeen(h, 'v1');
    // Every read answered 700 ms after its image (within the request timeout): the readback
    // that comes once the bound is over shows an image from before it.
    v1.setFault({ kind: 'latency', ms: 700, on: 'read', when: 'after' });
    const open = h.get('open')!;
    h.pipeline.resolve(open, 'ops@test', 'checking');
    h.submit('close', { device: 'v1', action: 'close', ttlMs: 20_000 });
    const close = await h.settled('close', 15_000);
    await h.until(
      () => v1.writeLog.some((w) => w.seq === open.seq && w.settledAt !== null),
      5_000,
      'the open taken',
    );

    expect(v1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[open.seq, 'accepted']]);
    expect(close).toMatchObject({ state: 'rejected', code: 'ILLEGAL_TRANSITION' });
    expect(close.observed?.state).toBe('OPENING');
  });
});
