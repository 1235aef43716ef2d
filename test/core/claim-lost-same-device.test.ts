import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { afterEach, describe, expect, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { commitFaults } from '../helpers/commit-faults.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A claim lost with its batch (its COMMIT failed) after its device had dispatched it in that
 * batch, its key then claimed again for another command on the same device (an open with
 * another ttlMs): what the pipeline keeps by key alone, not by claim, names the lost claim then
 * and is never read for the new command as its own.
 * - The lost command's dispatch was withheld (its barrier failed): the device's memory of
 *   withheld writes (Lane.withheld) keeps its key and number, and the new command's dispatch is
 *   given the same number (the lost batch took the device's count back with it). That memory
 *   names the new command only until its write is handed to the driver, which clears it — a
 *   time in which it was not sent indeed. Left open after its write (its settlement lost with
 *   its batch) and taken up by the sweep, the new command is settled by readback: written
 *   once, its history saying nothing of a withheld write.
 * - The lost command's receipt time (the pipeline's receivedMono) is replaced by the new
 *   command's as it is claimed: claimed again past the lost command's ttlMs, the new command,
 *   timed by its own receipt and a ttlMs shorter than that wait, is not judged stale.
 * - No write of the lost command was handed to the driver (its dispatch's barrier failed first),
 *   so the device's last write (LastWrite) and the watch for a late echo never name it.
 * Traced and proven here, not changed: none of these is read for the new command.
 *
 * The pipeline and SQLite journal against sluice-sim. Two doubles, for what no filesystem here
 * times on demand: fs.fdatasync held until the lost command has been dispatched (the barrier in
 * flight that keeps its batch open across turns of the event loop: group commit), and the
 * failure of exactly that batch's COMMIT (test/helpers/commit-faults.ts). The sweep is held off
 * (600 s), so that what moves the device is its worker. Ground truth: the simulator's write log
 * and state, and the journal.
 */

/** The lost command's ttlMs; the key is claimed again once longer than this has passed. */
const LOST_TTL_MS = 3_000;

let h: SimHarness | undefined;
let restore: (() => void) | undefined;
afterEach(async () => {
  restore?.();
  restore = undefined;
  await h?.close();
  h = undefined;
});

/** Holds every fdatasync's answer until `release()`; answered as they come from then on. */
function holdFdatasync(): { held: () => number; release: () => void; restore: () => void } {
  const real = fs.fdatasync;
  const held: (() => void)[] = [];
  let holding = true;
  fs.fdatasync = ((fd: number, callback: (error: NodeJS.ErrnoException | null) => void) => {
    if (holding) {
      held.push(() => {
        real(fd, callback);
      });
    } else real(fd, callback);
  }) as typeof fs.fdatasync;
  syncBuiltinESMExports();
  return {
    held: () => held.length,
    release: () => {
      holding = false;
      for (const sync of held.splice(0)) sync();
    },
    restore: () => {
      fs.fdatasync = real;
      syncBuiltinESMExports();
    },
  };
}

describe('a claim lost at its COMMIT after its dispatch, its key claimed again on the same device', () => {
  it('the new command, given the number the lost one had, is written once, also when taken up', async () => {
    h = await SimHarness.start({ sweepMs: 600_000 });
    const sim = h;
    const v1 = sim.device('v1');
    expect(v1.snapshot().state).toBe('CLOSED');
    const dispatchedK: CommandRecord[] = [];
    const markDispatched = sim.journal.markDispatched.bind(sim.journal);
    const sync = holdFdatasync();
    restore = sync.restore;
    sim.journal.markDispatched = (...args) => {
      const record = markDispatched(...args);
      if (record.key === 'k') {
        dispatchedK.push(record);
        // The lost command's dispatch is in the batch that fails: the barrier in flight returns.
        setImmediate(sync.release);
      }
      return record;
    };
    const faults = commitFaults(sim.journal);
    // Two barriers in flight (as many fdatasyncs as run at once, both held), each for a claim
    // that moves nothing (rejected at the door, past its deadline, in its own commit): the next
    // batch stays open until one returns.
    const past = new Date(Date.now() - 60_000).toISOString();
    const inFlight: Promise<void>[] = [];
    for (const key of ['stale-1', 'stale-2']) {
      const stale = sim.submit(key, { device: 'v2', action: 'open', issuedAt: past, ttlMs: 1_000 });
      expect(stale.record.code).toBe('STALE_COMMAND');
      inFlight.push(sim.pipeline.durable());
      await new Promise((resolve) => setImmediate(resolve));
    }
    expect(sync.held()).toBe(2);
    faults.failNext();
    const lostAt = performance.now();
    expect(sim.submit('k', { device: 'v1', action: 'open', ttlMs: LOST_TTL_MS }).kind).toBe('new');
    await expect(sim.pipeline.durable()).rejects.toThrow(/journal unavailable/);
    await Promise.all(inFlight);
    sync.restore();
    expect(faults.failed).toBe(1);
    // The premise: the lost command was dispatched in the batch lost, and nothing was written.
    expect(dispatchedK.map((r) => r.fingerprint)).toHaveLength(1);
    const lostSeq = dispatchedK[0]?.seq;
    expect(lostSeq).not.toBeNull();
    expect(sim.get('k')).toBeUndefined();
    await sim.until(
      () => {
        const d = sim.pipeline.device('v1');
        return d !== undefined && d.inFlight === null && d.queued === 0;
      },
      15_000,
      'v1 done with the lost claim',
    );
    expect(v1.writeLog).toEqual([]);

    // Past the lost command's ttlMs: a receipt time of the lost command would make the new one
    // stale at once.
    await sim.until(() => performance.now() - lostAt > LOST_TTL_MS + 500, 10_000, 'time passed');
    // The new command's settlement is lost with its batch too: left open, written, it is taken
    // up by the sweep, which asks whether its latest write was withheld (execution.ts,
    // writeWithheld; take-up.ts). Named by the lost command's memory, it would be decided again
    // as never sent (and written again, had the valve not been where it sends it).
    const settle = sim.journal.settle.bind(sim.journal);
    let loseSettlement = true;
    sim.journal.settle = (...args) => {
      const settled = settle(...args);
      if (loseSettlement && settled.key === 'k') {
        loseSettlement = false;
        faults.failNext();
      }
      return settled;
    };
    expect(sim.submit('k', { device: 'v1', action: 'open', ttlMs: 2_500 }).kind).toBe('new');
    await sim.pipeline.durable();
    await sim.until(
      () => faults.failed === 2 && sim.pipeline.device('v1')?.unresolved === 'k',
      20_000,
      "the new command's settlement lost, the command left open",
    );
    const open = sim.get('k');
    expect(open).toMatchObject({ state: 'dispatched', attempts: 1 });
    expect(open?.fingerprint).not.toBe(dispatchedK[0]?.fingerprint);
    // The same number as the lost dispatch: the lost command's withheld memory names it.
    expect(open?.seq).toBe(lostSeq);
    expect(v1.writeLog.map((w) => w.seq)).toEqual([lostSeq]);
    sim.pipeline.sweep();
    const k = await sim.settled('k', 20_000);
    expect(k).toMatchObject({ device: 'v1', action: 'open', state: 'confirmed', code: 'OK' });
    expect(k.attempts).toBe(1);
    expect(v1.writeLog.map((w) => w.seq)).toEqual([lostSeq]);
    expect(v1.snapshot().state).toBe('OPEN');
    // Taken up as written (its write acknowledged), confirmed by the readback of that write;
    // named by the lost command's memory, it was taken up as "never sent by this process" and
    // confirmed "no-op: … nothing was written".
    const notes = sim.notes('k');
    expect(notes.filter((line) => /never sent|withheld|nothing was written/i.test(line))).toEqual(
      [],
    );
    expect(notes).toContainEqual(expect.stringMatching(/taken up again: .*write acknowledged/));
    expect(k.detail).toMatch(/readback after the write shows OPEN/);
    expect(sim.journal.listOpen()).toEqual([]);
  }, 60_000);
});
