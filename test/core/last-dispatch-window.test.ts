import { describe, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';
import {
  closeWaitsForHeldOpen,
  heldAcknowledgedOpen,
  GUARD_MS,
} from '../helpers/withheld-dispatch.js';

/**
 * At a start the daemon takes each device's last dispatch from the journal (Journal
 * lastDispatched): the late-echo watch of a command that ended in doubt (late-echo.ts), and the
 * write an earlier life ended with its fate open, which the controller may still take and the
 * next command waits for (previous-write.ts, earlierLastWrite). It was looked for among the
 * device's 1,000 newest commands: past 1,000 commands of the device never dispatched (refused as
 * stale at the door here; rejected for the identity, superseded, the same), it was not found.
 * The late echo went unsaid, and — I2 — a close after the restart was confirmed a no-op at
 * CLOSED while the controller still held an acknowledged open an operator had resolved, which it
 * then took. The dispatch's commit now names its command. The real pipeline and SQLite journal
 * against sluice-sim (its `hold`: the controller acknowledges a write and takes it later);
 * judged from the simulator's write log and state and the journal.
 */

const NEVER_DISPATCHED = 1_001;

/** 1,001 closes of v1 issued an hour ago: refused STALE_COMMAND at the door, never dispatched. */
async function staleFlood(h: SimHarness): Promise<void> {
  const issuedAt = new Date(Date.now() - 3_600_000).toISOString();
  for (let i = 0; i < NEVER_DISPATCHED; i++) {
    h.submit(`stale-${i}`, { device: 'v1', action: 'close', ttlMs: 5_000, issuedAt });
  }
  const last = await h.settled(`stale-${NEVER_DISPATCHED - 1}`);
  if (last.state !== 'rejected' || last.code !== 'STALE_COMMAND' || last.seq !== null) {
    throw new Error(`the last stale close ended ${last.state} ${last.code ?? ''}`);
  }
  await h.journal.durable();
}

describe("a device's last dispatch behind more than 1,000 commands never dispatched, after a restart", () => {
  it('is watched for its late echo', async ({ expect, onTestFinished }) => {
    const h = await SimHarness.start({
      warm: true,
      timing: { confirmTimeoutMs: 800 },
      monitorMs: 50,
    });
    onTestFinished(() => h.close());
    const valve = h.device('v1');
    // An open the controller acknowledges and takes only later: READBACK_TIMEOUT, in doubt.
    valve.setFault({ kind: 'hold', ms: 60_000 });
    h.submit('k1', { device: 'v1', action: 'open', ttlMs: 5_000 });
    const r = await h.settled('k1');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
    await staleFlood(h);
    await h.crash();
    valve.clearFault('hold');
    await h.until(
      () => valve.writeLog.find((w) => w.seq === r.seq)?.outcome === 'accepted',
      5_000,
      'the held write taken while the daemon was down',
    );
    await h.restart();
    await h.until(
      () =>
        h
          .notes('k1')
          .some((n) => n.includes(`a later readback shows its sequence number ${r.seq}`)),
      5_000,
      'the late echo noted after the restart',
    );
    expect(h.get('k1')).toMatchObject({ state: 'failed', code: 'READBACK_TIMEOUT' });
  });

  it('is waited for by the next command when the controller may still take its write (I2)', async ({
    expect,
    onTestFinished,
  }) => {
    // Travel 0: the open, once taken, is OPEN at that scan, so the close is a legal write then.
    // The confirm timeout (the bound on the acknowledged open) is far longer than the case takes.
    const h = await SimHarness.start({
      warm: true,
      travelMs: 0,
      timing: { redispatchGuardMs: GUARD_MS, confirmTimeoutMs: 10 * GUARD_MS },
    });
    onTestFinished(() => h.close());
    await heldAcknowledgedOpen(h, 'p');
    const p = h.pipeline.resolve({ scope: 'plant', key: 'p' }, 'ops@test', 'checked');
    expect(p.detail).toMatch(/which acknowledged it: it may have been applied$/);
    await staleFlood(h);
    await h.crash();
    await h.restart();
    // Before: the close confirmed a no-op at CLOSED, then the open taken, the valve OPEN.
    await closeWaitsForHeldOpen(h, expect);
  });
});
