import { describe, it } from 'vitest';
import type { SimDevice } from '../../simulators/plc.js';
import { takeUpAt } from '../../src/core/open-commands.js';
import { mosquittoAvailable } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';
import { recordOf, settledRecord, until } from '../reliability/support.js';

/**
 * A stop that preempted a command whose write's outcome is unknown waits, before it is
 * confirmed, for an image produced past `redispatchGuardMs` (docs/spec-notes.md, "A stop
 * preempts"): the lost write may still reach the controller after the stop and undo it. Here
 * the real sluiced is killed (SIGKILL) or stopped (SIGTERM, no time for in-flight commands)
 * during that wait, and started again. The new process knows nothing of the preempted write
 * but what the journal says (dispatched, its sequence number): that write may still land, so
 * the stop still waits — from the moment the new process took it up — and says that it did not
 * hold when the write lands. It used to be confirmed on its first readback after the restart,
 * the write landing after it and the actuator travelling on.
 *
 * A second stop pressed during the wait queues behind the first; after a restart it goes first
 * (the new process knows nothing of the first stop's write). It used to be decided on the read
 * showing the first stop's echo, a no-op at rest, and confirmed at once, the move landing after
 * it; it is written, waits the move's guard in turn, and says that it did not hold.
 *
 * The move's request is held on the PLC's link (a stall, before processing) past the request
 * timeout, and let through within the guard, as the profile's contract allows, once the new
 * process has read the actuator with the stop taken. Ground truth: the simulator's command
 * log (what the controller took, in order) and the journal file.
 */

const real = mosquittoAvailable();
const ACTUATOR = 'mb-actuator';
/**
 * The move's guard covers the first life's wait (from the move's lost answer to the kill) and
 * the second's (from the take-up to the move let through); neither waits on it. The confirm
 * timeout and the time to live bound the take-ups' windows (at least the daemon's 15 s grace for
 * an unreachable PLC): the first stop's, in the third case, is waited out.
 */
const TIMING = { redispatchGuardMs: 10_000, confirmTimeoutMs: 10_000, defaultTtlMs: 15_000 };

/** Whether the journal shows the key settled: neither accepted nor dispatched. */
function settled(site: Site, key: string): boolean {
  const state = recordOf(site, key)?.state;
  return state !== undefined && state !== 'accepted' && state !== 'dispatched';
}

/**
 * Lets the move held on the link land (clears the stall) once the actuator has served two
 * reads from now. The daemon reads a busy device one request at a time, judging each
 * readback before the next: by the second it has judged the first, which showed the stop
 * taken and the move not — a stop that did not wait for the move's guard is confirmed on it.
 */
async function landTheMove(actuator: SimDevice): Promise<void> {
  const from = actuator.readLog.length;
  await until(
    () => (actuator.readLog.length >= from + 2 ? true : undefined),
    20_000,
    'two reads of the actuator',
    5,
  );
  actuator.clearFault('stall');
}

