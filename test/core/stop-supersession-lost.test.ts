import { afterEach, expect, it } from 'vitest';
import type { NewCommand } from '../../src/core/journal.js';
import { SqliteJournal } from '../../src/journal/sqlite-journal.js';
import { commitFaults } from '../helpers/commit-faults.js';
import { issuerCommand, stopEnded } from '../helpers/new-command.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * SPEC §2: a command accepted before a stop and not yet written ends `rejected` `SUPERSEDED`,
 * never written. An open still reading its device when the stop comes is superseded once its
 * handling stops (pipeline.ts, drain), in a batch of its own, after the stop's claim is on disk.
 * When that batch is lost at its COMMIT the open is `accepted` on disk again; its mark used to
 * go as soon as the rejection was journaled in the batch, and once the stop ended, the open was
 * taken up again as the stop's target and written: the valve opened after the operator's
 * confirmed stop.
 *
 * The daemon may die before the open is rejected again: at the next start the journal holds
 * the stop ended and the open `accepted`, and recovery supersedes it by the journal alone
 * (sweep.ts, markSuperseded).
 *
 * sluice-sim, the real pipeline and SQLite journal. One double: the batch lost at its COMMIT
 * (test/helpers/commit-faults.ts), a fault no simulator or filesystem can time. Ground truth:
 * the simulator's write log, the journal's rows.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

it('an open superseded by a stop, its rejection lost with its batch: rejected again, never written after the stop', async () => {
  // Reads of 300 ms need a request timeout above them (and the guard above that).
  h = await SimHarness.start({ requestTimeoutMs: 1_000, timing: { redispatchGuardMs: 1_200 } });
  const sim = h;
  const valve = sim.device('v1');
  const faults = commitFaults(sim.journal);
  // Reads take 300 ms: the open is still reading its device when the stop comes.
  sim.plant.plc('mb').setFault({ kind: 'latency', ms: 300, on: 'read' });
  sim.submit('a', { device: 'v1', action: 'open' });
  await sim.until(() => sim.pipeline.device('v1')?.inFlight === 'a', 5_000, 'the open in flight');
  sim.submit('s', { device: 'v1', action: 'stop' });
  // The stop's claim is on disk: it was accepted, and its intake acknowledged it.
  await sim.journal.durable();
  expect(sim.get('s')?.state).toBe('accepted');
  expect(sim.get('a')?.state).toBe('accepted');
  // The next batch is the one that journals the open SUPERSEDED, once its read returns.
  faults.failNext();
  const s = await sim.settled('s');
  const a = await sim.settled('a');
  expect(faults.failed).toBe(1);
  expect(a).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
  expect(a.detail).toMatch(/^superseded by the stop s, accepted before it was written/);
  // At CLOSED the stop was a no-op: nothing reached the controller.
  expect(s).toMatchObject({ state: 'confirmed' });
  expect(valve.writeLog.map((w) => w.seq)).toEqual([]);
  expect(sim.journal.listOpen()).toEqual([]);
}, 30_000);

/**
 * A new life on a journal an earlier one left as `build` makes it, through the journal's own
 * API between the two lives (the daemon died before it could say more): `command` claims one.
 */
async function restartedOn(
  build: (
    journal: SqliteJournal,
    command: (key: string, action: 'open' | 'stop') => NewCommand,
  ) => void,
): Promise<SimHarness> {
  const sim = await SimHarness.start({ warm: true });
  h = sim;
  await sim.crash();
  const journal = SqliteJournal.open({ path: sim.path, busyTimeoutMs: 500 });
  const now = Date.now();
  build(journal, (key, action) => ({ ...issuerCommand(key, 'v1', now), action }));
  await journal.durable();
  journal.close();
  await sim.restart();
  return sim;
}

it('after a restart: a command accepted before a stop that has ended, its rejection lost, is superseded, never written', async () => {
  // The journal as the case above leaves it when the daemon dies before the open is rejected
  // again: the stop ended, the open still `accepted`.
  const sim = await restartedOn((journal, command) => {
    journal.claim(command('a', 'open'));
    stopEnded(journal, command('s', 'stop'));
    // A stop refused at the door after it preempts nothing, and hides nothing either.
    journal.claim(command('refused', 'stop'), { code: 'STALE_COMMAND', detail: 'stale' });
  });
  const a = await sim.settled('a');
  expect(a).toMatchObject({ state: 'rejected', code: 'SUPERSEDED', seq: null });
  expect(a.detail).toMatch(/^superseded by the stop s, /);
  expect(sim.device('v1').writeLog.map((w) => w.seq)).toEqual([]);
  expect(sim.journal.listOpen()).toEqual([]);
}, 30_000);

it('after a restart: a command accepted after the stop, or before a stop refused at the door, runs', async () => {
  const sim = await restartedOn((journal, command) => {
    stopEnded(journal, command('s', 'stop'));
    journal.claim(command('a', 'open'));
    journal.claim(command('refused', 'stop'), { code: 'FORBIDDEN_DEVICE', detail: 'forbidden' });
  });
  const a = await sim.settled('a');
  expect(a).toMatchObject({ state: 'confirmed' });
  expect(sim.device('v1').writeLog.map((w) => w.seq)).toEqual([a.seq]);
}, 30_000);
