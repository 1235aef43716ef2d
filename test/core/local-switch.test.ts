import { afterEach, describe, expect, it } from 'vitest';
import { SIM_TIMING, SimHarness } from '../helpers/sim-harness.js';

/**
 * The valve is switched to LOCAL at the panel after the command's fresh read (which showed
 * REMOTE, so the command was written) and before the controller's scan takes the write: the
 * controller ignores it. On the real parts — the pipeline with the real Modbus driver against
 * sluice-sim, a real journal. Ground truth: the simulator's write log and the journal.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

/**
 * Opens `device` with the controller's handshake held, so that the write reaches it and waits
 * for a scan; the switch goes to LOCAL (read at the next scan), then the handshake is released:
 * the scan takes the write in LOCAL.
 */
async function intoLocal(
  harness: SimHarness,
  device: string,
  key: string,
  action = 'open',
): Promise<void> {
  const valve = harness.device(device);
  valve.setFault({ kind: 'hold' });
  harness.submit(key, { device, action });
  await harness.until(() => valve.writeLog.length === 1, 5_000, 'the write reaching the PLC');
  valve.setLocal(true);
  await harness.until(() => valve.snapshot().published.state === 'LOCAL', 5_000, 'LOCAL shown');
  valve.clearFault('hold');
}

/** Back to REMOTE, as the operator hands the valve back; resolves once the PLC shows it. */
async function backToRemote(harness: SimHarness, device: string, rests = 'CLOSED'): Promise<void> {
  const valve = harness.device(device);
  valve.setLocal(false);
  await harness.until(() => valve.snapshot().published.state === rests, 5_000, 'REMOTE shown');
}