describe
  .runIf(real)
  .concurrent('a stop waiting out the guard of the write it preempted, then a restart', () => {
    for (const how of ['SIGKILL', 'SIGTERM'] as const) {
      it(`${how}: after the restart the stop still waits, and says it did not hold when the write lands`, async ({
        expect,
        onTestFinished,
      }) => {
        const site = await Site.start({
          gatewayId: `guard-${how.toLowerCase()}`,
          shutdownBoundMs: 0,
          timing: TIMING,
        });
        onTestFinished(async ({ task }) => {
          // The daemon's lines, when the test failed.
          if (task.result?.state === 'fail') {
            console.log(
              site.logs
                .filter((l) => !l.includes('"level":20'))
                .slice(-40)
                .join('\n'),
            );
          }
          await site.close();
        });
        const actuator = site.plant.device(ACTUATOR);
        await site.startDaemon();
        expect(actuator.snapshot().published).toMatchObject({ state: 'IDLE', position: 0 });
        // The move's write, the first on the actuator, is held on the link until released.
        actuator.setFault({ kind: 'stall', on: 'write', count: 1 });
        expect(
          (await site.postCommand('m', { device: ACTUATOR, action: 'move', position: 80 })).status,
        ).toBe(202);
        // The move's write has reached the PLC's front end, which holds it on the link.
        await until(
          () => (actuator.writers.length === 1 ? true : undefined),
          5_000,
          'the move on the link',
          5,
        );
        expect((await site.postCommand('s', { device: ACTUATOR, action: 'stop' })).status).toBe(
          202,
        );
        // The stop went out on the connection that replaced the move's and was taken first (a
        // no-op at rest); the move is still held. The stop waits out the move's guard.
        await until(
          () => (actuator.log.length === 1 ? true : undefined),
          5_000,
          'the stop taken',
          5,
        );
        expect(actuator.log[0]).toMatchObject({ outcome: 'noop', from: 'IDLE' });
        expect(recordOf(site, 's')?.state).toBe('dispatched');
        if (how === 'SIGKILL') await site.kill();
        else expect(await site.stop()).toBe(0);
        // Neither was settled by the life that ended: both are left to the next one.
        const m0 = recordOf(site, 'm')!;
        const s0 = recordOf(site, 's')!;
        expect([m0.state, s0.state]).toEqual(['dispatched', 'dispatched']);
        expect(actuator.log.length).toBe(1);
        await site.startDaemon();
        // The new process takes the stop up (its note in the journal) and reads the actuator:
        // the move lands after that.
        await until(
          () => {
            const record = recordOf(site, 's');
            if (record === undefined) return undefined;
            return settled(site, 's') || takeUpAt(site.history(record)) !== null ? true : undefined;
          },
          60_000,
          'the stop taken up',
          5,
        );
        await landTheMove(actuator);
        const [s, m] = [
          await settledRecord(site, 's', 90_000),
          await settledRecord(site, 'm', 90_000),
        ];
        // Ground truth: the controller took the stop, then the move, which it carried out.
        expect(actuator.log.map((e) => [e.seq, e.outcome, e.from, e.to])).toEqual([
          [s.seq, 'noop', 'IDLE', 'IDLE'],
          [m.seq, 'accepted', 'IDLE', 'MOVING'],
        ]);
        expect(actuator.snapshot().published).toMatchObject({ state: 'IDLE', position: 80 });
        // So the stop did not hold, and says so; the move took effect, after it.
        expect(s).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH', attempts: 1 });
        expect(s.detail).toMatch(/the stop did not hold, and it is not written again$/);
        expect(m).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 1 });
        // I1: each written once.
        expect(actuator.writesWithSeq(s.seq!)).toBe(1);
        expect(actuator.writesWithSeq(m.seq!)).toBe(1);
        expect(site.verify()).toEqual([]);
      }, 180_000);
    }

    it('a second stop pressed during the wait, then SIGKILL: it goes first after the restart, and says it did not hold when the write lands', async ({
      expect,
      onTestFinished,
    }) => {
      const site = await Site.start({
        gatewayId: 'guard-second',
        timing: TIMING,
      });
      onTestFinished(async ({ task }) => {
        if (task.result?.state === 'fail') console.log(site.logs.slice(-60).join('\n'));
        await site.close();
      });
      const actuator = site.plant.device(ACTUATOR);
      await site.startDaemon();
      actuator.setFault({ kind: 'stall', on: 'write', count: 1 });
      await site.postCommand('m', { device: ACTUATOR, action: 'move', position: 80 });
      await until(
        () => (actuator.writers.length === 1 ? true : undefined),
        5_000,
        'the move on the link',
        5,
      );
      await site.postCommand('s1', { device: ACTUATOR, action: 'stop' });
      await until(() => (actuator.log.length === 1 ? true : undefined), 5_000, 'the stop taken', 5);
      // Pressed again while the first waits out the move's guard: queued behind it.
      // It must still be within its deadline when the new process runs it: a restart took 3 to
      // 9 s under load.
      expect(
        (await site.postCommand('s2', { device: ACTUATOR, action: 'stop', ttlMs: 60_000 })).status,
      ).toBe(202);
      await site.kill();
      expect(
        site
          .records()
          .map((r) => [r.key, r.state])
          .sort(),
      ).toEqual([
        ['m', 'dispatched'],
        ['s1', 'dispatched'],
        ['s2', 'accepted'],
      ]);
      expect(actuator.log.length).toBe(1);
      await site.startDaemon();
      // The second stop, gone first, reaches the controller (or is settled without): the move
      // lands after the new process has read the actuator since.
      await until(
        () => (actuator.log.length === 2 || settled(site, 's2') ? true : undefined),
        60_000,
        'the second stop taken',
        5,
      );
      await landTheMove(actuator);
      const s2 = await settledRecord(site, 's2', 90_000);
      const [s1, m] = [
        await settledRecord(site, 's1', 90_000),
        await settledRecord(site, 'm', 90_000),
      ];
      // Ground truth: both stops reached the controller at rest, then the move, carried out.
      expect(actuator.log.map((e) => [e.seq, e.outcome, e.from, e.to])).toEqual([
        [s1.seq, 'noop', 'IDLE', 'IDLE'],
        [s2.seq, 'noop', 'IDLE', 'IDLE'],
        [m.seq, 'accepted', 'IDLE', 'MOVING'],
      ]);
      expect(actuator.snapshot().published).toMatchObject({ state: 'IDLE', position: 80 });
      // No stop is said to have held: the one the new process saw taken says it did not.
      expect(s2).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH', attempts: 1 });
      expect(s2.detail).toMatch(
        /then the write of m .*the stop did not hold, and it is not written again$/,
      );
      expect(s1.state).toBe('failed');
      expect(m).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 1 });
      for (const r of [s1, s2, m]) expect(actuator.writesWithSeq(r.seq!)).toBe(1);
      expect(site.verify()).toEqual([]);
    }, 240_000);
  });
