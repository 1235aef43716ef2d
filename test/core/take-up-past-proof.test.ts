import { describe, expect, it } from 'vitest';
import type { JournalEvent } from '../../src/core/journal.js';
import type { SimHarness, SimHarnessOptions } from '../helpers/sim-harness.js';
import { killedLives } from '../helpers/killed-life.js';

/**
 * A write lost on its way to the controller (sluice-sim resets the connection before it takes
 * it), the daemon killed at once and started again with a shorter confirm timeout (3 s made
 * 2 s; request timeout 250 ms, guard 400 ms, unreachable grace 1 s), the command's deadline
 * before the earlier life's saved confirm timeout has passed. On the real parts: the pipeline
 * with the real Modbus driver against sluice-sim, a real journal file; judged from the
 * simulator's write log and the journal.
 *
 * The take-up may prove the write not applied only once the earlier life's confirm timeout (3 s)
 * has passed from the lock (earlier-write-bounds.ts). Its read window ended at the longest of
 * this life's confirm timeout, the grace and the time to the deadline: 2 s, before that proof
 * could come, and the command ended READBACK_TIMEOUT "… short of the guard", its effect said
 * unknown. The window now reaches past the proof (takeUpReach): proven not applied, and, its
 * deadline passed, not sent again.
 */

const lives = killedLives();
let h: SimHarness;

/** The earlier life's confirm timeout, 3 s; the next life's (SHORTER), 2 s. */
const OPTIONS: SimHarnessOptions = {
  warm: true,
  travelMs: 100,
  timing: { confirmTimeoutMs: 3_000 },
};
const SHORTER: Partial<SimHarnessOptions> = { timing: { confirmTimeoutMs: 2_000 } };

/**
 * Starts the earlier life, its open (deadline `ttlMs`) submitted and dispatched, its write lost.
 * Returns the dispatch's event in the open's history.
 */
async function openLost(ttlMs: number): Promise<JournalEvent> {
  h = await lives.start(OPTIONS);
  h.device('v1').setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
  h.submit('open', { device: 'v1', action: 'open', ttlMs });
  await h.until(() => h.get('open')?.state === 'dispatched', 5_000, 'the open dispatched');
  // The dispatch on disk before the kill (it loses the open batch), as before its write.
  await h.journal.durable();
  return dispatchOf(h)!;
}

/** The open's dispatch in its history as the journal reads it now (the first, if any). */
function dispatchOf(harness: SimHarness): JournalEvent | undefined {
  return harness.journal
    .history({ scope: 'plant', key: 'open' })
    .find((e) => e.to === 'dispatched');
}

describe('a take-up after a restart that shortened the confirm timeout', () => {
  it('reads past the proof point: the lost write proven not applied, not sent again', async () => {
    const dispatch = await openLost(1_800);
    const v1 = h.device('v1');
    // Killed at once (SIGKILL: its journal closed, its workers and connections left to die).
    await lives.killAndRestart(h, SHORTER);
    // The premise: the next life found the earlier life's dispatch, not one of its own.
    expect(dispatchOf(h)).toEqual(dispatch);
    const open = await h.settled('open', 15_000);
    // Ground truth: the valve took no write; the journal says so, where it said "unknown".
    expect(v1.writeLog).toEqual([]);
    expect(open).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 1 });
    expect(open.detail).toMatch(
      /^the write never reached the controller: .*its deadline has passed, so it is not sent again; nothing was applied$/,
    );
  });

  it('whose deadline passed during the restart: proven not applied, and never named stuck while it reads', async () => {
    const dispatch = await openLost(300);
    const v1 = h.device('v1');
    await lives.kill(h);
    h.reconfigure(SHORTER);
    // Restarted past the deadline: the stuck rule's bound (deadline plus confirm timeout) ends
    // before the earlier life's confirm timeout from the lock, within the take-up's window.
    await new Promise((resolve) => setTimeout(resolve, 300));
    await h.restart();
    // The premise: the next life found the earlier life's dispatch, not one of its own.
    expect(dispatchOf(h)).toEqual(dispatch);
    const named: number[] = [];
    const started = Date.now();
    // The stuck view (as /readyz and sluice_commands_stuck read it), sampled until it ends.
    while (h.get('open')?.state === 'dispatched') {
      if (h.pipeline.openCommands().stuck.some((s) => s.key === 'open')) {
        named.push(Date.now() - started);
      }
      await new Promise((resolve) => setTimeout(resolve, 20));
    }
    const open = await h.settled('open', 15_000);
    expect(v1.writeLog).toEqual([]);
    expect(open).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 1 });
    expect(open.detail).toMatch(/nothing was applied$/);
    expect(open.settledAt! - started).toBeGreaterThan(2_000);
    expect(named).toEqual([]);
  });
});