describe('a switch to LOCAL between the read and the scan that takes the write', () => {
  it('echoing controller: failed READBACK_MISMATCH at once, saying it did not act on it; never written again', async () => {
    h = await SimHarness.start();
    const valve = h.device('v1');
    await intoLocal(h, 'v1', 'k');
    const r = await h.settled('k');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH', attempts: 1 });
    expect(r.observed).toMatchObject({ state: 'LOCAL', seq: r.seq });
    expect(r.detail).toBe(
      `the valve was switched to LOCAL before the controller took the command: it echoes sequence number ${r.seq} and shows LOCAL where it stood before the write; it did not act on it, and it is not written again`,
    );
    // Ended on the readback that showed it, not after the mismatch grace nor the confirm timeout.
    expect(r.settledAt! - r.dispatchedAt!).toBeLessThan(SIM_TIMING.confirmTimeoutMs);
    await backToRemote(h, 'v1');
    // Ground truth: one write, taken in LOCAL and ignored; the valve stays closed.
    expect(valve.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[r.seq, 'ignored-local']]);
    expect(valve.snapshot().state).toBe('CLOSED');
    // Journaled as dispatched once, never re-dispatched (the history may also say LOCAL was seen
    // before the scan took the write).
    expect(h.notes('k').some((n) => n.includes('redispatch'))).toBe(false);
  });

  it('non-echoing controller: failed READBACK_MISMATCH, saying whether it acted cannot be told', async () => {
    h = await SimHarness.start({ field: true });
    const valve = h.device('lsv');
    await intoLocal(h, 'lsv', 'k');
    const r = await h.settled('k');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH', attempts: 1 });
    expect(r.observed?.state).toBe('LOCAL');
    expect(r.detail).toBe(
      `the valve was switched to LOCAL after the command's read and still shows LOCAL ${SIM_TIMING.mismatchGraceMs} ms after the open was written; this controller echoes no sequence numbers, so whether it took the command before the switch and acted on it cannot be told; it is not written again`,
    );
    expect(r.settledAt! - r.dispatchedAt!).toBeLessThan(SIM_TIMING.confirmTimeoutMs);
    await backToRemote(h, 'lsv');
    expect(valve.writeLog.map((w) => [w.code, w.outcome])).toEqual([[1, 'ignored-local']]);
    expect(valve.snapshot().state).toBe('CLOSED');
  });

  it('a write lost on its way is not sent again once the valve was seen in LOCAL, even back in REMOTE', async () => {
    // A device that has taken commands before: its echo is not the power-up 0, so a lost write
    // can be proven not applied (as in safety.test.ts, where it is then sent once more).
    h = await SimHarness.start({ travelMs: 100, warm: true });
    const valve = h.device('v1');
    valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
    let sawLocal!: () => void;
    const seen = new Promise<void>((resolve) => (sawLocal = resolve));
    h.pipeline.onMirror((device, readback) => {
      if (device === 'v1' && readback.state === 'LOCAL') sawLocal();
    });
    h.submit('k', { device: 'v1', action: 'open' });
    await h.until(() => h!.get('k')?.state === 'dispatched', 5_000, 'dispatched');
    valve.setLocal(true);
    await seen;
    await backToRemote(h, 'v1');
    const r = await h.settled('k');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 1 });
    expect(r.detail).toMatch(
      /^the write never reached the controller: sequence number \d+ is not echoed .*; the valve was switched to LOCAL after the command's read, so it is not sent again; nothing was applied$/,
    );
    // Ground truth: nothing reached the controller, and the valve stayed where the operator left it.
    expect(valve.writeLog).toEqual([]);
    expect(valve.snapshot().state).toBe('CLOSED');
    expect(h.notes('k').some((n) => n.includes('redispatch'))).toBe(false);
  });

  it('a 0x88 latch left by another master’s refused command is not read as this command’s refusal', async () => {
    h = await SimHarness.start({ travelMs: 300 });
    const valve = h.device('v1');
    // Another master opens the valve and, while it travels, sends a close: refused, 0x88 latched.
    valve.receiveWrite({ code: 1, setpoint: 0, seq: 60_001 });
    await h.until(() => valve.snapshot().published.state === 'OPENING', 5_000, 'OPENING');
    valve.receiveWrite({ code: 2, setpoint: 0, seq: 60_002 });
    await h.until(() => valve.snapshot().published.state === 'OPEN', 5_000, 'OPEN');
    expect(valve.snapshot().published.faultCode).toBe(0x88);
    valve.resetCounters();
    // The close is legal from OPEN and written; the scan takes it in LOCAL, which keeps the latch.
    await intoLocal(h, 'v1', 'k', 'close');
    const r = await h.settled('k');
    expect(r).toMatchObject({ state: 'failed', code: 'READBACK_MISMATCH', faultCode: null });
    expect(r.observed).toMatchObject({ state: 'LOCAL', seq: r.seq, faultCode: '0x88' });
    expect(r.detail).toMatch(
      /^the valve was switched to LOCAL before the controller took the command/,
    );
    await backToRemote(h, 'v1', 'OPEN');
    expect(valve.writeLog.map((w) => [w.seq, w.outcome])).toEqual([[r.seq, 'ignored-local']]);
  });

  it('after a restart, a LOCAL seen in the life before still forbids the second write', async () => {
    h = await SimHarness.start({ travelMs: 100, warm: true });
    const valve = h.device('v1');
    valve.setFault({ kind: 'reset', when: 'before', on: 'write', count: 1 });
    h.submit('k', { device: 'v1', action: 'open' });
    await h.until(() => h!.get('k')?.state === 'dispatched', 5_000, 'dispatched');
    valve.setLocal(true);
    const seq = h.get('k')!.seq!;
    const line = `the valve shows LOCAL after the write (sequence number ${seq}): it was switched after the command's read, so the command is not written again`;
    await h.until(() => h!.notes('k').includes(`dispatched: ${line}`), 5_000, 'LOCAL journaled');
    // The line on disk before the crash (it loses the open batch): the next life goes by it.
    await h.journal.durable();
    await h.crash();
    await backToRemote(h, 'v1');
    await h.restart();
    // The premise: the next life found the LOCAL line (it sees REMOTE, and writes none itself).
    expect(h.notes('k')).toContain(`dispatched: ${line}`);
    const r = await h.settled('k');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_UNREACHABLE', attempts: 1 });
    expect(r.detail).toMatch(
      /the valve was switched to LOCAL after the command's read, so it is not sent again; nothing was applied$/,
    );
    expect(valve.writeLog).toEqual([]);
    expect(valve.snapshot().state).toBe('CLOSED');
  });
});
