import { describe, it, type ExpectStatic } from 'vitest';
import type { CommandRecord } from '../../src/core/journal.js';
import { mosquittoAvailable } from '../helpers/mosquitto.js';
import { Site } from '../reliability/site.js';
import { recordOf, settledRecord, until } from '../reliability/support.js';

/**
 * A write withdrawn at a stop of the real sluiced, then its next start. The write of
 * mb-valve-1 waits for the PLC's one connection behind the readbacks of two other valves' commands,
 * which the PLC answers late (and whose commands it holds, so that they keep reading); sluiced
 * gets SIGTERM with no time for in-flight commands (--shutdown-bound 0), so the driver
 * withdraws the write unsent and the command's history says so. The valve has never taken a
 * command: after the restart it shows its power-up echo over a new connection, which no
 * readback can tell from a controller that restarted and lost the write. The journal's line
 * can: the command is one never written. Ground truth: the simulator's write log.
 */

const real = mosquittoAvailable();
const VALVE = 'mb-valve-1';
/** The PLC holds its answer to a read of these this long: its connection is always busy. */
const SLOW = ['mb-valve-2', 'mb-actuator'];
const LATENCY_MS = 1_000;

/**
 * A site of this test's own (plant, broker, journal and sluiced), so that the tests, which mostly
 * wait on the PLC's deliberate latencies and on sluiced's starts, can run at the same time.
 * Closed (sluiced killed) when the test has finished, passed or not.
 */
async function siteFor(context: {
  onTestFinished: (fn: () => Promise<void>) => void;
}): Promise<Site> {
  const site = await Site.start({
    gatewayId: 'withdrawn',
    shutdownBoundMs: 0,
    // The slow reads must not time out (the guard must exceed the request timeout).
    requestTimeoutMs: 2_000,
    // The held commands keep reading for the confirm timeout.
    timing: { redispatchGuardMs: 2_500, confirmTimeoutMs: 15_000 },
  });
  context.onTestFinished(async () => {
    console.log(
      site.logs
        .filter((l) => !l.includes('"level":20'))
        .slice(-60)
        .join('\n'),
    );
    for (const id of SLOW) site.plant.device(id).clearFaults();
    await site.close();
  });
  return site;
}

/**
 * Sends `open` to the valve while the PLC's connection is busy with slow reads, and stops
 * sluiced once the command is dispatched: its write is still queued then. Returns the
 * command as the stop left it.
 */
/** A command that moves the device from where it rests now (never a no-op). */
function toggle(site: Site, id: string): Record<string, unknown> {
  const { state, position } = site.plant.device(id).snapshot().published;
  if (id === 'mb-actuator')
    return { device: id, action: 'move', position: position > 50 ? 0 : 100 };
  return { device: id, action: state === 'OPEN' ? 'close' : 'open' };
}

async function withdrawnAtStop(
  site: Site,
  expect: ExpectStatic,
  key: string,
  ttlMs: number,
): Promise<CommandRecord> {
  const valve = site.plant.device(VALVE);
  const valveWrites = valve.counters.writesReceived;
  await site.startDaemon();
  // The other valves' commands are held by their controller (never taken), so their readbacks
  // go on, each answered late: the PLC's connection is busy with one at every moment.
  for (const id of SLOW) {
    const device = site.plant.device(id);
    device.setFault({ kind: 'hold' });
    device.setFault({ kind: 'latency', ms: LATENCY_MS, on: 'read' });
    const writes = device.counters.writesReceived;
    const held = await site.postCommand(`${key}-${id}`, { ...toggle(site, id), ttlMs });
    expect(held.status).toBe(202);
    await until(
      () => (device.counters.writesReceived > writes ? true : undefined),
      15_000,
      `the write of ${id}`,
      5,
    );
  }
  const answer = await site.postCommand(key, { ...toggle(site, VALVE), ttlMs });
  expect(answer.status).toBe(202);
  const dispatched = await until(
    () => {
      const r = recordOf(site, key);
      return r?.state === 'dispatched' ? r : undefined;
    },
    15_000,
    'the dispatch',
    5,
  );
  // Still queued behind a slow read when the stop comes.
  expect(valve.counters.writesReceived).toBe(valveWrites);
  expect(await site.stop()).toBe(0);
  for (const id of SLOW) site.plant.device(id).clearFaults();
  // Ground truth: the write never reached the PLC, and the journal says it was withdrawn.
  expect(valve.writesWithSeq(dispatched.seq!)).toBe(0);
  const left = recordOf(site, key)!;
  expect(left).toMatchObject({ state: 'dispatched', attempts: 1, seq: dispatched.seq });
  expect(site.history(left).at(-1)?.detail).toMatch(
    new RegExp(
      `^the write \\(sequence number ${dispatched.seq}\\) was not sent: withdrawn as the daemon stopped`,
    ),
  );
  return left;
}

describe.runIf(real).concurrent('a write withdrawn as sluiced stopped, after the restart', () => {
  it('is written once, as its second dispatch, and confirmed (the valve shows its power-up echo)', async ({
    expect,
    onTestFinished,
  }) => {
    const site = await siteFor({ onTestFinished });
    const valve = site.plant.device(VALVE);
    valve.resetCounters();
    const left = await withdrawnAtStop(site, expect, 'withdrawn-open', 60_000);
    expect(valve.snapshot().published.seqEcho).toBe(0);
    await site.startDaemon();
    // Well within the take-up window (15 s grace, or the time to the deadline): nothing waits
    // for a proof that no readback can give.
    const r = await settledRecord(site, 'withdrawn-open', 10_000);
    expect(r).toMatchObject({ state: 'confirmed', code: 'OK', attempts: 2, seq: left.seq });
    expect(r.observed?.state).toBe('OPEN');
    // I1: one write for the key, with its sequence number; nothing else reached the valve.
    expect(valve.writesWithSeq(left.seq!)).toBe(1);
    expect(valve.writeLog.map((w) => w.seq)).toEqual([left.seq]);
    const history = site.history(r).map((e) => e.detail);
    expect(history.some((d) => d.startsWith('taken up: its write (sequence number'))).toBe(true);
    expect(
      history.some((d) =>
        d.startsWith(
          `redispatch: the first write (sequence number ${left.seq}) was withdrawn before it was sent`,
        ),
      ),
    ).toBe(true);
    // The held commands of the other valves are settled by reading them (they took their
    // writes once released).
    await site.settled(20_000);
    expect(site.verify()).toEqual([]);
  }, 90_000);

  it('past its deadline at the restart: rejected STALE_COMMAND, never written', async ({
    expect,
    onTestFinished,
  }) => {
    const site = await siteFor({ onTestFinished });
    const valve = site.plant.device(VALVE);
    const writes = valve.counters.writesReceived;
    const left = await withdrawnAtStop(site, expect, 'withdrawn-stale', 5_000);
    await until(() => (Date.now() > left.deadline ? true : undefined), 10_000, 'the deadline', 5);
    await site.startDaemon();
    const r = await settledRecord(site, 'withdrawn-stale', 10_000);
    expect(r).toMatchObject({ state: 'rejected', code: 'STALE_COMMAND', seq: left.seq });
    expect(r.detail).toMatch(/nothing was written/);
    expect(valve.writesWithSeq(left.seq!)).toBe(0);
    expect(valve.counters.writesReceived).toBe(writes);
    await site.settled(20_000);
    expect(site.verify()).toEqual([]);
  }, 90_000);
});
