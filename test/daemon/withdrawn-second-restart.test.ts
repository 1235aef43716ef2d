import { describe, it } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { mosquittoAvailable } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';
import { recordOf, settledRecord, until } from '../reliability/support.js';

/**
 * A write sent once more after the command's first was lost and proven not applied, withdrawn
 * unsent as the real sluiced stops, then its next start. The first write of mb-valve-1 is lost
 * by the simulator's own fault (the PLC's connection reset before the write reaches it); a
 * readback past the guard proves it not applied, and the re-dispatch is journaled. That second
 * write then waits for the PLC's one connection behind the readbacks of two other valves'
 * commands, which the PLC answers late (and whose commands it holds, so that they keep reading),
 * and sluiced gets SIGTERM with no time for in-flight commands (--shutdown-bound 0): the driver
 * withdraws it unsent (WriteNotSentError 'withdrawn') and the history says so. The next start
 * goes by that history: the one write that may have left was proven not applied and the one
 * after it never left, so a write now is the second that may leave the gateway (I1) — it goes
 * round (a fresh read, the state-machine check, a durable re-dispatch, one write) as a write
 * refused for want of a connection does, where it ended failed "already dispatched twice".
 * Ground truth: the simulator's write log and the journal.
 */

const real = mosquittoAvailable();
const VALVE = 'mb-valve-1';
/** The PLC holds its answer to a read of these this long: its connection is always busy. */
const SLOW = ['mb-valve-2', 'mb-actuator'];
const LATENCY_MS = 1_000;

function toggle(site: Site, id: string): Record<string, unknown> {
  const { state, position } = site.plant.device(id).snapshot().published;
  if (id === 'mb-actuator')
    return { device: id, action: 'move', position: position > 50 ? 0 : 100 };
  return { device: id, action: state === 'OPEN' ? 'close' : 'open' };
}

describe.runIf(real)('a second write withdrawn as sluiced stopped, after the restart', () => {
  it('goes round: written once more, confirmed within its deadline, one write of its number at the valve', async ({
    expect,
    onTestFinished,
  }) => {
    const site = await Site.start({
      gatewayId: 'withdrawn-second',
      shutdownBoundMs: 0,
      // The slow reads must not time out (the guard must exceed the request timeout).
      requestTimeoutMs: 2_000,
      // The held commands keep reading for the confirm timeout.
      timing: { redispatchGuardMs: 2_500, confirmTimeoutMs: 15_000 },
    });
    onTestFinished(async () => {
      console.log(
        site.logs
          .filter((l) => !l.includes('"level":20'))
          .slice(-60)
          .join('\n'),
      );
      for (const id of [...SLOW, VALVE]) site.plant.device(id).clearFaults();
      await site.close();
    });
    const valve = site.plant.device(VALVE);
    await site.startDaemon();
    // The valve takes a command first: its echo is then no power-up value, which a readback
    // over the connection that replaces the lost one could not tell from a restart's.
    const warm = await site.postCommand('warm', { ...toggle(site, VALVE), ttlMs: 20_000 });
    expect(warm.status).toBe(202);
    const warmed = await settledRecord(site, 'warm', 15_000);
    expect(warmed).toMatchObject({ state: 'confirmed' });
    for (const id of SLOW) {
      const device = site.plant.device(id);
      device.setFault({ kind: 'hold' });
      device.setFault({ kind: 'latency', ms: LATENCY_MS, on: 'read' });
      const writes = device.counters.writesReceived;
      const held = await site.postCommand(`held-${id}`, { ...toggle(site, id), ttlMs: 60_000 });
      expect(held.status).toBe(202);
      await until(
        () => (device.counters.writesReceived > writes ? true : undefined),
        15_000,
        `the write of ${id}`,
        5,
      );
    }
    // The first write of the command is lost: the connection reset before it reaches the PLC.
    valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
    const command = toggle(site, VALVE);
    const answer = await site.postCommand('o', { ...command, ttlMs: 60_000 });
    expect(answer.status).toBe(202);
    // The re-dispatch after the proof is journaled (on disk before the write goes out); the
    // write waits behind a slow read when the stop comes.
    const proven = await until(
      () => {
        const r = recordOf(site, 'o');
        return r !== undefined && r.attempts === 2 ? r : undefined;
      },
      30_000,
      "o's re-dispatch after its first write was proven not applied",
      2,
    );
    expect(await site.stop()).toBe(0);
    for (const id of SLOW) site.plant.device(id).clearFaults();
    const seq = proven.seq!;
    // Ground truth: neither write reached the valve, and the journal says the second was
    // withdrawn unsent after the proof of the first.
    expect(valve.writesWithSeq(seq)).toBe(0);
    const left = recordOf(site, 'o')!;
    expect(left).toMatchObject({ state: 'dispatched', attempts: 2, seq });
    const before = site.history(left).map((e) => e.detail);
    expect(before).toContainEqual(
      expect.stringMatching(
        new RegExp(
          `^redispatch: sequence number ${seq} is not echoed .*: the first write was not applied$`,
        ),
      ),
    );
    expect(before.at(-1)).toMatch(
      new RegExp(
        `^the write \\(sequence number ${seq}\\) was not sent: withdrawn as the daemon stopped .*it goes round again unless a stop was accepted after the command`,
      ),
    );
    await site.startDaemon();
    const o: CommandRecord = await settledRecord(site, 'o', 20_000);
    // Before: failed DEVICE_UNREACHABLE "its write … was withdrawn before it was sent, and it
    // was already dispatched twice …, so it is not sent again", with most of its deadline left.
    expect(
      o,
      site
        .history(o)
        .map((e) => e.detail)
        .join('\n'),
    ).toMatchObject({
      state: 'confirmed',
      code: 'OK',
      attempts: 3,
      seq,
    });
    expect(o.settledAt!).toBeLessThan(o.deadline);
    const history = site.history(o).map((e) => e.detail);
    expect(history).toContainEqual(
      expect.stringMatching(
        /^taken up: .*withdrawn before it was sent, after .* proven not applied .*goes round again/,
      ),
    );
    expect(history).toContainEqual(
      expect.stringMatching(
        new RegExp(
          `^redispatch: the latest write \\(sequence number ${seq}\\) was withdrawn before it was sent`,
        ),
      ),
    );
    // The next life's write is counted as a re-dispatch of a write withdrawn unsent.
    const metrics = (await site.https('GET', '/metrics')).body.split('\n');
    const withdrawn = metrics.find(
      (l) =>
        l.startsWith('sluice_device_redispatches_total{') &&
        l.includes(`device="${VALVE}"`) &&
        l.includes('reason="withdrawn"'),
    );
    expect(withdrawn?.split(' ').at(-1)).toBe('1');
    // I1: one write of its number reached the valve, the next life's (after the warm-up's).
    expect(valve.writesWithSeq(seq)).toBe(1);
    expect(valve.writeLog.map((w) => w.seq)).toEqual([warmed.seq, seq]);
    expect(valve.snapshot().published.state).toBe(command.action === 'open' ? 'OPEN' : 'CLOSED');
    await site.settled(20_000);
    expect(site.verify()).toEqual([]);
  }, 120_000);
});
