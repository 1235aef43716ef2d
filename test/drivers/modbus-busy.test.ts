import { pino } from 'pino';
import { afterEach, describe, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A Modbus PLC that answers exception 0x06 (server device busy): it did not process the
 * request, and "the client should retransmit the message later when the server is free"
 * (Modbus Application Protocol v1.1b3 §7). On the real parts — the pipeline with the real
 * drivers against sluice-sim over real sockets, a real journal file — the write is sent again,
 * the same write, backing off, within the command's deadline; reads are read again. Ground
 * truth: the simulator's write log (writes applied) and its fault counts (requests refused).
 */

interface LogLine {
  readonly level: number;
  readonly msg: string;
  readonly key?: string;
  readonly device?: string;
  readonly seq?: number;
  readonly busy?: number;
}

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

async function start(
  options: { warm?: boolean } = {},
): Promise<{ harness: SimHarness; lines: LogLine[] }> {
  const lines: LogLine[] = [];
  const logger = pino(
    { level: 'info' },
    {
      write: (line: string) => {
        lines.push(JSON.parse(line) as LogLine);
      },
    },
  );
  h = await SimHarness.start({ logger, ...options });
  return { harness: h, lines };
}

/** The exception faults still active on the device (a `count` one is gone once used up). */
function busyLeft(harness: SimHarness, device: string): number | undefined {
  const fault = harness
    .device(device)
    .faults()
    .find((f) => f.kind === 'exception');
  return fault === undefined ? undefined : (fault.remaining ?? Infinity);
}

describe('a write answered 0x06 (server device busy)', () => {
  it('busy for two writes, then free: the same write is sent again and confirmed; one write applied', async () => {
    const { harness, lines } = await start();
    const valve = harness.device('v1');
    valve.setFault({ kind: 'exception', code: 6, on: 'write', count: 2 });
    harness.submit('busy-2', { device: 'v1', action: 'open' });
    const r = await harness.settled('busy-2');
    expect(r, harness.notes('busy-2').join('\n')).toMatchObject({
      state: 'confirmed',
      attempts: 1,
    });
    // Ground truth: both busy answers were used up by this device's writes, and exactly one
    // write reached the controller — this command's open, with its sequence number.
    expect(busyLeft(harness, 'v1')).toBeUndefined();
    expect(valve.writeLog).toHaveLength(1);
    expect(valve.writeLog[0]).toMatchObject({ seq: r.seq, outcome: 'accepted' });
    expect(valve.writesWithSeq(r.seq!)).toBe(1);
    // The journal says why the write went out three times, each time the same write.
    const busyNotes = harness
      .notes('busy-2')
      .filter((n) => n.includes('Modbus exception 0x06 (server device busy)'));
    expect(busyNotes).toHaveLength(2);
    for (const note of busyNotes) {
      expect(note).toMatch(
        new RegExp(
          `^dispatched: the controller answered busy to the write \\(sequence number ${r.seq}\\): .*: not processed; the same write is sent again in \\d+ ms$`,
        ),
      );
    }
    // Logged with the command's key and device.
    const logged = lines.filter((l) => l.msg === 'controller busy: the write is sent again');
    expect(logged).toHaveLength(2);
    expect(logged[0]).toMatchObject({ key: 'busy-2', device: 'v1', seq: r.seq, busy: 1 });
    expect(logged[1]).toMatchObject({ key: 'busy-2', device: 'v1', seq: r.seq, busy: 2 });
  });

  it('busy past the deadline: failed, the detail says busy, nothing applied', async () => {
    const { harness } = await start();
    const valve = harness.device('v1');
    valve.setFault({ kind: 'exception', code: 6, on: 'write', count: 100_000 });
    harness.submit('busy-ttl', { device: 'v1', action: 'open', ttlMs: 1_000 });
    const r = await harness.settled('busy-ttl');
    expect(r).toMatchObject({ state: 'failed', code: 'DEVICE_FAULT', faultCode: null });
    expect(r.detail).toMatch(
      /^the controller stayed busy: the write was sent \d+ times over \d+ ms and answered busy each time \(last: mb: write \d+\+3: Modbus exception 0x06 \(server device busy\)\), and its deadline \S+ passed( before it could be sent again)?; it was never processed, nothing was applied$/,
    );
    // Ground truth: several writes refused busy (backing off, not one per millisecond), none
    // applied.
    const refused = 100_000 - busyLeft(harness, 'v1')!;
    expect(refused).toBeGreaterThanOrEqual(3);
    expect(refused).toBeLessThanOrEqual(12);
    expect(r.detail).toContain(`sent ${refused} times`);
    expect(valve.writeLog).toHaveLength(0);
    valve.clearFaults();
  });

  it('a stop while the write waits to be sent again: superseded, never applied', async () => {
    const { harness } = await start();
    const valve = harness.device('v1');
    valve.setFault({ kind: 'exception', code: 6, on: 'write', count: 100_000 });
    harness.submit('busy-open', { device: 'v1', action: 'open' });
    // Refused busy at least once: the open waits to be sent again.
    await harness.until(() => (busyLeft(harness, 'v1') ?? 0) < 100_000, 5_000, 'a busy answer');
    harness.submit('busy-stop', { device: 'v1', action: 'stop' });
    const open = await harness.settled('busy-open');
    expect(open, harness.notes('busy-open').join('\n')).toMatchObject({
      state: 'rejected',
      code: 'SUPERSEDED',
    });
    expect(open.detail).toMatch(/^superseded by the stop busy-stop/);
    expect(open.detail).toContain('busy');
    // The valve rests CLOSED: the stop is a no-op, nothing is written.
    const stop = await harness.settled('busy-stop');
    expect(stop).toMatchObject({ state: 'confirmed' });
    valve.clearFaults();
    expect(valve.writeLog).toHaveLength(0);
  });
});

describe('the daemon stopped while a busy write waits to be sent again', () => {
  it('journals that the controller processed none of it, and the next life sends it once', async () => {
    const { harness } = await start();
    const valve = harness.device('v1');
    valve.setFault({ kind: 'exception', code: 6, on: 'write', count: 100_000 });
    harness.submit('busy-down', { device: 'v1', action: 'open', ttlMs: 60_000 });
    await harness.until(
      () => harness.notes('busy-down').some((n) => n.includes('answered busy')),
      5_000,
      'a busy answer journaled',
    );
    // The daemon stops (SIGTERM): the write waiting for its next attempt is withdrawn.
    await harness.pipeline.stop(0);
    await harness.drivers.close();
    const notes = harness.notes('busy-down');
    harness.journal.close();
    const unsent = notes.find((n) => n.includes('was not sent: withdrawn'));
    expect(unsent, notes.join('\n')).toBeDefined();
    // It was sent and answered busy: "nothing of it reached the controller" would be false.
    expect(unsent).toContain('answered busy');
    expect(unsent).toContain('the controller processed none of it');
    expect(unsent).not.toContain('reached the controller');
    expect(valve.writeLog).toHaveLength(0);
    // The next life takes it up as never processed and sends it: one write, confirmed.
    valve.clearFaults();
    await harness.restart();
    expect(await harness.settled('busy-down')).toMatchObject({ state: 'confirmed' });
    expect(valve.writeLog.filter((w) => w.outcome === 'accepted')).toHaveLength(1);
  });
});

describe('a read answered 0x06 (server device busy)', () => {
  it('busy readbacks after the write are read again: the command confirms, one write', async () => {
    const { harness } = await start();
    const valve = harness.device('v1');
    // The write's answer is held back after the controller took it; meanwhile the device turns
    // busy for the next three reads — the readbacks that follow the write.
    valve.setFault({ kind: 'latency', ms: 150, when: 'after', on: 'write' });
    harness.submit('busy-read', { device: 'v1', action: 'open' });
    await harness.until(() => valve.writeLog.length === 1, 5_000, 'the write taken');
    valve.clearFault('latency');
    valve.setFault({ kind: 'exception', code: 6, on: 'read', count: 3 });
    const r = await harness.settled('busy-read');
    expect(r, harness.notes('busy-read').join('\n')).toMatchObject({
      state: 'confirmed',
      attempts: 1,
    });
    expect(busyLeft(harness, 'v1')).toBeUndefined();
    expect(valve.writesWithSeq(r.seq!)).toBe(1);
    expect(valve.writeLog).toHaveLength(1);
  });
});

describe('a write answered 0x05 (acknowledge)', () => {
  it('taken, processed later than the redispatch guard: confirmed by readback, never sent again', async () => {
    // 0x05: "the server has accepted the request and is processing it, but a long duration of
    // time will be required to do so" (Modbus Application Protocol v1.1b3 §7). The simulator's
    // held handshake is that PLC: it keeps the write and takes it when the hold ends, once a
    // readback has been answered 1.2 s (three times the redispatch guard) after the write
    // arrived; the write is answered 0x05 once received. Warm: the valve's echo is not its
    // power-up one, so a readback could prove a write not applied. The hold ends on that
    // readback, not a fixed time (1.2 s) after it was set, which a loaded machine could spend
    // before the write arrived: the write taken within the guard, nothing proven.
    const { harness } = await start({ warm: true });
    const valve = harness.device('v1');
    valve.setFault({ kind: 'hold' });
    valve.setFault({ kind: 'exception', code: 5, on: 'write', when: 'after', count: 1 });
    harness.submit('ack-05', { device: 'v1', action: 'open' });
    await harness.until(() => valve.writeLog.length === 1, 5_000, 'the write at the controller');
    const arrived = valve.writeLog[0]!.receivedAt;
    await harness.until(
      () => (valve.readLog.at(-1) ?? 0) >= arrived + 1_200,
      5_000,
      'a readback 1.2 s after the write arrived',
    );
    valve.clearFault('hold');
    const r = await harness.settled('ack-05');
    expect(r, harness.notes('ack-05').join('\n')).toMatchObject({
      state: 'confirmed',
      attempts: 1,
    });
    // Ground truth: one write of this command reached the controller.
    expect(valve.writesWithSeq(r.seq!)).toBe(1);
    expect(valve.writeLog).toHaveLength(1);
  });
});
