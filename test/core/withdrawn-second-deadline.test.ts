import { describe, it } from 'vitest';
import { sleepFor, type Clock } from '../../src/core/clock.js';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * SPEC §2, `rejected` means never written: a command whose first write was sent, lost and proven
 * not applied, whose second write was withdrawn unsent as the daemon stopped, goes round again
 * at the next start (execution.ts, takeUpUnsent); when its deadline passes while that round's
 * write waits in the driver's queue, it ends `failed` `DEVICE_UNREACHABLE`, nothing applied —
 * not `rejected` `STALE_COMMAND` (before the fix), as if no write of it had ever gone out. The
 * real pipeline, the real Modbus driver and a real journal file against sluice-sim: the first
 * write is lost by the simulator's own fault (the PLC resets the connection before taking it),
 * and the writes of v1 wait for the PLC's one connection behind the readbacks of v2's and a1's
 * commands, which the PLC answers late (and whose writes it holds, so that they keep reading).
 * One double: the gateway's wall clock, stepped forward past the command's deadline (as an NTP
 * step would) the moment the third write is handed to the driver. The command carries its
 * issuer's issuedAt, so the driver judges its deadline on the wall clock too. The simulator
 * cannot time the deadline to fall between the round's last freshness check and the moment the
 * driver would send the write; the step can. Ground truth: the simulator's write log and the
 * journal.
 */

const LATENCY_MS = 600;
const TTL_MS = 60_000;
/** The other devices, whose commands keep the PLC's connection busy. */
const SLOW: readonly (readonly [string, Record<string, unknown>])[] = [
  ['v2', { device: 'v2', action: 'open' }],
  ['a1', { device: 'a1', action: 'move', position: 100 }],
];

/** The system clock, with its wall time stepped by `offset` (the monotonic clock untouched). */
class SteppingClock implements Clock {
  offset = 0;
  now(): number {
    return Date.now() + this.offset;
  }
  elapsed(): number {
    return performance.now();
  }
  sleep(ms: number, signal?: AbortSignal): Promise<void> {
    return sleepFor(ms, signal);
  }
}

/**
 * The sequence numbers of the writes the pipeline hands to v1's driver, as it does; `onHanded`
 * runs as each is in the driver's queue (the driver looks at its deadline only when it would
 * send it, a microtask later at the soonest).
 */
function handedWrites(h: SimHarness, onHanded?: (seq: number) => void): number[] {
  const handed: number[] = [];
  const binding = h.drivers.bindings.find((b) => b.id === 'v1')!;
  const write = binding.driver.write.bind(binding.driver);
  binding.driver.write = (command, signal) => {
    const sent = write(command, signal);
    handed.push(command.seq);
    onHanded?.(command.seq);
    return sent;
  };
  return handed;
}

describe('a round after a write proven not applied and a second withdrawn at a stop of the daemon', () => {
  it('its deadline passes while the write waits in the driver: failed DEVICE_UNREACHABLE, not rejected; nothing reached the valve', async ({
    expect,
    onTestFinished,
  }) => {
    const clock = new SteppingClock();
    const h = await SimHarness.start({
      warm: true,
      clock,
      // The slow reads must not time out, and the guard must exceed the request timeout.
      requestTimeoutMs: 2_000,
      // The held commands keep reading (and the connection busy) for as long as the test runs.
      timing: { confirmTimeoutMs: 30_000, redispatchGuardMs: 2_500 },
    });
    onTestFinished(async () => {
      for (const device of h.plant.devices()) device.clearFaults();
      await h.close();
    });
    const v1 = h.device('v1');
    for (const [id, body] of SLOW) {
      const device = h.device(id);
      device.setFault({ kind: 'hold' });
      device.setFault({ kind: 'latency', ms: LATENCY_MS, on: 'read' });
      h.submit(`busy-${id}`, { ...body, ttlMs: TTL_MS });
      await h.until(() => device.counters.writesReceived > 0, 15_000, `the write of ${id}`);
    }
    // The first write is lost: the PLC resets the connection before taking it.
    v1.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
    // Every write of v1 from here on: o's first, and the second once the first is proven not
    // applied (counted from before the submit: the first may be handed to the driver any time
    // after its dispatch is journaled, once the barrier is through).
    const handed = handedWrites(h);
    const issuedAt = new Date(clock.now()).toISOString();
    h.submit('o', { device: 'v1', action: 'open', issuedAt, ttlMs: TTL_MS });
    await h.until(() => h.get('o')?.seq != null, 15_000, "o's dispatch");
    const seq = h.get('o')!.seq!;
    // Proven not applied, it is dispatched again; its second write waits behind a slow read.
    await h
      .until(
        () => (h.get('o')?.attempts ?? 0) >= 2 && handed.length >= 2,
        30_000,
        'the second write handed to the driver',
      )
      .catch((error: unknown) => {
        // What the command went through instead (a failure here is read from it).
        const o = h.get('o');
        throw new Error(
          `${String(error)}; o: ${o?.state} ${o?.code ?? ''} attempts ${o?.attempts}, writes handed ${JSON.stringify(handed)}; history: ${h.notes('o').join(' | ')}`,
        );
      });
    expect({ attempts: h.get('o')?.attempts, handed }, h.notes('o').join(' | ')).toEqual({
      attempts: 2,
      handed: [seq, seq],
    });
    expect(v1.writesWithSeq(seq)).toBe(0);
    // The daemon stops (no time for commands in flight): the driver withdraws the second write.
    await h.pipeline.stop(0);
    await h.drivers.close();
    h.journal.close();
    expect(v1.counters.writesReceived).toBe(0);

    // The next start goes round: a fresh read, a third dispatch, its write handed to the driver
    // behind the slow reads — and the gateway's clock steps past the deadline as it waits.
    await h.restart();
    const third = handedWrites(h, (handedSeq) => {
      if (handedSeq === seq) clock.offset = 2 * TTL_MS;
    });
    const r = await h.settled('o', 20_000);
    expect(third).toEqual([seq]);
    // Before the fix: rejected STALE_COMMAND "deadline … passed before the write could be sent".
    expect(r, r.detail ?? '').toMatchObject({
      state: 'failed',
      code: 'DEVICE_UNREACHABLE',
      attempts: 3,
      seq,
    });
    expect(r.detail).toMatch(
      new RegExp(
        `^the write never reached the controller: its first write \\(sequence number ${seq}\\) was sent and proven not applied, and its deadline ${new Date(r.deadline).toISOString().replace(/\./g, '\\.')} passed before the write could be sent again; nothing was applied \\(mb: write \\d+\\+3: not sent: its deadline passed \\d+ ms ago while it waited for the PLC; nothing was written\\)$`,
      ),
    );
    const history = h.notes('o');
    expect(history).toContainEqual(
      expect.stringMatching(
        new RegExp(
          `^dispatched: the write \\(sequence number ${seq}\\) was not sent: withdrawn as the daemon stopped`,
        ),
      ),
    );
    expect(history).toContainEqual(
      expect.stringMatching(
        /^dispatched: taken up: .*withdrawn before it was sent, after its first write was sent and proven not applied/,
      ),
    );
    // Ground truth: none of its three writes reached the valve, nor any other write.
    expect(v1.writesWithSeq(seq)).toBe(0);
    expect(v1.counters.writesReceived).toBe(0);
  }, 90_000);
});
