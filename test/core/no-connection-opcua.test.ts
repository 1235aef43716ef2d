import { afterEach, expect, it } from 'vitest';
import { SimHarness } from '../helpers/sim-harness.js';

/**
 * A write that finds no session with its OPC UA controller (the connection dropped just before
 * it: NotConnectedError, WriteNotSentError `no-connection`) never left the process: the command
 * waits for the connection and goes round again — a fresh read once the server answers, then
 * its write, its second dispatch — within its deadline, as over Modbus (write-not-sent.test.ts).
 * The real pipeline, SQLite journal and OPC UA driver against sluice-sim; ground truth: the
 * simulator's write log and the journal.
 */

let h: SimHarness | undefined;
afterEach(async () => {
  await h?.close();
  h = undefined;
});

it('OPC UA: a write that finds no session waits for the connection and is written once after it', async () => {
  h = await SimHarness.start({ opcua: true });
  const harness = h;
  const binding = harness.drivers.bindings.find((b) => b.id === 'u1')!;
  const plc = harness.plant.plc('ua');
  const write = binding.driver.write.bind(binding.driver);
  let powerUpAt: number | null = null;
  // The drop between the command's fresh read and its write: the simulator cannot time a
  // connection loss to that instant, so the test cuts the PLC's power as the pipeline hands the
  // first write to the driver, and hands it on once the driver has lost its session. The write
  // itself is the real driver's.
  binding.driver.write = async (command, signal) => {
    if (powerUpAt === null) {
      powerUpAt = plc.powerCycle({ offMs: 1_000 }).powerUpControllerTime;
      await harness.until(
        () => !binding.driver.health().connected,
        5_000,
        'the session with the PLC lost',
      );
    }
    return write(command, signal);
  };
  harness.submit('ua-blip', { device: 'u1', action: 'open', ttlMs: 30_000 });
  const r = await harness.settled('ua-blip', 30_000);
  const notes = harness.notes('ua-blip');
  // Before the fix: failed DEVICE_UNREACHABLE at once, "the write was never sent: no
  // connection to the controller".
  expect(r, notes.join('\n')).toMatchObject({ state: 'confirmed', attempts: 2 });
  const seq = r.seq!;
  expect(notes).toContainEqual(
    expect.stringMatching(
      new RegExp(
        `^dispatched: the write \\(sequence number ${seq}\\) was not sent: no connection to the controller \\(.*: write not sent: no session with the controller .*\\); the controller processed none of it, so the command waits for the connection and goes round again within its deadline: a fresh read decides, then the write$`,
      ),
    ),
  );
  expect(notes).toContainEqual(
    expect.stringMatching(
      /^dispatched: redispatch: the first write \(sequence number \d+\) found no connection to the controller and was not sent, so it was never applied; the controller answers again: decided again on a fresh read \(CLOSED\) and written now$/,
    ),
  );
  // Ground truth: one write of its number, taken after the PLC was back (controller time).
  const u1 = harness.device('u1');
  const writes = u1.writesOfSeq(seq);
  expect(writes).toHaveLength(1);
  expect(writes[0]!.receivedAt).toBeGreaterThanOrEqual(powerUpAt!);
  expect(u1.counters.writesReceived).toBe(1);
}, 60_000);

it('OPC UA: the command waiting for the session writes as it is back, not at its next read pause', async () => {
  // Read pauses far longer than the PLC's power cut: before the fix the command read again only
  // a pause (here 5 s) after its failed read, however soon the session was back.
  h = await SimHarness.start({
    opcua: true,
    timing: { pollIntervalMs: 5_000, confirmTimeoutMs: 15_000 },
  });
  const harness = h;
  const binding = harness.drivers.bindings.find((b) => b.id === 'u1')!;
  const plc = harness.plant.plc('ua');
  const write = binding.driver.write.bind(binding.driver);
  let epoch: number | null = null;
  // As above: the power cut as the first write is handed to the driver.
  binding.driver.write = async (command, signal) => {
    if (epoch === null) {
      plc.powerCycle({ offMs: 1_000 });
      await harness.until(
        () => !binding.driver.health().connected,
        5_000,
        'the session with the PLC lost',
      );
      epoch = binding.driver.health().connectionEpoch;
    }
    return write(command, signal);
  };
  // The moment the driver has its session again (its epoch moves on), on the gateway's clock.
  const back: { at: number | null } = { at: null };
  const watch = setInterval(() => {
    if (back.at === null && epoch !== null && binding.driver.health().connectionEpoch > epoch) {
      back.at = Date.now();
    }
  }, 5);
  try {
    harness.submit('ua-back', { device: 'u1', action: 'open', ttlMs: 30_000 });
    const r = await harness.settled('ua-back', 30_000);
    expect(r, harness.notes('ua-back').join('\n')).toMatchObject({
      state: 'confirmed',
      attempts: 2,
    });
    const dispatches = harness.journal
      .history({ scope: 'plant', key: 'ua-back' })
      .filter((e) => e.detail.startsWith('redispatch: '));
    expect(dispatches).toHaveLength(1);
    // From the session back to the command's second dispatch (a read, the skew's clock reads):
    // well below the pause the old reads made.
    expect(dispatches[0]!.at - back.at!).toBeLessThan(2_000);
    const writes = harness.device('u1').writesOfSeq(r.seq!);
    expect(writes).toHaveLength(1);
  } finally {
    clearInterval(watch);
  }
}, 60_000);
