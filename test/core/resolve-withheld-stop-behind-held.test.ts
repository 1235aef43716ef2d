import { describe, it, type ExpectStatic, type TestContext } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';
import {
  closeWaitsForHeldOpen,
  heldAcknowledgedOpen,
  withheldAndTakenUp,
  withheldOnly,
  GUARD_MS,
} from '../helpers/withheld-dispatch.js';

/**
 * A stop written at once behind an acknowledged open the controller holds (the sim's `hold`),
 * that open's command resolved by an operator (previous-write.ts, stopAfterPending), and the
 * stop's own dispatch withheld (its barrier failed: never sent), then resolved too. The stop's
 * write was never sent, so it is no write — but the open it was decided behind still is: the
 * controller holds it and takes it when the hold ends. A close decided then on CLOSED, the image
 * without the open, would be confirmed a no-op and undone by the open (I2). The real pipeline and
 * journal against sluice-sim; judged from the simulator's write log and state and the journal.
 */

async function harness(
  onTestFinished: TestContext['onTestFinished'],
  sweepMs?: number,
): Promise<SimHarness> {
  // No idle monitor: the one read held first is the withheld stop's fresh read. The confirm
  // timeout (the bound on the acknowledged open) is far longer than the case takes. Travel 0:
  // the open, once taken, is OPEN at that scan, so the close is a legal write then.
  const h = await SimHarness.start({
    warm: true,
    travelMs: 0,
    timing: { redispatchGuardMs: GUARD_MS, confirmTimeoutMs: 10 * GUARD_MS },
    ...(sweepMs === undefined ? {} : { sweepMs }),
  });
  onTestFinished(() => h.close());
  return h;
}

/** The open `p`, acknowledged and held by the controller, resolved by an operator. */
async function heldOpenResolved(h: SimHarness, expect: ExpectStatic): Promise<void> {
  await heldAcknowledgedOpen(h, 'p');
  const p = h.pipeline.resolve({ scope: 'plant', key: 'p' }, 'ops@test', 'checked');
  expect(p.detail).toMatch(/which acknowledged it: it may have been applied$/);
}

// One at a time: the fdatasync double is the process's.
describe('a withheld stop behind a held, resolved open, resolved in turn', () => {
  it('after its take-up: the next close waits for the held open', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    await heldOpenResolved(h, expect);
    // Its reads dropped: taken up, the stop waits for a fresh read to decide it again, unwritten.
    await withheldAndTakenUp(h, onTestFinished, { key: 'a', action: 'stop' }, 'dropped');
    const a = h.pipeline.resolve({ scope: 'plant', key: 'a' }, 'ops@test', 'checked');
    expect(a.detail).toContain('was never sent');
    h.device('v1').clearFault('drop');
    await closeWaitsForHeldOpen(h, expect);
  });

  it('before its take-up, then a restart: the next close waits for the held open', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished, 600_000);
    await heldOpenResolved(h, expect);
    await withheldOnly(h, onTestFinished, { key: 'a', action: 'stop' }, 'answered');
    await h.until(
      () => h.pipeline.devices().find((d) => d.id === 'v1')?.unresolved === 'a',
      5_000,
      'the withheld stop left to the sweep',
    );
    const a = h.pipeline.resolve({ scope: 'plant', key: 'a' }, 'ops@test', 'checked');
    expect(a.detail).toContain('was never sent');
    await h.journal.durable();
    await h.crash();
    await h.restart();
    await closeWaitsForHeldOpen(h, expect);
  });
  it('after its take-up, then a restart: the next close waits for the held open', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    await heldOpenResolved(h, expect);
    // Its reads dropped: taken up, the stop waits for a fresh read to decide it again, unwritten.
    await withheldAndTakenUp(h, onTestFinished, { key: 'a', action: 'stop' }, 'dropped');
    const a = h.pipeline.resolve({ scope: 'plant', key: 'a' }, 'ops@test', 'checked');
    expect(a.detail).toContain('was never sent');
    h.device('v1').clearFault('drop');
    await h.journal.durable();
    await h.crash();
    await h.restart();
    await closeWaitsForHeldOpen(h, expect);
  });
});
