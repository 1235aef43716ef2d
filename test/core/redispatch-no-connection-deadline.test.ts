import { describe, it, type TestContext } from 'vitest';
import { sleepFor, type Clock } from '../../src/core/clock.js';
import { linkedHarness } from '../helpers/linked-harness.js';
import type { SimHarness } from '../helpers/sim-harness.js';
import type { TcpLink } from '../helpers/tcp-link.js';

/**
 * A command whose first write was sent, lost and proven not applied, and whose write sent once
 * more found no connection to the controller, goes round again within its deadline
 * (execution.ts, goRoundAgain). When its deadline passes in such a round — before the round's
 * fresh read (write-gates.ts, rejectIfStale) or while the round's write waits in the driver
 * (confirmation.ts) — it ends `failed` `DEVICE_UNREACHABLE`, nothing applied, and its detail
 * names the write that was sent and proven not applied, as every other end of a round after such
 * a write does ("its first write (sequence number N) was sent and proven not applied"); before,
 * these two said only that the write found no connection, as for a command none of whose writes
 * was ever sent. The real pipeline, SQLite journal and Modbus driver against sluice-sim, reached
 * through a TCP link: the first write is lost by the simulator's own fault (the PLC resets the
 * connection before taking it); the link is refused as the second is handed to the driver (the
 * simulator cannot time a link drop to that instant; the refusal is the real driver's, finding
 * no connection). One double: the gateway's wall clock, stepped forward past the command's
 * deadline (as an NTP step would) at the moment the deadline is to pass; the command carries
 * its issuer's issuedAt, so the pipeline and the driver judge its deadline on the wall clock.
 * The simulator cannot time a deadline to fall between two steps of the daemon; the step can.
 * Ground truth: the simulator's write log, and the journal.
 */

const TTL_MS = 60_000;

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

interface Site {
  readonly h: SimHarness;
  readonly link: TcpLink;
  readonly clock: SteppingClock;
  /** How many writes of the open were handed to the driver. */
  handed(): number;
}

/**
 * v1's writes of the open: the first lost, the second refused unsent (no connection), and
 * `afterRefused` called once the driver has refused it; `third`, when given, called as the
 * third is handed to the driver, before the driver has it.
 */
async function site(
  onTestFinished: TestContext['onTestFinished'],
  afterRefused: (s: Site) => void,
  third?: (s: Site) => void,
): Promise<Site> {
  const clock = new SteppingClock();
  const { h, link, ...linked } = await linkedHarness(onTestFinished, { clock });
  const valve = h.device('v1');
  let handed = 0;
  const s: Site = { h, link, clock, handed: () => handed };
  linked.interceptWrites(async (command, signal, write) => {
    if (command.action !== 'open') return write(command, signal);
    handed++;
    if (handed === 1) {
      valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
      return write(command, signal);
    }
    if (handed === 2) {
      await linked.refuseLink();
      try {
        await write(command, signal);
      } finally {
        afterRefused(s);
      }
      return;
    }
    if (handed === 3) third?.(s);
    return write(command, signal);
  });
  return s;
}

function submitOpen(s: Site): void {
  const issuedAt = new Date(s.clock.now()).toISOString();
  s.h.submit('o', { device: 'v1', action: 'open', issuedAt, ttlMs: TTL_MS });
}

const iso = (ms: number): string => new Date(ms).toISOString().replace(/\./g, '\\.');

describe('a round after a write proven not applied and one that found no connection', () => {
  it('its deadline passes before the round reads: failed DEVICE_UNREACHABLE naming the proven write; nothing reached the valve', async ({
    expect,
    onTestFinished,
  }) => {
    const s = await site(onTestFinished, ({ clock }) => {
      // The second write refused unsent: the deadline passes before the round goes on.
      clock.offset = 2 * TTL_MS;
    });
    const { h } = s;
    const valve = h.device('v1');
    submitOpen(s);
    const o = await h.settled('o', 30_000);
    const notes = h.notes('o');
    expect(o, notes.join('\n')).toMatchObject({
      state: 'failed',
      code: 'DEVICE_UNREACHABLE',
      attempts: 2,
    });
    const seq = o.seq!;
    expect(notes).toContainEqual(
      expect.stringMatching(/^dispatched: redispatch: .*: the first write was not applied$/),
    );
    // Before: "the write never reached the controller: its write (sequence number N) found no
    // connection to the controller, and its deadline … passed … ms ago while the command went
    // round again; nothing was applied", as if no write of it had been sent.
    expect(o.detail).toMatch(
      new RegExp(
        `^the write never reached the controller: its first write \\(sequence number ${seq}\\) was sent and proven not applied, its latest write found no connection to the controller, and its deadline ${iso(o.deadline)} passed \\d+ ms ago while the command went round again; nothing was applied$`,
      ),
    );
    expect(notes.at(-1)).toBe(`failed: DEVICE_UNREACHABLE: ${o.detail}`);
    // Ground truth: the first write never reached the PLC (reset before it), the second never
    // left the gateway, and no third was handed to the driver.
    expect(s.handed()).toBe(2);
    expect(valve.writesWithSeq(seq)).toBe(0);
    expect(valve.writeLog).toHaveLength(0);
  }, 60_000);

  it('its deadline passes while the round’s write waits in the driver: failed DEVICE_UNREACHABLE naming the proven write; nothing reached the valve', async ({
    expect,
    onTestFinished,
  }) => {
    const s = await site(
      onTestFinished,
      ({ link }) => {
        // The link comes back a moment after the refusal: the round reads, and writes.
        setTimeout(() => {
          void link.accept();
        }, 300);
      },
      ({ clock }) => {
        // The round's write handed to the driver: the deadline passes before it is sent.
        clock.offset = 2 * TTL_MS;
      },
    );
    const { h } = s;
    const valve = h.device('v1');
    submitOpen(s);
    const o = await h.settled('o', 30_000);
    const notes = h.notes('o');
    expect(o, notes.join('\n')).toMatchObject({
      state: 'failed',
      code: 'DEVICE_UNREACHABLE',
      attempts: 3,
    });
    const seq = o.seq!;
    expect(notes).toContainEqual(
      expect.stringMatching(
        /^dispatched: redispatch: the latest write \(sequence number \d+\) found no connection to the controller and was not sent/,
      ),
    );
    // Before: "the write never reached the controller: it found no connection and went round
    // again, and its deadline … passed before its write could be sent again; …".
    expect(o.detail).toMatch(
      new RegExp(
        `^the write never reached the controller: its first write \\(sequence number ${seq}\\) was sent and proven not applied, a write of it since found no connection and went round again, and its deadline ${iso(o.deadline)} passed before the write could be sent again; nothing was applied \\(mb: write \\d+\\+3: not sent: its deadline passed \\d+ ms ago while it waited for the PLC; nothing was written\\)$`,
      ),
    );
    expect(notes.at(-1)).toBe(`failed: DEVICE_UNREACHABLE: ${o.detail}`);
    // Ground truth: none of its three writes reached the valve, nor any other write.
    expect(s.handed()).toBe(3);
    expect(valve.writesWithSeq(seq)).toBe(0);
    expect(valve.writeLog).toHaveLength(0);
  }, 60_000);
});
