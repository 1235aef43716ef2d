import { afterEach, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A command the controller took — a readback showed its echo — and then a power cycle of the
 * PLC during its travel: the echo register is volatile and comes back at its power-up value
 * (0), the drive stops where it was. On the real parts: the pipeline with the real Modbus
 * driver against sluice-sim, a real journal file; judged from the simulator's write log and
 * the journal.
 *
 * The command was taken: it is never proven unapplied, nor written again (I1), and what it
 * ends with says so. It used to say "the controller never echoed sequence number 1", and, on a
 * device whose echo was not the power-up one before, "(another command was taken)": an
 * operator was sent looking for a command that never was.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

it.each([
  { warm: false, before: 'the power-up echo' },
  { warm: true, before: 'an earlier command’s echo' },
])(
  'a move taken, then the PLC power cycled in its travel ($before before it): written once, and said to have been taken',
  async ({ warm }) => {
    h = await SimHarness.start({
      travelMs: 3_000,
      warm,
      timing: { confirmTimeoutMs: 2_500 },
    });
    const seen: number[] = [];
    const off = h.pipeline.onMirror((device, readback) => {
      if (device === 'a1' && readback.seq !== null) seen.push(readback.seq);
    });
    h.submit('move', { device: 'a1', action: 'move', position: 90, ttlMs: 10_000 });
    const a1 = h.device('a1');
    // The daemon has read the echo of the move: the controller took it, and the daemon knows.
    await h.until(
      () => {
        const move = h!.journal.get({ scope: 'plant', key: 'move' });
        return move?.seq != null && seen.includes(move.seq);
      },
      5_000,
      'a readback showing the move taken',
    );
    off();
    h.plant.plc('mb').powerCycle({ offMs: 300 });
    const move = await h.settled('move', 10_000);

    // Ground truth: one write, taken before the power went; the device stands short of 90 %.
    expect(a1.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[move.seq, 'accepted']]);
    expect(move.attempts).toBe(1);
    expect(move.state).toBe('failed');
    expect(move.code).toBe('READBACK_TIMEOUT');
    expect(move.detail).toContain(
      `the controller took sequence number ${move.seq} (a readback showed its echo) and no longer echoes it (it shows 0, its power-up value: it restarted since)`,
    );
    expect(move.detail).toContain('it is never written again');
    expect(move.detail).not.toMatch(/never echoed|another command was taken/);
    expect(h.journal.history(move).some((e) => e.detail.startsWith('redispatch:'))).toBe(false);
  },
);
