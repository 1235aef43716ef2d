import { describe, it, type ExpectStatic, type TestContext } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';
import {
  heldAcknowledgedOpen,
  withheldAndTakenUp,
  withheldOnly,
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

const GUARD_MS = 3_000;

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

/**
 * The close `c`, submitted while the controller still holds the open: never confirmed on the
 * image without the open. Ground truth once the hold ends: the valve closed, the close written.
 */
async function closeAfter(h: SimHarness, expect: ExpectStatic): Promise<void> {
  const valve = h.device('v1');
  expect(valve.snapshot().state).toBe('CLOSED');
  h.submit('c', { device: 'v1', action: 'close', ttlMs: 60_000 });
  await h.until(
    () => {
      const c = h.get('c');
      if (c !== undefined && c.state !== 'accepted' && c.state !== 'dispatched') return true;
      return h.notes('c').some((n) => n.includes('not decided yet'));
    },
    5_000,
    'the close waiting, or ended',
  );
  const early = h.get('c');
  // The hold ends: the controller takes the open, and the close is decided on the image that
  // shows it taken, and written.
  valve.clearFault('hold');
  await h.until(() => valve.pendingWrites === 0, 5_000, 'the held open taken');
  const c = await h.settled('c', 4 * GUARD_MS);
  await h.until(
    () => ['OPEN', 'CLOSED'].includes(valve.snapshot().state) && valve.pendingWrites === 0,
    10_000,
    'the valve at rest',
  );
  // Ground truth: the valve closed, as the close's outcome says. On the previous code the close
  // was confirmed a no-op at CLOSED while the controller held the open, which it then took: the
  // valve OPEN, the close confirmed (I2).
  expect({ valve: valve.snapshot().state, close: c.state, detail: c.detail }).toMatchObject({
    valve: 'CLOSED',
    close: 'confirmed',
  });
  expect(c.detail ?? '').not.toMatch(/no-op/);
  // While the controller held the open, the close waited for it (its history says so).
  expect(early?.state).toBe('accepted');
  expect(h.notes('c').some((n) => n.includes('not decided yet'))).toBe(true);
  expect(valve.writeLog.map((w) => w.seq)).toEqual([h.get('p')!.seq, c.seq]);
}

// One at a time: the fdatasync double is the process's.
describe('a withheld stop behind a held, resolved open, resolved in turn', () => {
  it('after its take-up: the next close waits for the held open', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    await heldOpenResolved(h, expect);
    await withheldAndTakenUp(h, onTestFinished, { key: 'a', action: 'stop' }, 'answered');
    const a = h.pipeline.resolve({ scope: 'plant', key: 'a' }, 'ops@test', 'checked');
    expect(a.detail).toContain('was never sent');
    await closeAfter(h, expect);
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
    await closeAfter(h, expect);
  });
  it('after its take-up, then a restart: the next close waits for the held open', async ({
    expect,
    onTestFinished,
  }) => {
    const h = await harness(onTestFinished);
    await heldOpenResolved(h, expect);
    await withheldAndTakenUp(h, onTestFinished, { key: 'a', action: 'stop' }, 'answered');
    const a = h.pipeline.resolve({ scope: 'plant', key: 'a' }, 'ops@test', 'checked');
    expect(a.detail).toContain('was never sent');
    await h.journal.durable();
    await h.crash();
    await h.restart();
    await closeAfter(h, expect);
  });
});
