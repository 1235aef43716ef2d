import { describe, expect, it } from 'vitest';
import type { SimHarness } from '../helpers/sim-harness.js';
import { killedLives } from '../helpers/killed-life.js';

/**
 * A valve whose last command ended in an earlier life of the daemon with its write's fate open
 * at the end of its readback window (DEVICE_UNREACHABLE, no readback within the confirm
 * timeout), the daemon then stopped and started again. On the real parts: the pipeline with the
 * real Modbus driver against sluice-sim, a real journal file; judged from the simulator's write
 * log.
 *
 * The first command after the restart waits for that write while it may still be taken
 * (previous-write.ts, earlierLastWrite). Its command read for the confirm timeout after it
 * before it ended, on the monotonic clock of the life that sent it (its detail says how long):
 * had the controller acknowledged it, that bound was over then. Only a write whose answer was
 * lost can still land: the request timeout and guard from the restart (250 + 400 ms with the
 * harness's timings). 2687723 had it wait the confirm timeout (2 s) from the restart as well,
 * at every restart, however long before the command had ended.
 */

const lives = killedLives();
let h: SimHarness;

describe("a restart after a command ended at its readback window's end", () => {
  it("waits the lost answer's bound, not the confirm timeout, before the next write", async () => {
    // The harness's timings: request timeout 250 ms, guard 400 ms, confirm timeout 2 s.
    h = await lives.start({ warm: true, travelMs: 100 });
    const v1 = h.device('v1');
    // The PLC resets the connection before a write from the start (set once dispatched, the
    // write could leave first on a loaded machine: seen in CI), then before every request: the
    // write and every readback lost.
    v1.setFault({ kind: 'reset', when: 'before', on: 'write' });
    h.submit('first', { device: 'v1', action: 'open', ttlMs: 30_000 });
    await h.until(() => h.get('first')?.state === 'dispatched', 5_000, 'the open dispatched');
    v1.setFault({ kind: 'reset', when: 'before', on: 'both' });
    const first = await h.settled('first', 15_000);
    expect(first).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', observed: null });
    expect(first.detail).toMatch(/^no readback after the write within 2000 ms/);
    await lives.kill(h);
    v1.clearFault('reset');
    expect(v1.writeLog).toEqual([]);
    await h.restart();
    const started = Date.now();
    h.submit('second', { device: 'v1', action: 'open', ttlMs: 30_000 });
    const second = await h.settled('second', 15_000);
    expect(second).toMatchObject({ state: 'confirmed', attempts: 1 });
    // Ground truth: the valve's one write, the second open's, well before the confirm timeout
    // from the restart (the earlier life's write waited out by the request timeout and guard).
    expect(v1.writeLog.map((w) => w.seq)).toEqual([second.seq]);
    const writtenAfter = v1.writeLog[0]!.receivedAt - started;
    expect(writtenAfter).toBeGreaterThanOrEqual(400);
    expect(writtenAfter).toBeLessThan(1_400);
  });
});
