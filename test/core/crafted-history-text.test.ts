import { describe, it, type ExpectStatic, type TestContext } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';
import {
  closeWaitsForHeldOpen,
  heldAcknowledgedOpen,
  GUARD_MS,
} from '../helpers/withheld-dispatch.js';

/**
 * Readings of a command's history and outcome by their text (previous-write.ts, late-echo.ts,
 * redispatch.ts, open-commands.ts, operator-actions.ts) against user text written into them. Of
 * that text only an operator's reason (and name) may hold spaces, and it is journaled only in
 * the resolve's outcome, `resolved by <who>: <reason>; <note>`, where the daemon's note ends it
 * (keys are `!`–`~`, no spaces, and no line begins with one). The one reading that takes that
 * outcome is resolvedWriteWas, by its ending: what the next command, in this life and the next,
 * knows of the resolved command's write. A reason written to read as the note of a write never
 * sent must not make it one: the next command would not wait for the open the controller holds,
 * and a close would be confirmed a no-op at CLOSED before the controller took the open (I2). The
 * real pipeline and journal against sluice-sim (its `hold`: the controller acknowledges the open
 * and takes it later); judged from the simulator's write log and state and the journal.
 */

/** A reason that ends as the resolve of a withheld write does (operator-actions.ts, neverSentNote). */
function craftedReason(seq: number): string {
  return `checked; the operator's action wrote nothing to the controller, and the command's write (sequence number ${seq}) was never sent: its dispatch could not be made durable, so the write was withheld; nothing was applied`;
}

async function harness(onTestFinished: TestContext['onTestFinished']): Promise<SimHarness> {
  // Travel 0: the open, once taken, is OPEN at that scan, so the close is a legal write then.
  // The confirm timeout (the bound on the acknowledged open) is far longer than the case takes.
  const h = await SimHarness.start({
    warm: true,
    travelMs: 0,
    timing: { redispatchGuardMs: GUARD_MS, confirmTimeoutMs: 10 * GUARD_MS },
  });
  onTestFinished(() => h.close());
  return h;
}

/** The open `p`, acknowledged and held by the controller, resolved with the crafted reason. */
async function heldOpenResolvedCrafted(h: SimHarness, expect: ExpectStatic): Promise<void> {
  await heldAcknowledgedOpen(h, 'p');
  const seq = h.get('p')?.seq;
  expect(seq).toBeTypeOf('number');
  const p = h.pipeline.resolve({ scope: 'plant', key: 'p' }, 'ops@test', craftedReason(seq!));
  // The daemon's own note ends the outcome, after the reason that imitates another.
  expect(p.detail).toContain('was never sent');
  expect(p.detail).toMatch(/which acknowledged it: it may have been applied$/);
}

describe("an operator's reason written to read as the daemon's note of a write never sent", () => {
  it('does not make the resolved open one: the next close waits for it', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    await heldOpenResolvedCrafted(h, expect);
    await closeWaitsForHeldOpen(h, expect);
  });

  it('nor after a restart, where the journal alone tells of the write', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    await heldOpenResolvedCrafted(h, expect);
    await h.journal.durable();
    await h.crash();
    await h.restart();
    await closeWaitsForHeldOpen(h, expect);
  });
});
